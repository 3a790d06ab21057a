"""DataLoaders, one set per operation, so that a list of N items costs O(1) statements;
and the batched reads a list resolver uses to preload its items' children for a whole
page (one statement per level, the columns the types show, organization-scoped in SQL)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from strawberry.dataloader import DataLoader

from kindrobots.auth.principals import UserActor
from kindrobots.db.models import (
    Agent,
    AgentManifest,
    LlmCredential,
    Manifest,
    ManifestVersion,
    Message,
    Organization,
    Project,
    ProjectUsage,
    User,
)
from kindrobots.db.pagination import Page, first_page
from kindrobots.resolvers.access import member_organizations
from kindrobots.resolvers.usage import UsageDay, usage_days

# Opens a short read session: loaders batch across sibling fields that run concurrently,
# so each batch reads in a session of its own.
ReadSession = Callable[[], AbstractAsyncContextManager[AsyncSession]]

Owned = TypeVar("Owned", Agent, LlmCredential, Project)


Reached = TypeVar("Reached", User, Organization)


def _reached(read: ReadSession, model: type[Reached]) -> DataLoader[uuid.UUID, Reached | None]:
    """Users and organizations are not an organization's rows: they are reached only
    through memberships and audit events that were themselves loaded within scope."""

    async def load(ids: Sequence[uuid.UUID]) -> list[Reached | None]:
        async with read() as session:
            rows = (await session.scalars(select(model).where(model.id.in_(ids)))).all()
        found: dict[Any, Reached] = {row.id: row for row in rows}
        return [found.get(key) for key in ids]

    return DataLoader(load_fn=load)


def _owned(
    read: ReadSession, actor: UserActor, model: type[Owned]
) -> DataLoader[uuid.UUID, Owned | None]:
    """Rows of the caller's organizations only, filtered in SQL like every tenant query."""

    async def load(ids: Sequence[uuid.UUID]) -> list[Owned | None]:
        async with read() as session:
            rows = (
                await session.scalars(
                    select(model).where(
                        model.id.in_(ids),
                        model.organization_id.in_(member_organizations(actor)),
                    )
                )
            ).all()
        found: dict[Any, Owned] = {row.id: row for row in rows}
        return [found.get(key) for key in ids]

    return DataLoader(load_fn=load)


def _manifests_of_agents(
    read: ReadSession, actor: UserActor
) -> DataLoader[uuid.UUID, list[Manifest]]:
    async def load(agent_ids: Sequence[uuid.UUID]) -> list[list[Manifest]]:
        async with read() as session:
            rows = (
                await session.execute(
                    select(AgentManifest.agent_id, Manifest)
                    .join(Manifest, Manifest.id == AgentManifest.manifest_id)
                    .where(
                        AgentManifest.agent_id.in_(agent_ids),
                        Manifest.organization_id.in_(member_organizations(actor)),
                    )
                    .order_by(AgentManifest.agent_id, AgentManifest.position)
                )
            ).all()
        grouped: dict[uuid.UUID, list[Manifest]] = defaultdict(list)
        for agent_id, manifest in rows:
            grouped[agent_id].append(manifest)
        return [grouped[agent_id] for agent_id in agent_ids]

    return DataLoader(load_fn=load)


def _latest_versions(
    read: ReadSession, actor: UserActor
) -> DataLoader[uuid.UUID, ManifestVersion | None]:
    async def load(manifest_ids: Sequence[uuid.UUID]) -> list[ManifestVersion | None]:
        async with read() as session:
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
                    .where(
                        Manifest.id.in_(manifest_ids),
                        Manifest.organization_id.in_(member_organizations(actor)),
                    )
                )
            ).all()
        found = {row.manifest_id: row for row in rows}
        return [found.get(key) for key in manifest_ids]

    return DataLoader(load_fn=load)


