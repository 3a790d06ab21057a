"""LLM credentials: the key goes in once and never comes back out."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from kindrobots.db import models
from kindrobots.db.enums import LlmProvider, Role
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import credentials
from kindrobots.schema.base import Info, Node
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.permissions import (
    ObjectArgument,
    OnSource,
    OrganizationArgument,
    granted,
    requires,
)

strawberry.enum(LlmProvider)


@strawberry.type(name="LlmCredential")
class LlmCredentialType(Node):
    provider: LlmProvider
    label: str
    organization_id: strawberry.Private[uuid.UUID]
    row_base_url: strawberry.Private[str | None]
    row_key_hint: strawberry.Private[str]
    row_created_at: strawberry.Private[datetime]

    # An EDITOR reaches credentials through Agent.llmCredential; where the key goes and
    # what it ends with are for ADMINs, on every path.
    @strawberry.field(extensions=requires(Role.ADMIN, OnSource()))
    async def base_url(self) -> str | None:
        return self.row_base_url

    @strawberry.field(
        extensions=requires(Role.ADMIN, OnSource()),
        description='The last four characters, e.g. "…a1b2".',
    )
    async def key_hint(self) -> str:
        return f"…{self.row_key_hint}"

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row_created_at

    @classmethod
    def from_row(cls, row: models.LlmCredential) -> LlmCredentialType:
        return cls(
            id=strawberry.ID(to_global_id("LlmCredential", row.id)),
            provider=LlmProvider(row.provider),
            label=row.label,
            row_created_at=row.created_at,
            organization_id=row.organization_id,
            row_base_url=row.base_url,
            row_key_hint=row.key_hint,
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
        extensions=requires(Role.ADMIN, OrganizationArgument("input.organization_id")),
        directives=[RateLimit(limit=10, window=60, per=RateLimitKey.ORGANIZATION)],
    )
    async def add_llm_credential(
        self, info: Info, input: AddLlmCredentialInput
    ) -> LlmCredentialType:
        grant = granted(info)
        services = info.context.services
        prepared = await credentials.prepare(
            services.settings,
            services.keyring,
            info.now(),
            grant.organization_id,
            LlmProvider(input.provider),
            input.api_key,
            input.label,
            input.base_url,
        )
        async with services.write() as session:
            row = await credentials.add_credential(session, grant.actor, info.now(), prepared)
        return LlmCredentialType.from_row(row)

    @strawberry.mutation(extensions=requires(Role.ADMIN, ObjectArgument("id", "LlmCredential")))
    async def delete_llm_credential(self, info: Info, id: strawberry.ID) -> bool:
        grant = granted(info)
        async with info.context.services.write() as session:
            return await credentials.delete_credential(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                from_global_id(id, "LlmCredential"),
            )
