"""Agents."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from kindrobots.db import models
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import agents
from kindrobots.resolvers.agents import AgentFields
from kindrobots.resolvers.loaders import loaders
from kindrobots.schema.base import Info, Node
from kindrobots.schema.credentials import LlmCredentialType
from kindrobots.schema.manifests import ManifestType
from kindrobots.schema.permissions import IsEditor


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

    @strawberry.field
    async def llm_credential(self, info: Info) -> LlmCredentialType | None:
        if self.credential_id is None:
            return None
        row = await loaders(info.context).credential.load(self.credential_id)
        return LlmCredentialType.from_row(row) if row else None

    @strawberry.field
    async def manifests(self, info: Info) -> list[ManifestType]:
        rows = await loaders(info.context).agent_manifests.load(self.agent_id)
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


@strawberry.input
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


def _given(value: object) -> bool:
    return value is not strawberry.UNSET and value is not None


@strawberry.type
class AgentMutation:
    @strawberry.mutation(permission_classes=[IsEditor])
    async def create_agent(self, info: Info, input: CreateAgentInput) -> AgentType:
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
        row = await agents.create_agent(
            info.context, from_global_id(input.organization_id, "Organization"), fields
        )
        return AgentType.from_row(row)

    @strawberry.mutation(permission_classes=[IsEditor])
    async def update_agent(self, info: Info, input: UpdateAgentInput) -> AgentType:
        fields = AgentFields(
            name=input.name if _given(input.name) else None,
            system_prompt=input.system_prompt if _given(input.system_prompt) else None,
            model=input.model if _given(input.model) else None,
            temperature=input.temperature if _given(input.temperature) else None,
            llm_credential_id=(
                from_global_id(input.llm_credential_id, "LlmCredential")
                if _given(input.llm_credential_id) and input.llm_credential_id
                else None
            ),
            clear_credential=input.llm_credential_id is None,
            manifest_ids=(
                [from_global_id(m, "Manifest") for m in input.manifest_ids]
                if _given(input.manifest_ids) and input.manifest_ids is not None
                else None
            ),
        )
        row = await agents.update_agent(info.context, from_global_id(input.id, "Agent"), fields)
        return AgentType.from_row(row)

    @strawberry.mutation(permission_classes=[IsEditor])
    async def delete_agent(self, info: Info, id: strawberry.ID) -> bool:
        return await agents.delete_agent(info.context, from_global_id(id, "Agent"))