def _first_messages(
    read: ReadSession, actor: UserActor
) -> DataLoader[tuple[uuid.UUID, int], Page[Message]]:
    """The first page of many conversations' messages in one statement (a window function)."""

    async def load(keys: Sequence[tuple[uuid.UUID, int]]) -> list[Page[Message]]:
        largest = max(first for _, first in keys)
        position = (
            func.row_number()
            .over(partition_by=Message.conversation_id, order_by=(Message.created_at, Message.id))
            .label("position")
        )
        ranked = (
            select(Message, position)
            .where(
                Message.conversation_id.in_({conversation for conversation, _ in keys}),
                Message.organization_id.in_(member_organizations(actor)),
            )
            .subquery()
        )
        ordered = aliased(Message, ranked)
        async with read() as session:
            rows = (
                await session.execute(
                    select(ordered, ranked.c.position)
                    .where(ranked.c.position <= largest + 1)
                    .order_by(ranked.c.conversation_id, ranked.c.position)
                )
            ).all()
        grouped: dict[uuid.UUID, list[Message]] = defaultdict(list)
        for message, _position in rows:
            grouped[message.conversation_id].append(message)
        return [first_page(grouped[conversation], first) for conversation, first in keys]

    return DataLoader(load_fn=load)


def _feedback(read: ReadSession, actor: UserActor) -> DataLoader[uuid.UUID, dict[str, int]]:
    """Ratings of many agents' messages, counted in one grouped statement."""

    async def load(agent_ids: Sequence[uuid.UUID]) -> list[dict[str, int]]:
        async with read() as session:
            rows = (
                await session.execute(
                    select(Message.agent_id, Message.rating, func.count())
                    .where(
                        Message.agent_id.in_(agent_ids),
                        Message.rating.is_not(None),
                        Message.organization_id.in_(member_organizations(actor)),
                    )
                    .group_by(Message.agent_id, Message.rating)
                )
            ).all()
        counts: dict[uuid.UUID, dict[str, int]] = defaultdict(dict)
        for agent_id, rating, number in rows:
            if agent_id is not None and rating is not None:  # both filtered in SQL
                counts[agent_id][rating] = int(number)
        return [counts[agent_id] for agent_id in agent_ids]

    return DataLoader(load_fn=load)


def _usage(
    read: ReadSession, actor: UserActor
) -> DataLoader[tuple[uuid.UUID, int, date], list[UsageDay]]:
    """Many projects' daily usage (project, days, today) in one statement."""

    async def load(keys: Sequence[tuple[uuid.UUID, int, date]]) -> list[list[UsageDay]]:
        first = min(today - timedelta(days=days - 1) for _, days, today in keys)
        async with read() as session:
            rows = (
                await session.scalars(
                    select(ProjectUsage).where(
                        ProjectUsage.project_id.in_({key[0] for key in keys}),
                        ProjectUsage.organization_id.in_(member_organizations(actor)),
                        ProjectUsage.day >= first,
                    )
                )
            ).all()
        grouped: dict[uuid.UUID, list[ProjectUsage]] = defaultdict(list)
        for row in rows:
            grouped[row.project_id].append(row)
        return [usage_days(grouped[project], days, today) for project, days, today in keys]

    return DataLoader(load_fn=load)


@dataclass
class Loaders:
    user: DataLoader[uuid.UUID, User | None]
    organization: DataLoader[uuid.UUID, Organization | None]
    agent: DataLoader[uuid.UUID, Agent | None]
    project: DataLoader[uuid.UUID, Project | None]
    credential: DataLoader[uuid.UUID, LlmCredential | None]
    agent_manifests: DataLoader[uuid.UUID, list[Manifest]]
    latest_version: DataLoader[uuid.UUID, ManifestVersion | None]
    first_messages: DataLoader[tuple[uuid.UUID, int], Page[Message]]
    feedback: DataLoader[uuid.UUID, dict[str, int]]
    usage: DataLoader[tuple[uuid.UUID, int, date], list[UsageDay]]


