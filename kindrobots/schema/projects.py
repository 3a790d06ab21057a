"""Projects: agents deployed on the web."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import strawberry

from kindrobots.db import models
from kindrobots.db.enums import AccessMode, Role
from kindrobots.errors import NotFound
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import containment, projects, usage
from kindrobots.resolvers.projects import CLEARABLE, ProjectFields
from kindrobots.schema.agents import AgentType
from kindrobots.schema.base import Info, Node, given, is_cleared
from kindrobots.schema.loaders import loaders
from kindrobots.schema.permissions import (
    ObjectArgument,
    OnSource,
    OrganizationArgument,
    granted,
    requires,
)

strawberry.enum(AccessMode)

BUDGETS = (
    "dailyTokenBudget and monthlyTokenBudget lower the plan's per-project token budgets "
    "(never above them; null: the plan's); conversationTokenCap caps one conversation's "
    "tokens (null: no cap)."
)


@strawberry.type
class ProjectUsageDay:
    day: date
    messages: int
    input_tokens: int
    output_tokens: int
    refusals: int = strawberry.field(
        description="Chat messages refused because a token budget or cap was spent."
    )


@strawberry.type(name="Project")
class ProjectType(Node):
    name: str
    publishable_key: str
    allowed_origins: list[str]
    access_mode: AccessMode
    jwks_url: str | None
    jwt_issuer: str | None
    jwt_audience: str | None
    created_at: datetime
    daily_token_budget: int | None
    monthly_token_budget: int | None
    conversation_token_cap: int | None
    organization_id: strawberry.Private[uuid.UUID]
    agent_id: strawberry.Private[uuid.UUID]
    project_id: strawberry.Private[uuid.UUID]

    @strawberry.field(
        extensions=requires(Role.VIEWER, OnSource()),
        description="Chat usage per UTC day, the last `days` days up to today, oldest first.",
    )
    async def usage(self, info: Info, days: int = 30) -> list[ProjectUsageDay]:
        today = info.now().astimezone(UTC).date()
        rows = await loaders(info).usage.load((self.project_id, usage.check_days(days), today))
        return [
            ProjectUsageDay(
                day=row.day,
                messages=row.messages,
                input_tokens=row.input_tokens,
                output_tokens=row.output_tokens,
                refusals=row.refusals,
            )
            for row in rows
        ]

    @strawberry.field
    async def agent(self, info: Info) -> AgentType:
        row = await loaders(info).agent.load(self.agent_id)
        if row is None:  # the caller lost access to it while this request ran
            raise NotFound()
        return AgentType.from_row(row)

    @classmethod
    def from_row(cls, row: models.Project) -> ProjectType:
        return cls(
            id=strawberry.ID(to_global_id("Project", row.id)),
            name=row.name,
            publishable_key=row.publishable_key,
            allowed_origins=list(row.allowed_origins),
            access_mode=AccessMode(row.access_mode),
            jwks_url=row.jwks_url,
            jwt_issuer=row.jwt_issuer,
            jwt_audience=row.jwt_audience,
            created_at=row.created_at,
            daily_token_budget=row.daily_token_budget,
            monthly_token_budget=row.monthly_token_budget,
            conversation_token_cap=row.conversation_token_cap,
            organization_id=row.organization_id,
            agent_id=row.agent_id,
            project_id=row.id,
        )


@strawberry.input(description=BUDGETS)
class CreateProjectInput:
    organization_id: strawberry.ID
    name: str
    agent_id: strawberry.ID
    allowed_origins: list[str] = strawberry.field(default_factory=list)
    access_mode: AccessMode = AccessMode.PUBLIC
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    daily_token_budget: int | None = None
    monthly_token_budget: int | None = None
    conversation_token_cap: int | None = None


@strawberry.input(
    description="Omitted fields stay as they are; null clears jwksUrl, jwtIssuer, jwtAudience "
    "and the token budgets. " + BUDGETS
)
class UpdateProjectInput:
    id: strawberry.ID
    name: str | None = strawberry.UNSET
    agent_id: strawberry.ID | None = strawberry.UNSET
    allowed_origins: list[str] | None = strawberry.UNSET
    access_mode: AccessMode | None = strawberry.UNSET
    jwks_url: str | None = strawberry.UNSET
    jwt_issuer: str | None = strawberry.UNSET
    jwt_audience: str | None = strawberry.UNSET
    daily_token_budget: int | None = strawberry.UNSET
    monthly_token_budget: int | None = strawberry.UNSET
    conversation_token_cap: int | None = strawberry.UNSET


def _update_fields(input: UpdateProjectInput) -> ProjectFields:
    agent_id = given(input.agent_id)
    access_mode = given(input.access_mode)
    return ProjectFields(
        name=given(input.name),
        agent_id=from_global_id(agent_id, "Agent") if agent_id is not None else None,
        allowed_origins=given(input.allowed_origins),
        access_mode=AccessMode(access_mode) if access_mode is not None else None,
        jwks_url=given(input.jwks_url),
        jwt_issuer=given(input.jwt_issuer),
        jwt_audience=given(input.jwt_audience),
        daily_token_budget=given(input.daily_token_budget),
        monthly_token_budget=given(input.monthly_token_budget),
        conversation_token_cap=given(input.conversation_token_cap),
        cleared=frozenset(name for name in CLEARABLE if is_cleared(getattr(input, name))),
    )


@strawberry.type
class ProjectMutation:
    @strawberry.mutation(
        extensions=requires(Role.EDITOR, OrganizationArgument("input.organization_id"))
    )
    async def create_project(self, info: Info, input: CreateProjectInput) -> ProjectType:
        grant = granted(info)
        fields = await projects.validate(
            info.context.settings,
            ProjectFields(
                name=input.name,
                agent_id=from_global_id(input.agent_id, "Agent"),
                allowed_origins=input.allowed_origins,
                access_mode=AccessMode(input.access_mode),
                jwks_url=input.jwks_url,
                jwt_issuer=input.jwt_issuer,
                jwt_audience=input.jwt_audience,
                daily_token_budget=input.daily_token_budget,
                monthly_token_budget=input.monthly_token_budget,
                conversation_token_cap=input.conversation_token_cap,
            ),
        )
        async with info.context.services.write() as session:
            row = await projects.create_project(
                session, grant.actor, info.now(), grant.organization_id, fields
            )
        return ProjectType.from_row(row)

    @strawberry.mutation(extensions=requires(Role.EDITOR, ObjectArgument("input.id", "Project")))
    async def update_project(self, info: Info, input: UpdateProjectInput) -> ProjectType:
        grant = granted(info)
        fields = await projects.validate(info.context.settings, _update_fields(input))
        async with info.context.services.write() as session:
            row = await projects.update_project(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                from_global_id(input.id, "Project"),
                fields,
            )
        return ProjectType.from_row(row)

    @strawberry.mutation(extensions=requires(Role.EDITOR, ObjectArgument("id", "Project")))
    async def rotate_project_key(self, info: Info, id: strawberry.ID) -> ProjectType:
        grant = granted(info)
        async with info.context.services.write() as session:
            row = await projects.rotate_project_key(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                from_global_id(id, "Project"),
            )
        # Widgets holding the old key are closed on every instance, not at their next message.
        await containment.announce(info.context.services.broker, containment.key_rotated(row.id))
        return ProjectType.from_row(row)

    @strawberry.mutation(extensions=requires(Role.EDITOR, ObjectArgument("id", "Project")))
    async def delete_project(self, info: Info, id: strawberry.ID) -> bool:
        grant = granted(info)
        async with info.context.services.write() as session:
            return await projects.delete_project(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                from_global_id(id, "Project"),
            )
