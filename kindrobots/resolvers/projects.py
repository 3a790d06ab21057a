"""Projects: an agent deployed on the web behind a publishable key and allowed origins."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import UserActor
from kindrobots.billing.plans import TOKEN_BUDGETS, effective_tier
from kindrobots.config import Settings
from kindrobots.db.enums import AccessMode
from kindrobots.db.locks import lock_organization
from kindrobots.db.models import Agent, Organization, Project
from kindrobots.db.pagination import Page
from kindrobots.errors import BadUserInput, NotFound
from kindrobots.resolvers import audit, security_events, validation
from kindrobots.resolvers.access import delete_owned, lock_row, organization_page, scoped_get
from kindrobots.security.origins import normalize_origins
from kindrobots.security.ssrf import check_url


def new_publishable_key() -> str:
    return "pk_" + secrets.token_urlsafe(24)  # 32 URL-safe characters


# The fields an update may set to null (API: an omitted field is unchanged, null clears).
CLEARABLE = (
    "jwks_url",
    "jwt_issuer",
    "jwt_audience",
    "daily_token_budget",
    "monthly_token_budget",
    "conversation_token_cap",
)
BUDGET_FIELDS = {
    "daily_token_budget": "dailyTokenBudget",
    "monthly_token_budget": "monthlyTokenBudget",
    "conversation_token_cap": "conversationTokenCap",
}
MAX_TOKENS = 2**31 - 1


@dataclass
class ProjectFields:
    """Validated input; on update ``None`` means unchanged and a name in ``cleared``
    (one of ``CLEARABLE``) sets that field to null."""

    name: str | None = None
    agent_id: uuid.UUID | None = None
    allowed_origins: list[str] | None = None
    access_mode: AccessMode | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    daily_token_budget: int | None = None
    monthly_token_budget: int | None = None
    conversation_token_cap: int | None = None
    cleared: frozenset[str] = field(default_factory=frozenset)


async def validate(settings: Settings, fields: ProjectFields) -> ProjectFields:
    """Check the input; the JWKS URL resolves DNS, so call this before a transaction opens."""
    if fields.name is not None:
        fields.name = validation.text(fields.name, "name", 100)
    if fields.allowed_origins is not None:
        fields.allowed_origins = normalize_origins(
            fields.allowed_origins, production=settings.is_production
        )
    if fields.jwks_url is not None:
        fields.jwks_url = await check_url(
            fields.jwks_url.strip(),
            settings.outbound_allow,
            "jwksUrl",
            https_only=settings.is_production,
        )
    if fields.jwt_issuer is not None:
        fields.jwt_issuer = validation.text(fields.jwt_issuer, "jwtIssuer", 2048)
    if fields.jwt_audience is not None:
        fields.jwt_audience = validation.text(fields.jwt_audience, "jwtAudience", 2048)
    for name, public in BUDGET_FIELDS.items():
        value = getattr(fields, name)
        least = 1 if name == "conversation_token_cap" else 0
        if value is not None and not least <= value <= MAX_TOKENS:
            raise BadUserInput(public, f"{public} is {least} to {MAX_TOKENS} tokens.")
    return fields


def _check_budgets(project: Project, organization: Organization, now: datetime) -> None:
    """A project's own token budgets may lower its plan's, never raise them."""
    tier = effective_tier(organization.tier, organization.tier_grace_until, now)
    daily, monthly = TOKEN_BUDGETS[tier]
    for name, own, most in (
        ("dailyTokenBudget", project.daily_token_budget, daily),
        ("monthlyTokenBudget", project.monthly_token_budget, monthly),
    ):
        if own is not None and most is not None and own > most:
            raise BadUserInput(name, f"The {tier.value} plan allows at most {most} tokens.")


def _check_authenticated(project: Project) -> None:
    if project.access_mode != AccessMode.AUTHENTICATED.value:
        return
    for name, value in (
        ("jwksUrl", project.jwks_url),
        ("jwtIssuer", project.jwt_issuer),
        ("jwtAudience", project.jwt_audience),
    ):
        if not value:
            raise BadUserInput(name, f"AUTHENTICATED projects need {name}.")


async def _agent_in(session: AsyncSession, organization_id: uuid.UUID, agent_id: uuid.UUID) -> None:
    found = await session.scalar(
        select(Agent.id).where(Agent.id == agent_id, Agent.organization_id == organization_id)
    )
    if found is None:
        raise NotFound("The agent was not found.")


async def create_project(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    fields: ProjectFields,
) -> Project:
    """Deploy an agent; ``fields`` were checked by :func:`validate`."""
    assert fields.name is not None and fields.agent_id is not None
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
        daily_token_budget=fields.daily_token_budget,
        monthly_token_budget=fields.monthly_token_budget,
        conversation_token_cap=fields.conversation_token_cap,
        created_at=now,
        updated_at=now,
    )
    _check_authenticated(project)
    # Ordered with deleteAgent: the agent cannot vanish between the check and the insert.
    organization = await lock_organization(session, organization_id)
    if organization is None:
        raise NotFound()
    _check_budgets(project, organization, now)
    await _agent_in(session, organization_id, fields.agent_id)
    session.add(project)
    await session.flush()
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="project.create",
        target=("Project", project.id),
        details={"name": project.name, "accessMode": project.access_mode},
    )
    return project


async def get_project(session: AsyncSession, actor: UserActor, project_id: uuid.UUID) -> Project:
    return await scoped_get(session, actor, Project, project_id)


async def update_project(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    project_id: uuid.UUID,
    fields: ProjectFields,
) -> Project:
    """Change a project; ``fields`` were checked by :func:`validate`."""
    project = await lock_row(session, Project, project_id, organization_id)
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
        *BUDGET_FIELDS,
    ):
        value = getattr(fields, name)
        if name in fields.cleared:
            value = None
        elif value is None:
            continue
        if value != getattr(project, name):
            setattr(project, name, value)
            changed.append(name)
    if fields.access_mode is not None and fields.access_mode.value != project.access_mode:
        project.access_mode = fields.access_mode.value
        changed.append("access_mode")
    _check_authenticated(project)
    if {"daily_token_budget", "monthly_token_budget"} & set(changed):
        organization = await session.get(Organization, project.organization_id)
        assert organization is not None  # locked with the project
        _check_budgets(project, organization, now)
    project.updated_at = now
    await audit.record(
        session,
        actor,
        now,
        organization_id=project.organization_id,
        action="project.update",
        target=("Project", project.id),
        details={"changed": changed},
    )
    return project


async def rotate_project_key(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    project_id: uuid.UUID,
) -> Project:
    project = await lock_row(session, Project, project_id, organization_id)
    project.publishable_key = new_publishable_key()
    project.updated_at = now
    await audit.record(
        session,
        actor,
        now,
        organization_id=project.organization_id,
        action="project.rotate_key",
        target=("Project", project.id),
    )
    await security_events.record(
        session,
        actor,
        now,
        security_events.PROJECT_KEY_ROTATED,
        organization_id=project.organization_id,
        details={"projectId": str(project.id)},
    )
    return project


async def delete_project(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    project_id: uuid.UUID,
) -> bool:
    project = await scoped_get(session, actor, Project, project_id)
    await delete_owned(session, Project, project.id, organization_id)
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="project.delete",
        target=("Project", project.id),
        details={"name": project.name},
    )
    return True


async def list_projects(
    session: AsyncSession,
    actor: UserActor,
    organization_id: uuid.UUID,
    first: int,
    after: str | None,
) -> Page[Project]:
    return await organization_page(session, actor, Project, organization_id, first, after)
