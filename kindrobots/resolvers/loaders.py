"""DataLoaders, one set per operation, so that a list of N items costs O(1) statements."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import and_, select
from strawberry.dataloader import DataLoader

from kindrobots.context import RequestContext, Services
from kindrobots.db.models import (
    Agent,
    AgentManifest,
    LlmCredential,
    Manifest,
    ManifestVersion,
    Organization,
    User,
)

M = TypeVar("M", User, Organization, Agent, LlmCredential)


def _by_id(services: Services, model: type[M]) -> DataLoader[uuid.UUID, M | None]:
    async def load(ids: Sequence[uuid.UUID]) -> list[M | None]:
        async with services.read() as session:
            rows = (await session.scalars(select(model).where(model.id.in_(ids)))).all()
        found: dict[Any, M] = {row.id: row for row in rows}
        return [found.get(key) for key in ids]

    return DataLoader(load_fn=load)


def _manifests_of_agents(services: Services) -> DataLoader[uuid.UUID, list[Manifest]]:
    async def load(agent_ids: Sequence[uuid.UUID]) -> list[list[Manifest]]:
        async with services.read() as session:
            rows = (
                await session.execute(
                    select(AgentManifest.agent_id, Manifest)
                    .join(Manifest, Manifest.id == AgentManifest.manifest_id)
                    .where(AgentManifest.agent_id.in_(agent_ids))
                    .order_by(AgentManifest.agent_id, AgentManifest.position)
                )
            ).all()
        grouped: dict[uuid.UUID, list[Manifest]] = defaultdict(list)
        for agent_id, manifest in rows:
            grouped[agent_id].append(manifest)
        return [grouped[agent_id] for agent_id in agent_ids]

    return DataLoader(load_fn=load)


def _latest_versions(services: Services) -> DataLoader[uuid.UUID, ManifestVersion | None]:
    async def load(manifest_ids: Sequence[uuid.UUID]) -> list[ManifestVersion | None]:
        async with services.read() as session:
            rows = (
                await session.scalars(
                    select(ManifestVersion)
                    .join(
                        Manifest,
                        and_(
                            Manifest.id == ManifestVersion.manifest_id,
                            Manifest.version == ManifestVersion.version,
                        ),
                    )
                    .where(Manifest.id.in_(manifest_ids))
                )
            ).all()
        found = {row.manifest_id: row for row in rows}
        return [found.get(key) for key in manifest_ids]

    return DataLoader(load_fn=load)


@dataclass
class Loaders:
    user: DataLoader[uuid.UUID, User | None]
    organization: DataLoader[uuid.UUID, Organization | None]
    agent: DataLoader[uuid.UUID, Agent | None]
    credential: DataLoader[uuid.UUID, LlmCredential | None]
    agent_manifests: DataLoader[uuid.UUID, list[Manifest]]
    latest_version: DataLoader[uuid.UUID, ManifestVersion | None]


def loaders(ctx: RequestContext) -> Loaders:
    cached = ctx.loader_cache.get("loaders")
    if cached is None:
        services = ctx.services
        cached = Loaders(
            user=_by_id(services, User),
            organization=_by_id(services, Organization),
            agent=_by_id(services, Agent),
            credential=_by_id(services, LlmCredential),
            agent_manifests=_manifests_of_agents(services),
            latest_version=_latest_versions(services),
        )
        ctx.loader_cache["loaders"] = cached
    assert isinstance(cached, Loaders)
    return cached