def build_loaders(read: ReadSession, actor: UserActor) -> Loaders:
    """One operation's loaders; every tenant row they read is scoped to ``actor``."""
    return Loaders(
        user=_reached(read, User),
        organization=_reached(read, Organization),
        agent=_owned(read, actor, Agent),
        project=_owned(read, actor, Project),
        credential=_owned(read, actor, LlmCredential),
        agent_manifests=_manifests_of_agents(read, actor),
        latest_version=_latest_versions(read, actor),
        first_messages=_first_messages(read, actor),
        feedback=_feedback(read, actor),
        usage=_usage(read, actor),
    )


# --- Preloading: a page's children, by one statement per level -----------------------------


@dataclass(frozen=True)
class CredentialRow:
    """The columns of a credential its type shows (never the key's ciphertext or nonce)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    provider: str
    label: str
    base_url: str | None
    key_hint: str
    created_at: datetime


@dataclass(frozen=True)
class ManifestRow:
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    version: int
    created_at: datetime
    forward_end_user_token: bool


@dataclass(frozen=True)
class VersionRow:
    """What a manifest's type shows of its newest version (not its servers)."""

    source_url: str | None
    operations: list[dict[str, Any]]


CredentialColumns = LlmCredential | CredentialRow
ManifestColumns = Manifest | ManifestRow


async def credentials_by_id(
    session: AsyncSession, organization_id: uuid.UUID, ids: set[uuid.UUID]
) -> dict[uuid.UUID, CredentialRow]:
    if not ids:
        return {}
    rows = await session.execute(
        select(
            LlmCredential.id,
            LlmCredential.organization_id,
            LlmCredential.provider,
            LlmCredential.label,
            LlmCredential.base_url,
            LlmCredential.key_hint,
            LlmCredential.created_at,
        ).where(LlmCredential.id.in_(ids), LlmCredential.organization_id == organization_id)
    )
    return {row[0]: CredentialRow(*row) for row in rows}


async def manifests_by_agent(
    session: AsyncSession, organization_id: uuid.UUID, agent_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[ManifestRow]]:
    """Each agent's manifests in its order; one object per manifest, shared by its agents."""
    grouped: dict[uuid.UUID, list[ManifestRow]] = {agent_id: [] for agent_id in agent_ids}
    if not agent_ids:
        return grouped
    rows = await session.execute(
        select(
            AgentManifest.agent_id,
            Manifest.id,
            Manifest.organization_id,
            Manifest.name,
            Manifest.version,
            Manifest.created_at,
            Manifest.forward_end_user_token,
        )
        .join(Manifest, Manifest.id == AgentManifest.manifest_id)
        .where(
            AgentManifest.agent_id.in_(agent_ids),
            AgentManifest.organization_id == organization_id,
            Manifest.organization_id == organization_id,
        )
        .order_by(AgentManifest.agent_id, AgentManifest.position)
    )
    shared: dict[uuid.UUID, ManifestRow] = {}
    for agent_id, manifest_id, organization, name, version, created_at, forward in rows:
        manifest = shared.get(manifest_id)
        if manifest is None:
            manifest = ManifestRow(manifest_id, organization, name, version, created_at, forward)
            shared[manifest_id] = manifest
        grouped[agent_id].append(manifest)
    return grouped


async def latest_versions(
    session: AsyncSession, organization_id: uuid.UUID, manifest_ids: set[uuid.UUID]
) -> dict[uuid.UUID, VersionRow]:
    if not manifest_ids:
        return {}
    rows = await session.execute(
        select(ManifestVersion.manifest_id, ManifestVersion.source_url, ManifestVersion.operations)
        .join(
            Manifest,
            and_(
                Manifest.id == ManifestVersion.manifest_id,
                Manifest.version == ManifestVersion.version,
            ),
        )
        .where(Manifest.id.in_(manifest_ids), Manifest.organization_id == organization_id)
    )
    return {manifest_id: VersionRow(url, operations) for manifest_id, url, operations in rows}
