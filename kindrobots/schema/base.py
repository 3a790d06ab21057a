"""Shared schema pieces: the Info type with its grant, Node, Relay connections."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

import strawberry
from strawberry.types.unset import UnsetType

from kindrobots.context import RequestContext
from kindrobots.db.pagination import Page
from kindrobots.schema.grants import Grant

T = TypeVar("T")


@dataclasses.dataclass
class Info(strawberry.Info[RequestContext, None]):
    """Strawberry's Info plus what the field's permission established (``grant``).

    Strawberry passes one Info object through a field's extensions to its resolver, so
    the permission resolves the caller, organization and role once and the resolver
    reads them here instead of checking again.
    """

    grant: Grant | None = None

    def now(self) -> datetime:
        return self.context.now()


@strawberry.interface
class Node:
    """An object with a global, opaque ID that ``node(id)`` can fetch again."""

    id: strawberry.ID


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo


def to_connection(page: Page[Any], convert: Callable[[Any], T]) -> Connection[T]:
    edges = [
        Edge(cursor=c, node=convert(row)) for row, c in zip(page.rows, page.cursors, strict=True)
    ]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_next_page,
            has_previous_page=page.has_previous_page,
            start_cursor=page.cursors[0] if page.cursors else None,
            end_cursor=page.cursors[-1] if page.cursors else None,
        ),
    )


def given(value: T | UnsetType | None) -> T | None:
    """An update field that cannot be cleared: omitted and ``null`` both leave it
    unchanged (``None`` here)."""
    return None if isinstance(value, UnsetType) else value


def is_cleared(value: object) -> bool:
    """Whether a clearable update field was given as ``null`` (omitted is UNSET)."""
    return value is None
