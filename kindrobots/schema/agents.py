"""Agents."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from kindrobots.db import models
from kindrobots.db.enums import Role
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import agents
from kindrobots.resolvers.agents import AgentFields
from kindrobots.schema.base import Info, Node, given, is_cleared
from kindrobots.schema.credentials import LlmCredentialType
from kindrobots.schema.loaders import loaders
from kindrobots.schema.manifests import ManifestType
from kindrobots.schema.permissions import (
    ObjectArgument,
    OnSource,
    OrganizationArgument,
    granted,
    requires,
)


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

    @strawberry.field(
        extensions=requires(Role.EDITOR, OnSource()),
        description=(
            "EDITOR and above: editors attach credentials to agents, so they see which "
            "one (id, label, provider); baseUrl and keyHint need ADMIN."
        ),
    )
    async def llm_credential(self, info: Info) -> LlmCredentialType | None:
        if self.credential_id is None:
            return None
        row = await loaders(info).credential.load(self.credential_id)
        return LlmCredentialType.from_row(row) if row else None

    @strawberry.field(description="Visitors' ratings of this agent's replies.")
    async def feedback(self, info: Info) -> MessageFeedback:
        counts = await loaders(info).feedback.load(self.agent_id)
        return MessageFeedback(up=counts.get("UP", 0), down=counts.get("DOWN", 0))

    @strawberry.field
    async def manifests(self, info: Info) -> list[ManifestType]:
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
