"""Projects: an agent deployed on the web behind a publishable key and allowed origins."""

from __future__ import annotations

import enum
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.roles import Role
from kindrobots.context import RequestContext
from kindrobots.db.locks import lock_organization
from kindrobots.db.models import Agent, Project
from kindrobots.db.pagination import Page
from kindrobots.resolvers import audit, validation
from kindrobots.resolvers.access import (
    lock_and_reload,
    organization_page,
    require_role,
    require_viewer,
    scoped_get,
)
from kindrobots.security.errors import BadUserInput, NotFound
from kindrobots.security.origins import normalize_origins
from kindrobots.security.ssrf import check_url


class AccessMode(enum.Enum):
    PUBLIC = "PUBLIC"
    AUTHENTICATED = "AUTHENTICATED"


def new_publishable_key() -> str:
    return "pk_" + secrets.token_urlsafe(24)  # 32 URL-safe characters


@dataclass
class ProjectFields:
    """Validated input; ``None`` on update means unchanged."""

    name: str | None = None
    agent_id: uuid.UUID | None = None
    allowed_origins: list[str] | None = None
    access_mode: AccessMode | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None


async def _validate(ctx: RequestContext, fields: ProjectFields) -> ProjectFields:
    if fields.name is not None:
        fields.name = validation.text(fields.name, "name", 100)
    if fields.allowed_origins is not None:
        fields.allowed_origins = normalize_origins(
            fields.allowed_origins, production=ctx.settings.is_production
        )
    if fields.jwks_url is not None:
        fields.jwks_url = await check_url(
            fields.jwks_url.strip(),
            ctx.settings.outbound_allow,
            "jwksUrl",
            https_only=ctx.settings.is_production,
        )
    if fields.jwt_issuer is not None:
        fields.jwt_issuer = validation.text(fields.jwt_issuer, "jwtIssuer", 2048)
    if fields.jwt_audience is not None:
        fields.jwt_audience = validation.text(fields.jwt_audience, "jwtAudience", 2048)
    return fields


def _check_authenticated(project: Project) -> None:
    if project.access_mode != AccessMode.AUTHENTICATED.value:
        return
    for field, value in (
        ("jwksUrl", project.jwks_url),
        ("jwtIssuer", project.jwt_issuer),
        ("jwtAudience", project.jwt_audience),
    ):
        if not value:
            raise BadUserInput(field, f"AUTHENTICATED projects need {field}.")


async def _agent_in(session: AsyncSession, organization_id: uuid.UUID, agent_id: uuid.UUID) -> None:
    found = await session.scalar(
        select(Agent.id).where(Agent.id == agent_id, Agent.organization_id == organization_id)
    )
    if found is None:
        raise NotFound("The agent was not found.")


async def create_project(
    ctx: RequestContext, organization_id: uuid.UUID, fields: ProjectFields
) -> Project:
    await require_role(ctx, organization_id, Role.EDITOR)
    viewer = await require_viewer(ctx)
    fields = await _validate(ctx, fields)
    assert fields.name is not None and fields.agent_id is not None
    now = ctx.now()
    project = Project(
        organization_id=organization_id,
        name=fields.name,
        agent_id=fields.agent_id,
        publishable_key=new_publishable_key(),
        allowed_origins=fields.allowed_origins or [],
        access_mode=(fields.access_mode or AccessMode.PUBLIC).value,
        jwks_url=fields.jwks_url,
        jwt_issuer=fields.jwt_issuer,
        jwt_audience=fields.jwt_audience,
        created_at=now,
        updated_at=now,
    )
    _check_authenticated(project)
    async with ctx.services.write() as session:
        # Ordered with deleteAgent: the agent cannot vanish between the check and the insert.
        await lock_organization(session, organization_id)
        await _agent_in(session, organization_id, fields.agent_id)
        session.add(project)
        await session.flush()
        await audit.record(
            session,
            ctx,
            organization_id=organization_id,
            actor_id=viewer.user.id,
            action="project.create",
            target=("Project", project.id),
            details={"name": project.name, "accessMode": project.access_mode},
        )
    return project


async def get_project(ctx: RequestContext, project_id: uuid.UUID) -> Project:
    async with ctx.services.read() as session:
        return await scoped_get(session, ctx, Project, project_id)


async def update_project(
    ctx: RequestContext, project_id: uuid.UUID, fields: ProjectFields
) -> Project:
    viewer = await require_viewer(ctx)
    fields = await _validate(ctx, fields)  # may resolve DNS: before the transaction opens
    async with ctx.services.write() as session:
        project = await scoped_get(session, ctx, Project, project_id)
        await require_role(ctx, project.organization_id, Role.EDITOR)
        await lock_and_reload(session, project)
        if fields.agent_id is not None:
            await _agent_in(session, project.organization_id, fields.agent_id)
        changed = []
        for name in (
            "name",
            "agent_id",
            "allowed_origins",
            "jwks_url",
            "jwt_issuer",
            "jwt_audience",
        ):
            value = getattr(fields, name)
            if value is not None and value != getattr(project, name):
                setattr(project, name, value)
                changed.append(name)
        if fields.access_mode is not None and fields.access_mode.value != project.access_mode:
            project.access_mode = fields.access_mode.value
            changed.append("access_mode")
        _check_authenticated(project)
        project.updated_at = ctx.now()
        await audit.record(
            session,
            ctx,
            organization_id=project.organization_id,
            actor_id=viewer.user.id,
            action="project.update",
            target=("Project", project.id),
            details={"changed": changed},
        )
    return project


async def rotate_project_key(ctx: RequestContext, project_id: uuid.UUID) -> Project:
    viewer = await require_viewer(ctx)
    async with ctx.services.write() as session:
        project = await scoped_get(session, ctx, Project, project_id)
        await require_role(ctx, project.organization_id, Role.EDITOR)
        project.publishable_key = new_publishable_key()
        project.updated_at = ctx.now()
        await audit.record(
            session,
            ctx,
            organization_id=project.organization_id,
            actor_id=viewer.user.id,
            action="project.rotate_key",
            target=("Project", project.id),
        )
    return project


async def delete_project(ctx: RequestContext, project_id: uuid.UUID) -> bool:
    viewer = await require_viewer(ctx)
    async with ctx.services.write() as session:
        project = await scoped_get(session, ctx, Project, project_id)
        await require_role(ctx, project.organization_id, Role.EDITOR)
        await session.delete(project)
        await audit.record(
            session,
            ctx,
            organization_id=project.organization_id,
            actor_id=viewer.user.id,
            action="project.delete",
            target=("Project", project.id),
            details={"name": project.name},
        )
    return True


async def list_projects(
    ctx: RequestContext, organization_id: uuid.UUID, first: int, after: str | None
) -> Page[Project]:
    return await organization_page(ctx, Project, organization_id, Role.VIEWER, first, after)
