"""Data rights: export and delete an organization, erase one end user, set retention."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON
from strawberry.types.unset import UnsetType

from kindrobots.db.enums import Role
from kindrobots.errors import BadUserInput
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import containment, data_rights, organizations
from kindrobots.schema.base import Info
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.organizations import OrganizationType
from kindrobots.schema.permissions import OrganizationArgument, granted, requires

TOO_LARGE = (
    "This organization is too large to export through the API (KR_EXPORT_MAX_ROWS); "
    "an operator can stream it with `kindrobots org export`."
)


@strawberry.type
class OrganizationExport:
    organization_id: strawberry.ID
    exported_at: datetime
    document: JSON = strawberry.field(
        description="The archive: organization, billing, members, invitations, llmCredentials "
        "(metadata only), manifests, agents, projects (key hints only), conversations with "
        "their messages, auditLog. `format` versions its shape."
    )


@strawberry.type
class EndUserDataDeletion:
    conversations: int
    messages: int


@strawberry.input
class DeleteOrganizationInput:
    organization_id: strawberry.ID
    confirmation: str = strawberry.field(description="The organization's slug or name, typed back.")


@strawberry.input
class DeleteEndUserDataInput:
    organization_id: strawberry.ID
    subject: str = strawberry.field(description="The end user's JWT subject.")
    project_id: strawberry.ID | None = None


@strawberry.input
class UpdateOrganizationInput:
    organization_id: strawberry.ID
    conversation_retention_days: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="Days an idle conversation is kept (1-3650); null keeps them; "
        "omitted leaves the setting as it is.",
    )


@strawberry.type
class DataRightsMutation:
    @strawberry.mutation(
        extensions=requires(Role.OWNER, OrganizationArgument("organization_id")),
        directives=[RateLimit(limit=10, window=3600, per=RateLimitKey.ORGANIZATION)],
        description="The organization's data as one JSON archive (audited). A mutation: it "
        "records who took the data, and must never be a cacheable GET.",
    )
    async def export_organization(
        self, info: Info, organization_id: strawberry.ID
    ) -> OrganizationExport:
        grant = granted(info)
        now = info.now()
        async with info.context.services.read() as session:
            counts = await data_rights.data_counts(session, grant.organization_id)
        if counts.rows > info.context.settings.export_max_rows:
            raise BadUserInput("organizationId", TOO_LARGE)
        async with info.context.services.write() as session:
            await data_rights.record_export(session, grant.actor, now, grant.organization_id)
        async with info.context.services.read() as session:
            export = await data_rights.export_organization(session, now, grant.organization_id)
            document = await data_rights.collect(export)
        return OrganizationExport(
            organization_id=strawberry.ID(to_global_id("Organization", grant.organization_id)),
            exported_at=now,
            document=JSON(document),
        )

    @strawberry.mutation(
        extensions=requires(Role.OWNER, OrganizationArgument("input.organization_id"))
    )
    async def delete_organization(self, info: Info, input: DeleteOrganizationInput) -> bool:
        grant = granted(info)
        async with info.context.services.write() as session:
            await data_rights.delete_organization(
                session, grant.actor, info.now(), grant.organization_id, input.confirmation
            )
        await containment.announce(
            info.context.services.broker,
            containment.organization_deleted(grant.organization_id, data_rights.DELETED_REASON),
        )
        return True

    @strawberry.mutation(
        extensions=requires(Role.ADMIN, OrganizationArgument("input.organization_id"))
    )
    async def delete_end_user_data(
        self, info: Info, input: DeleteEndUserDataInput
    ) -> EndUserDataDeletion:
        grant = granted(info)
        project_id = from_global_id(input.project_id, "Project") if input.project_id else None
        async with info.context.services.write() as session:
            deleted = await data_rights.delete_end_user_data(
                session, grant.actor, info.now(), grant.organization_id, input.subject, project_id
            )
        return EndUserDataDeletion(conversations=deleted.conversations, messages=deleted.messages)

    @strawberry.mutation(
        extensions=requires(Role.ADMIN, OrganizationArgument("input.organization_id"))
    )
    async def update_organization(
        self, info: Info, input: UpdateOrganizationInput
    ) -> OrganizationType:
        grant = granted(info)
        if isinstance(input.conversation_retention_days, UnsetType):
            async with info.context.services.read() as session:
                row = await organizations.get_organization(
                    session, grant.actor, grant.organization_id
                )
            return OrganizationType.from_row(row)
        async with info.context.services.write() as session:
            row = await data_rights.set_conversation_retention(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                input.conversation_retention_days,
            )
        return OrganizationType.from_row(row)
