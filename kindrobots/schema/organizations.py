"""Organizations, memberships, invitations and plans."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import strawberry

from kindrobots.billing.plans import Plan, Tier, effective_tier, plans
from kindrobots.db import models
from kindrobots.db.enums import Role
from kindrobots.errors import NotFound
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import (
    agents,
    audit,
    billing,
    chat,
    containment,
    credentials,
    manifests,
    organizations,
    projects,
)
from kindrobots.resolvers.loaders import latest_versions
from kindrobots.schema.agents import AgentType, preload_agents
from kindrobots.schema.audit import AuditEventType
from kindrobots.schema.base import Connection, Info, Node, to_connection
from kindrobots.schema.billing import BillingType
from kindrobots.schema.chat import ConversationType
from kindrobots.schema.credentials import LlmCredentialType
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.loaders import loaders
from kindrobots.schema.manifests import ManifestType, preload_versions
from kindrobots.schema.permissions import (
    OnSource,
    OrganizationArgument,
    authenticated,
    granted,
    requires,
    signed_in,
)
from kindrobots.schema.plain import selected
from kindrobots.schema.projects import ProjectType
from kindrobots.schema.users import UserType

strawberry.enum(Role)
strawberry.enum(Tier)


@strawberry.type(name="Plan")
class PlanType:
    tier: Tier
    name: str
    admin_seats: int | None
    chat_messages_per_minute: int
    monthly_tokens: int | None  # input and output tokens per billing period; None: unlimited
    price_id: str | None
    daily_token_budget: int | None = strawberry.field(
        description="Each project's token budget per UTC day (null: unlimited); a project "
        "may set a lower one."
    )
    monthly_token_budget: int | None = strawberry.field(
        description="Each project's token budget per UTC month (null: unlimited); a project "
        "may set a lower one."
    )

    @classmethod
    def from_plan(cls, plan: Plan) -> PlanType:
        return cls(
            tier=plan.tier,
            name=plan.name,
            admin_seats=plan.admin_seats,
            chat_messages_per_minute=plan.chat_messages_per_minute,
            monthly_tokens=plan.monthly_tokens,
            price_id=plan.price_id,
            daily_token_budget=plan.daily_token_budget,
            monthly_token_budget=plan.monthly_tokens,
        )


@strawberry.type(name="Invitation")
class InvitationType:
    id: strawberry.ID
    email: str
    role: Role
    expires_at: datetime

    @classmethod
    def from_row(cls, row: models.Invitation) -> InvitationType:
        return cls(
            id=strawberry.ID(to_global_id("Invitation", row.id)),
            email=row.email,
            role=Role(row.role),
            expires_at=row.expires_at,
        )


@strawberry.type
class InvitationResult:
    invitation: InvitationType
    token: str = strawberry.field(
        description="One-time acceptance token. Only its hash is stored; it is shown once."
    )


@strawberry.type(name="Membership")
class MembershipType:
    role: Role
    created_at: datetime
    organization_id: strawberry.Private[uuid.UUID]
    user_id: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def organization(self, info: Info) -> OrganizationType:
        row = await loaders(info).organization.load(self.organization_id)
        if row is None:  # the caller lost access to it while this request ran
            raise NotFound()
        return OrganizationType.from_row(row)

    @strawberry.field
    async def user(self, info: Info) -> UserType:
        row = await loaders(info).user.load(self.user_id)
        assert row is not None  # memberships cascade with their user
        return UserType.from_row(row)

    @classmethod
    def from_row(cls, row: models.Membership) -> MembershipType:
        return cls(
            role=Role(row.role),
            created_at=row.created_at,
            organization_id=row.organization_id,
            user_id=row.user_id,
        )


@strawberry.type(name="Organization")
class OrganizationType(Node):
    name: str
    slug: str
    tier: Tier
    created_at: datetime
    conversation_retention_days: int | None = strawberry.field(
        description="Days an idle conversation is kept before the retention purge; null keeps them."
    )
    organization_id: strawberry.Private[uuid.UUID]

    @strawberry.field(extensions=requires(Role.VIEWER, OnSource()))
    async def members(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> Connection[MembershipType]:
        grant = granted(info)
        async with info.context.services.read() as session:
            page = await organizations.list_members(
                session, grant.actor, grant.organization_id, 20 if first is None else first, after
            )
        return to_connection(page, MembershipType.from_row)

    @strawberry.field(extensions=requires(Role.VIEWER, OnSource()))
    async def agents(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        search: str | None = None,
    ) -> Connection[AgentType]:
        grant = granted(info)
        async with info.context.services.read() as session:
            page = await agents.list_agents(
                session,
                grant.actor,
                grant.organization_id,
                20 if first is None else first,
                after,
                search,
            )
            connection = to_connection(page, AgentType.from_row)
            await preload_agents(session, info, grant, [edge.node for edge in connection.edges])
        return connection

    @strawberry.field(extensions=requires(Role.VIEWER, OnSource()))
    async def manifests(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> Connection[ManifestType]:
        grant = granted(info)
        async with info.context.services.read() as session:
            page = await manifests.list_manifests(
                session, grant.actor, grant.organization_id, 20 if first is None else first, after
            )
            connection = to_connection(page, ManifestType.from_row)
            if selected(info, "edges", "node") & {"operations", "sourceUrl"}:
                nodes = [edge.node for edge in connection.edges]
                ids = {node.manifest_id for node in nodes}
                preload_versions(nodes, await latest_versions(session, grant.organization_id, ids))
        return connection

    @strawberry.field(extensions=requires(Role.VIEWER, OnSource()))
    async def projects(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> Connection[ProjectType]:
        grant = granted(info)
        async with info.context.services.read() as session:
            page = await projects.list_projects(
                session, grant.actor, grant.organization_id, 20 if first is None else first, after
            )
        return to_connection(page, ProjectType.from_row)

    @strawberry.field(extensions=requires(Role.VIEWER, OnSource()))
    async def conversations(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> Connection[ConversationType]:
        grant = granted(info)
        async with info.context.services.read() as session:
            page = await chat.list_conversations(
                session,
                grant.actor,
                grant.organization_id,
                from_global_id(project_id, "Project") if project_id else None,
                20 if first is None else first,
                after,
            )
        return to_connection(page, ConversationType.from_row)

    @strawberry.field(extensions=requires(Role.ADMIN, OnSource()))
    async def llm_credentials(self, info: Info) -> list[LlmCredentialType]:
        grant = granted(info)
        async with info.context.services.read() as session:
            rows = await credentials.list_credentials(session, grant.actor, grant.organization_id)
        return [LlmCredentialType.from_row(row) for row in rows]

    @strawberry.field(extensions=requires(Role.ADMIN, OnSource()))
    async def invitations(self, info: Info) -> list[InvitationType]:
        grant = granted(info)
        async with info.context.services.read() as session:
            rows = await organizations.list_invitations(
                session, grant.actor, info.now(), grant.organization_id
            )
        return [InvitationType.from_row(row) for row in rows]

    @strawberry.field(extensions=requires(Role.ADMIN, OnSource()))
    async def billing(self, info: Info) -> BillingType:
        grant = granted(info)
        async with info.context.services.read() as session:
            view = await billing.billing_view(
                session, info.now(), info.context.settings, grant.organization_id
            )
        return BillingType.from_view(view)

    @strawberry.field(extensions=requires(Role.ADMIN, OnSource()))
    async def audit_log(
        self,
        info: Info,
        first: int | None = 50,
        after: str | None = None,
        action: str | None = None,
    ) -> Connection[AuditEventType]:
        grant = granted(info)
        async with info.context.services.read() as session:
            page = await audit.list_events(
                session,
                grant.actor,
                grant.organization_id,
                50 if first is None else first,
                after,
                action,
            )
        return to_connection(page, AuditEventType.from_row)

    @classmethod
    def from_row(cls, row: models.Organization) -> OrganizationType:
        return cls(
            id=strawberry.ID(to_global_id("Organization", row.id)),
            name=row.name,
            slug=row.slug,
            # The tier in force now: a lapsed past-due grace period shows as Starter.
            tier=effective_tier(row.tier, row.tier_grace_until, datetime.now(UTC)),
            created_at=row.created_at,
            conversation_retention_days=row.conversation_retention_days,
            organization_id=row.id,
        )


@strawberry.input
class CreateOrganizationInput:
    name: str


@strawberry.input
class InviteMemberInput:
    organization_id: strawberry.ID
    email: str
    role: Role


@strawberry.input
class UpdateMemberRoleInput:
    organization_id: strawberry.ID
    user_id: strawberry.ID
    role: Role


@strawberry.type
class OrganizationQuery:
    @strawberry.field(extensions=authenticated())
    async def organization(self, info: Info, id: strawberry.ID) -> OrganizationType | None:
        async with info.context.services.read() as session:
            row = await organizations.get_organization(
                session, signed_in(info), from_global_id(id, "Organization")
            )
        return OrganizationType.from_row(row)

    @strawberry.field
    def plans(self, info: Info) -> list[PlanType]:
        return [PlanType.from_plan(plan) for plan in plans(info.context.settings)]


@strawberry.type
class OrganizationMutation:
    @strawberry.mutation(
        extensions=authenticated(),
        directives=[RateLimit(limit=10, window=3600, per=RateLimitKey.CALLER)],
    )
    async def create_organization(
        self, info: Info, input: CreateOrganizationInput
    ) -> OrganizationType:
        async with info.context.services.write() as session:
            row = await organizations.create_organization(
                session, signed_in(info), info.now(), info.context.settings, input.name
            )
        return OrganizationType.from_row(row)

    @strawberry.mutation(
        extensions=requires(Role.ADMIN, OrganizationArgument("input.organization_id")),
        directives=[RateLimit(limit=50, window=3600, per=RateLimitKey.ORGANIZATION)],
    )
    async def invite_member(self, info: Info, input: InviteMemberInput) -> InvitationResult:
        grant = granted(info)
        async with info.context.services.write() as session:
            invitation, token = await organizations.invite_member(
                session,
                grant.actor,
                info.now(),
                info.context.settings,
                grant.organization_id,
                input.email,
                Role(input.role),
            )
        return InvitationResult(invitation=InvitationType.from_row(invitation), token=token)

    @strawberry.mutation(
        extensions=authenticated(),
        directives=[RateLimit(limit=10, window=60, per=RateLimitKey.CALLER)],
    )
    async def accept_invitation(self, info: Info, token: str) -> MembershipType:
        async with info.context.services.write() as session:
            row = await organizations.accept_invitation(
                session, signed_in(info), info.now(), info.context.settings, token
            )
        return MembershipType.from_row(row)

    @strawberry.mutation(
        extensions=requires(Role.ADMIN, OrganizationArgument("input.organization_id"))
    )
    async def update_member_role(self, info: Info, input: UpdateMemberRoleInput) -> MembershipType:
        grant = granted(info)
        async with info.context.services.write() as session:
            row = await organizations.update_member_role(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                from_global_id(input.user_id, "User"),
                Role(input.role),
            )
        return MembershipType.from_row(row)

    @strawberry.mutation(extensions=requires(Role.ADMIN, OrganizationArgument("organization_id")))
    async def remove_member(
        self, info: Info, organization_id: strawberry.ID, user_id: strawberry.ID
    ) -> bool:
        grant = granted(info)
        member = from_global_id(user_id, "User")
        async with info.context.services.write() as session:
            removed = await organizations.remove_member(
                session, grant.actor, info.now(), grant.organization_id, member
            )
        await containment.announce(
            info.context.services.broker,
            containment.member_removed(grant.organization_id, member),
        )
        return removed
