"""Agents."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.db import models
from kindrobots.db.enums import Role
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import agents
from kindrobots.resolvers.agents import AgentFields
from kindrobots.resolvers.loaders import credentials_by_id, latest_versions, manifests_by_agent
from kindrobots.schema.base import Info, Node, given, is_cleared
from kindrobots.schema.credentials import LlmCredentialType
from kindrobots.schema.grants import RoleGrant
from kindrobots.schema.loaders import loaders
from kindrobots.schema.manifests import ManifestType, preload_versions
from kindrobots.schema.permissions import (
    ObjectArgument,
    OnSource,
    OrganizationArgument,
    granted,
    requires,
)
from kindrobots.schema.plain import UNLOADED, Unloaded, preloaded, selected


@strawberry.type
class MessageFeedback:
    up: int
    down: int


@strawberry.type(name="Agent")
class AgentType(Node):
    name: str
    system_prompt: str
    model: str
    temperature: float
    created_at: datetime
    updated_at: datetime
    organization_id: strawberry.Private[uuid.UUID]
    agent_id: strawberry.Private[uuid.UUID]
    credential_id: strawberry.Private[uuid.UUID | None]

    # Filled in by a list that preloaded its agents' children (schema.plain).
    preloaded_credential: strawberry.Private[LlmCredentialType | Unloaded | None] = UNLOADED
    preloaded_manifests: strawberry.Private[list[ManifestType] | Unloaded] = UNLOADED

    @strawberry.field(
        extensions=requires(Role.EDITOR, OnSource()),
        description=(
            "EDITOR and above: editors attach credentials to agents, so they see which "
            "one (id, label, provider); baseUrl and keyHint need ADMIN."
        ),
        metadata=preloaded("preloaded_credential"),
    )
    async def llm_credential(self, info: Info) -> LlmCredentialType | None:
        if self.preloaded_credential is not UNLOADED:
            return self.preloaded_credential
        if self.credential_id is None:
            return None
        row = await loaders(info).credential.load(self.credential_id)
        return LlmCredentialType.from_row(row) if row else None

    @strawberry.field(description="Visitors' ratings of this agent's replies.")
    async def feedback(self, info: Info) -> MessageFeedback:
        counts = await loaders(info).feedback.load(self.agent_id)
        return MessageFeedback(up=counts.get("UP", 0), down=counts.get("DOWN", 0))

    @strawberry.field(metadata=preloaded("preloaded_manifests"))
    async def manifests(self, info: Info) -> list[ManifestType]:
        if self.preloaded_manifests is not UNLOADED:
            return self.preloaded_manifests
        rows = await loaders(info).agent_manifests.load(self.agent_id)
        return [ManifestType.from_row(row) for row in rows]

    @classmethod
    def from_row(cls, row: models.Agent) -> AgentType:
        return cls(
            id=strawberry.ID(to_global_id("Agent", row.id)),
            name=row.name,
            system_prompt=row.system_prompt,
            model=row.model,
            temperature=row.temperature,
            created_at=row.created_at,
            updated_at=row.updated_at,
            organization_id=row.organization_id,
            agent_id=row.id,
            credential_id=row.llm_credential_id,
        )


async def preload_agents(
    session: AsyncSession, info: Info, grant: RoleGrant, agents: list[AgentType]
) -> None:
    """The children a page of agents shows, for the whole page: one statement per level,
    scoped to the page's organization, only for what the document selects (below
    ``edges { node }``) and what the caller's role may see."""
    fields = selected(info, "edges", "node")
    organization_id = grant.organization_id
    if "manifests" in fields:
        by_agent = await manifests_by_agent(
            session, organization_id, [agent.agent_id for agent in agents]
        )
        shared: dict[uuid.UUID, ManifestType] = {}
        for agent in agents:
            agent.preloaded_manifests = [
                shared.get(row.id) or shared.setdefault(row.id, ManifestType.from_row(row))
                for row in by_agent[agent.agent_id]
            ]
        if selected(info, "edges", "node", "manifests") & {"operations", "sourceUrl"}:
            versions = await latest_versions(session, organization_id, set(shared))
            preload_versions(list(shared.values()), versions)
    if "llmCredential" in fields and grant.role.at_least(Role.EDITOR):
        ids = {agent.credential_id for agent in agents if agent.credential_id is not None}
        rows = await credentials_by_id(session, organization_id, ids)
        credentials = {key: LlmCredentialType.from_row(row) for key, row in rows.items()}
        for agent in agents:
            key = agent.credential_id
            agent.preloaded_credential = credentials.get(key) if key is not None else None


@strawberry.input
class CreateAgentInput:
    organization_id: strawberry.ID
    name: str
    model: str
    system_prompt: str = ""
    temperature: float = 0.7
    llm_credential_id: strawberry.ID | None = None
    manifest_ids: list[strawberry.ID] = strawberry.field(default_factory=list)


@strawberry.input(description="Omitted fields stay as they are; null clears llmCredentialId.")
class UpdateAgentInput:
    id: strawberry.ID
    name: str | None = strawberry.UNSET
    system_prompt: str | None = strawberry.UNSET
    model: str | None = strawberry.UNSET
    temperature: float | None = strawberry.UNSET
    llm_credential_id: strawberry.ID | None = strawberry.field(
        default=strawberry.UNSET, description="null detaches the credential."
    )
    manifest_ids: list[strawberry.ID] | None = strawberry.UNSET


def _update_fields(input: UpdateAgentInput) -> AgentFields:
    credential = input.llm_credential_id
    manifest_ids = given(input.manifest_ids)
    return AgentFields(
        name=given(input.name),
        system_prompt=given(input.system_prompt),
        model=given(input.model),
        temperature=given(input.temperature),
        llm_credential_id=(
            from_global_id(credential, "LlmCredential") if isinstance(credential, str) else None
        ),
        clear_credential=is_cleared(credential),
        manifest_ids=(
            [from_global_id(m, "Manifest") for m in manifest_ids]
            if manifest_ids is not None
            else None
        ),
    )


@strawberry.type
class AgentMutation:
    @strawberry.mutation(
        extensions=requires(Role.EDITOR, OrganizationArgument("input.organization_id"))
    )
    async def create_agent(self, info: Info, input: CreateAgentInput) -> AgentType:
        grant = granted(info)
        fields = AgentFields(
            name=input.name,
            system_prompt=input.system_prompt,
            model=input.model,
            temperature=input.temperature,
            llm_credential_id=(
                from_global_id(input.llm_credential_id, "LlmCredential")
                if input.llm_credential_id
                else None
            ),
            manifest_ids=[from_global_id(m, "Manifest") for m in input.manifest_ids],
        )
        async with info.context.services.write() as session:
            row = await agents.create_agent(
                session, grant.actor, info.now(), grant.organization_id, fields
            )
        return AgentType.from_row(row)

    @strawberry.mutation(extensions=requires(Role.EDITOR, ObjectArgument("input.id", "Agent")))
    async def update_agent(self, info: Info, input: UpdateAgentInput) -> AgentType:
        grant = granted(info)
        fields = _update_fields(input)
        async with info.context.services.write() as session:
            row = await agents.update_agent(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                from_global_id(input.id, "Agent"),
                fields,
            )
        return AgentType.from_row(row)

    @strawberry.mutation(extensions=requires(Role.EDITOR, ObjectArgument("id", "Agent")))
    async def delete_agent(self, info: Info, id: strawberry.ID) -> bool:
        grant = granted(info)
        async with info.context.services.write() as session:
            return await agents.delete_agent(
                session, grant.actor, info.now(), grant.organization_id, from_global_id(id, "Agent")
            )
