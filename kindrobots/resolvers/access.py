"""Who is calling and what they may do: the checks every resolver and permission class share."""

from __future__ import annotations

import asyncio
import uuid
from typing import TypeVar

from sqlalchemy import ColumnElement, Select, and_, delete, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.roles import Role
from kindrobots.context import RequestContext, Viewer
from kindrobots.db.locks import lock_organization
from kindrobots.db.models import (
    Agent,
    AuditEvent,
    AuthSession,
    Conversation,
    LlmCredential,
    Manifest,
    Membership,
    Message,
    Project,
    User,
)
from kindrobots.db.pagination import Page, paginate
from kindrobots.security.errors import Forbidden, NotFound, Unauthenticated


async def _load_viewer(ctx: RequestContext) -> Viewer | None:
    if not ctx.access_token:
        return None
    claims = ctx.services.signer.verify(ctx.access_token)
    if claims is None:
        return None
    # One statement: the user, proof that the session is still live, and every role.
    statement = (
        select(User, Membership.organization_id, Membership.role)
        .join(
            AuthSession,
            and_(
                AuthSession.user_id == User.id,
                AuthSession.id == claims.session_id,
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > ctx.now(),
            ),
        )
        .outerjoin(Membership, Membership.user_id == User.id)
        .where(User.id == claims.user_id)
    )
    async with ctx.services.read() as session:
        rows = (await session.execute(statement)).all()
    if not rows:
        return None
    roles = {org_id: Role(role) for _, org_id, role in rows if org_id is not None}
    return Viewer(user=rows[0][0], session_id=claims.session_id, roles=roles)


async def current_viewer(ctx: RequestContext) -> Viewer | None:
    """The signed-in caller, looked up once per operation so that revocation bites at once."""
    if ctx.viewer_task is None:
        ctx.viewer_task = asyncio.ensure_future(_load_viewer(ctx))
    return await asyncio.shield(ctx.viewer_task)


async def require_viewer(ctx: RequestContext) -> Viewer:
    viewer = await current_viewer(ctx)
    if viewer is None:
        raise Unauthenticated()
    return viewer


async def require_role(ctx: RequestContext, organization_id: uuid.UUID, role: Role) -> Role:
    """The caller's role in the organization, if at least ``role``.

    Outsiders get NOT_FOUND, exactly as for an organization that does not exist;
    members below ``role`` get FORBIDDEN.
    """
    viewer = await require_viewer(ctx)
    held = viewer.roles.get(organization_id)
    if held is None:
        raise NotFound()
    if not held.at_least(role):
        raise Forbidden()
    return held


def member_organizations(viewer: Viewer) -> Select[uuid.UUID]:
    """Organization IDs the caller belongs to, as SQL, for scoping every tenant query."""
    return select(Membership.organization_id).where(Membership.user_id == viewer.user.id)


async def organization_of(ctx: RequestContext, type_name: str, raw_id: uuid.UUID) -> uuid.UUID:
    """The organization owning an object, if the caller belongs to it; else NOT_FOUND."""
    model = OWNED_MODELS.get(type_name)
    if model is None:
        raise NotFound()
    viewer = await require_viewer(ctx)
    async with ctx.services.read() as session:
        organization_id = await session.scalar(
            select(model.organization_id).where(
                model.id == raw_id, model.organization_id.in_(member_organizations(viewer))
            )
        )
    if organization_id is None:
        raise NotFound()
    return organization_id


OWNED_MODELS: dict[str, type[Agent | AuditEvent | LlmCredential | Manifest | Project]] = {
    "Agent": Agent,
    "AuditEvent": AuditEvent,
    "LlmCredential": LlmCredential,
    "Manifest": Manifest,
    "Project": Project,
}


async def delete_owned(
    session: AsyncSession,
    model: type[Manifest | LlmCredential],
    row_id: uuid.UUID,
    organization_id: uuid.UUID,
) -> None:
    """Delete one row of the organization; NOT_FOUND when a concurrent delete got there first."""
    result = await session.execute(
        delete(model).where(model.id == row_id, model.organization_id == organization_id)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound()


async def lock_and_reload(session: AsyncSession, row: Agent | Project) -> None:
    """Take the organization lock, then read ``row`` again: it may have changed or gone
    between the scoped read and the lock (a concurrent delete answers NOT_FOUND)."""
    await lock_organization(session, row.organization_id)
    try:
        await session.refresh(row)
    except InvalidRequestError:
        raise NotFound() from None


Scoped = TypeVar(
    "Scoped", Agent, AuditEvent, Conversation, LlmCredential, Manifest, Message, Project
)


async def scoped_get(
    session: AsyncSession, ctx: RequestContext, model: type[Scoped], row_id: uuid.UUID
) -> Scoped:
    """One row of the caller's organizations by ID, filtered in SQL; NOT_FOUND otherwise,
    exactly as for an ID that does not exist."""
    viewer = await require_viewer(ctx)
    row = await session.scalar(
        select(model).where(
            model.id == row_id, model.organization_id.in_(member_organizations(viewer))
        )
    )
    if row is None:
        raise NotFound()
    return row


Listed = TypeVar("Listed", Agent, AuditEvent, Conversation, Manifest, Membership, Project)


async def organization_page(
    ctx: RequestContext,
    model: type[Listed],
    organization_id: uuid.UUID,
    role: Role,
    first: int,
    after: str | None,
    *conditions: ColumnElement[bool],
) -> Page[Listed]:
    """One page of an organization's rows, oldest first, for a caller holding ``role``.

    The organization is also filtered by the caller's memberships in SQL, so the
    query itself can never read another tenant's rows.
    """
    await require_role(ctx, organization_id, role)
    viewer = await require_viewer(ctx)
    statement = select(model).where(
        model.organization_id == organization_id,
        model.organization_id.in_(member_organizations(viewer)),
        *conditions,
    )
    async with ctx.services.read() as session:
        return await paginate(session, statement, model.created_at, model.id, first, after)
