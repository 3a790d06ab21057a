"""Projects: agents deployed on the web."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from kindrobots.db import models
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import projects
from kindrobots.resolvers.loaders import loaders
from kindrobots.resolvers.projects import AccessMode, ProjectFields
from kindrobots.schema.agents import AgentType
from kindrobots.schema.base import Info, Node
from kindrobots.schema.permissions import IsEditor
from kindrobots.security.errors import NotFound

strawberry.enum(AccessMode)


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
    organization_id: strawberry.Private[uuid.UUID]
    agent_id: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def agent(self, info: Info) -> AgentType:
        row = await loaders(info.context).agent.load(self.agent_id)
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
            organization_id=row.organization_id,
            agent_id=row.agent_id,
        )


@strawberry.input
class CreateProjectInput:
    organization_id: strawberry.ID
    name: str
    agent_id: strawberry.ID
    allowed_origins: list[str] = strawberry.field(default_factory=list)
    access_mode: AccessMode = AccessMode.PUBLIC
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None


@strawberry.input
class UpdateProjectInput:
    id: strawberry.ID
    name: str | None = None
    agent_id: strawberry.ID | None = None
    allowed_origins: list[str] | None = None
    access_mode: AccessMode | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None


@strawberry.type
class ProjectMutation:
    @strawberry.mutation(permission_classes=[IsEditor])
    async def create_project(self, info: Info, input: CreateProjectInput) -> ProjectType:
        fields = ProjectFields(
            name=input.name,
            agent_id=from_global_id(input.agent_id, "Agent"),
            allowed_origins=input.allowed_origins,
            access_mode=AccessMode(input.access_mode),
            jwks_url=input.jwks_url,
            jwt_issuer=input.jwt_issuer,
            jwt_audience=input.jwt_audience,
        )
        row = await projects.create_project(
            info.context, from_global_id(input.organization_id, "Organization"), fields
        )
        return ProjectType.from_row(row)

    @strawberry.mutation(permission_classes=[IsEditor])
    async def update_project(self, info: Info, input: UpdateProjectInput) -> ProjectType:
        fields = ProjectFields(
            name=input.name,
            agent_id=from_global_id(input.agent_id, "Agent") if input.agent_id else None,
            allowed_origins=input.allowed_origins,
            access_mode=AccessMode(input.access_mode) if input.access_mode else None,
            jwks_url=input.jwks_url,
            jwt_issuer=input.jwt_issuer,
            jwt_audience=input.jwt_audience,
        )
        row = await projects.update_project(
            info.context, from_global_id(input.id, "Project"), fields
        )
        return ProjectType.from_row(row)

    @strawberry.mutation(permission_classes=[IsEditor])
    async def rotate_project_key(self, info: Info, id: strawberry.ID) -> ProjectType:
        row = await projects.rotate_project_key(info.context, from_global_id(id, "Project"))
        return ProjectType.from_row(row)

    @strawberry.mutation(permission_classes=[IsEditor])
    async def delete_project(self, info: Info, id: strawberry.ID) -> bool:
        return await projects.delete_project(info.context, from_global_id(id, "Project"))
