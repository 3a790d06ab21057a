"""LLM credentials: the key goes in once and never comes back out."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from kindrobots.db.enums import LlmProvider, Role
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import credentials
from kindrobots.resolvers.loaders import CredentialColumns
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
    # An EDITOR reaches credentials through Agent.llmCredential; where the key goes and
    # what it ends with are for ADMINs, on every path. Plain attributes, so that a page
    # of them is read without a resolver per item (schema.plain).
    base_url: str | None = strawberry.field(extensions=requires(Role.ADMIN, OnSource()))
    key_hint: str = strawberry.field(
        extensions=requires(Role.ADMIN, OnSource()),
        description='The last four characters, e.g. "…a1b2".',
    )
    created_at: datetime
    organization_id: strawberry.Private[uuid.UUID]

    @classmethod
    def from_row(cls, row: CredentialColumns) -> LlmCredentialType:
        return cls(
            id=strawberry.ID(to_global_id("LlmCredential", row.id)),
            provider=LlmProvider(row.provider),
            label=row.label,
            created_at=row.created_at,
            organization_id=row.organization_id,
            base_url=row.base_url,
            key_hint=f"…{row.key_hint}",
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
