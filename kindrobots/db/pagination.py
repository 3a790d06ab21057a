"""Keyset pagination over ``(created_at, id)``: cursors stay valid while rows are added."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from kindrobots.errors import BadUserInput

T = TypeVar("T")
MAX_PAGE = 100
MAX_CURSOR_CHARS = 512


@dataclass
class Page(Generic[T]):
    rows: Sequence[T]
    cursors: list[str]
    has_next_page: bool
    has_previous_page: bool


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    # A cursor this server made is ~80 characters; anything far longer is not one (and
    # `[[[[…` would otherwise nest past the interpreter's recursion limit in json.loads).
    if len(cursor) > MAX_CURSOR_CHARS:
        raise BadUserInput("after", "The cursor is not valid.")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        at = datetime.fromisoformat(created_at)
        if at.tzinfo is None or not isinstance(row_id, str):
            raise ValueError("not a cursor this server made")
        return at, uuid.UUID(row_id)
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise BadUserInput("after", "The cursor is not valid.") from None


def check_first(first: int) -> int:
    if not 0 <= first <= MAX_PAGE:
        raise BadUserInput("first", f"first must be between 0 and {MAX_PAGE}.")
    return first


def first_page(rows: Sequence[Any], first: int) -> Page[Any]:
    """The first page from up to ``first + 1`` rows already in order (batched loads)."""
    shown = list(rows[:first])
    return Page(
        rows=shown,
        cursors=[encode_cursor(row.created_at, row.id) for row in shown],
        has_next_page=len(rows) > first,
        has_previous_page=False,
    )


async def paginate(
    session: AsyncSession,
    statement: Select[Any],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    first: int,
    after: str | None,
) -> Page[Any]:
    """Run ``statement`` (one entity selected) one page at a time, oldest first."""
    check_first(first)
    if after:
        at, key = decode_cursor(after)
        statement = statement.where(or_(created_at > at, and_(created_at == at, row_id > key)))
    statement = statement.order_by(created_at, row_id).limit(first + 1)
    rows = list((await session.scalars(statement)).all())
    has_next = len(rows) > first
    rows = rows[:first]
    return Page(
        rows=rows,
        cursors=[encode_cursor(getattr(r, created_at.key), getattr(r, row_id.key)) for r in rows],
        has_next_page=has_next,
        has_previous_page=after is not None,
    )
