"""LLM credentials: the key goes in once and never comes back out."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from kindrobots.db import models
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import credentials
from kindrobots.resolvers.credentials import LlmProvider
from kindrobots.schema.base import Info, Node
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.permissions import IsAdmin

strawberry.enum(LlmProvider)


@strawberry.type(name="LlmCredential")
class LlmCredentialType(Node):
    provider: LlmProvider
    label: str
    base_url: str | None
    key_hint: str = strawberry.field(description='The last four characters, e.g. "…a1b2".')
    created_at: datetime
    organization_id: strawberry.Private[uuid.UUID]

    @classmethod
    def from_row(cls, row: models.LlmCredential) -> LlmCredentialType:
        return cls(
            id=strawberry.ID(to_global_id("LlmCredential", row.id)),
            provider=LlmProvider(row.provider),
            label=row.label,
            base_url=row.base_url,
            key_hint=f"…{row.key_hint}",
            created_at=row.created_at,
            organization_id=row.organization_id,
        )


@strawberry.input
class AddLlmCredentialInput:
    organization_id: strawberry.ID
    provider: LlmProvider
    api_key: str
    label: str
    base_url: str | None = None


@strawberry.type
class CredentialMutation:
    @strawberry.mutation(
        permission_classes=[IsAdmin],
        directives=[RateLimit(limit=10, window=60, per=RateLimitKey.ORGANIZATION)],
    )
    async def add_llm_credential(
        self, info: Info, input: AddLlmCredentialInput
    ) -> LlmCredentialType:
        row = await credentials.add_credential(
            info.context,
            from_global_id(input.organization_id, "Organization"),
            LlmProvider(input.provider),
            input.api_key,
            input.label,
            input.base_url,
        )
        return LlmCredentialType.from_row(row)

    @strawberry.mutation(permission_classes=[IsAdmin])
    async def delete_llm_credential(self, info: Info, id: strawberry.ID) -> bool:
        return await credentials.delete_credential(
            info.context, from_global_id(id, "LlmCredential")
        )
