"""DataLoaders, one set per operation, so that a list of N items costs O(1) statements."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from strawberry.dataloader import DataLoader

from kindrobots.context import RequestContext, Services
from kindrobots.db.models import Organization, User

M = TypeVar("M", User, Organization)


def _by_id(services: Services, model: type[M]) -> DataLoader[uuid.UUID, M | None]:
    async def load(ids: Sequence[uuid.UUID]) -> list[M | None]:
        async with services.read() as session:
            rows = (await session.scalars(select(model).where(model.id.in_(ids)))).all()
        found: dict[Any, M] = {row.id: row for row in rows}
        return [found.get(key) for key in ids]

    return DataLoader(load_fn=load)


@dataclass
class Loaders:
    user: DataLoader[uuid.UUID, User | None]
    organization: DataLoader[uuid.UUID, Organization | None]


def loaders(ctx: RequestContext) -> Loaders:
    cached = ctx.loader_cache.get("loaders")
    if cached is None:
        cached = Loaders(
            user=_by_id(ctx.services, User),
            organization=_by_id(ctx.services, Organization),
        )
        ctx.loader_cache["loaders"] = cached
    assert isinstance(cached, Loaders)
    return cached
