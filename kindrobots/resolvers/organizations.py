"""Organizations, members, invitations and seats."""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import Actor, UserActor
from kindrobots.auth.tokens import hash_token, new_opaque_token
from kindrobots.auth.widgets import ORGANIZATION_SUSPENDED
from kindrobots.billing.plans import Tier, effective_tier, plan_for
from kindrobots.config import Settings
from kindrobots.db.enums import Role
from kindrobots.db.locks import lock_user
from kindrobots.db.models import Invitation, Membership, Organization, User
from kindrobots.db.pagination import Page
from kindrobots.errors import Conflict, Forbidden, NotFound, PaymentRequired
from kindrobots.resolvers import audit, validation
from kindrobots.resolvers.access import locked_organization, member_organizations, organization_page
from kindrobots.security.redaction import register_secret

INVALID_INVITATION = "This invitation is not valid."
LAST_OWNER = "An organization must keep at least one owner."


def _slug(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "org"
    # 48 random bits: slugs stay unique among millions of organizations with one name.
    return f"{base}-{secrets.token_hex(6)}"


async def insert_organization(
    session: AsyncSession, actor: Actor, now: datetime, owner: User, name: str
) -> Organization:
    organization = Organization(name=name, slug=_slug(name), tier=Tier.STARTER.value)
    session.add(organization)
    await session.flush()
    session.add(
        Membership(
            organization_id=organization.id,
            user_id=owner.id,
            role=Role.OWNER.value,
            created_at=now,
        )
    )
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization.id,
        action="organization.create",
        target=("Organization", organization.id),
        details={"name": name},
    )
    return organization


async def create_organization(
    session: AsyncSession, actor: UserActor, now: datetime, settings: Settings, name: str
) -> Organization:
    """A new organization the actor owns, within ``max_organizations_per_user``.

    The user's row is locked first, so concurrent creations by one user are counted one
    after another and cannot all pass the cap (SQLite: the write lock of BEGIN IMMEDIATE).
    """
    name = validation.text(name, "name", 100)
    await lock_user(session, actor.user.id)
    owned = await session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.user_id == actor.user.id, Membership.role == Role.OWNER.value)
    )
    limit = settings.max_organizations_per_user
    if (owned or 0) >= limit:
        raise Forbidden(
            f"You already own {limit} organizations, the most one user may own; "
            "delete one or have another owner create it."
        )
    return await insert_organization(session, actor, now, actor.user, name)


async def get_organization(
    session: AsyncSession, actor: UserActor, organization_id: uuid.UUID
) -> Organization:
    organization = await session.scalar(
        select(Organization).where(
            Organization.id == organization_id,
            Organization.id.in_(member_organizations(actor)),
        )
    )
    if organization is None:
        raise NotFound()
    if organization.suspended_at is not None:
        raise Forbidden(ORGANIZATION_SUSPENDED)
    return organization


async def list_members(
    session: AsyncSession,
    actor: UserActor,
    organization_id: uuid.UUID,
    first: int,
    after: str | None,
) -> Page[Membership]:
    return await organization_page(session, actor, Membership, organization_id, first, after)


async def list_invitations(
    session: AsyncSession, actor: UserActor, now: datetime, organization_id: uuid.UUID
) -> list[Invitation]:
    rows = await session.scalars(
        select(Invitation)
        .where(
            Invitation.organization_id == organization_id,
            Invitation.organization_id.in_(member_organizations(actor)),
            Invitation.accepted_at.is_(None),
            Invitation.expires_at > now,
        )
        .order_by(Invitation.created_at, Invitation.id)
    )
    return list(rows.all())


async def list_memberships(session: AsyncSession, actor: UserActor) -> list[Membership]:
    rows = await session.scalars(
        select(Membership)
        .where(Membership.user_id == actor.user.id)
        .order_by(Membership.created_at, Membership.id)
    )
    return list(rows.all())


async def _check_seats(
    session: AsyncSession,
    settings: Settings,
    now: datetime,
    organization: Organization,
    count_pending: bool,
) -> None:
    # The tier in force now: after a downgrade the members stay, new seats are refused.
    plan = plan_for(settings, effective_tier(organization.tier, organization.tier_grace_until, now))
    if plan.admin_seats is None:
        return
    used = await session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.organization_id == organization.id)
    )
    if count_pending:
        used = (used or 0) + (
            await session.scalar(
                select(func.count())
                .select_from(Invitation)
                .where(
                    Invitation.organization_id == organization.id,
                    Invitation.accepted_at.is_(None),
                    Invitation.expires_at > now,
                )
            )
            or 0
        )
    if (used or 0) + 1 > plan.admin_seats:
        raise PaymentRequired(
            f"The {plan.name} plan includes {plan.admin_seats} seat(s); upgrade to add members."
        )


async def invite_member(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    settings: Settings,
    organization_id: uuid.UUID,
    email: str,
    role: Role,
) -> tuple[Invitation, str]:
    """Invite someone by email; the caller is an ADMIN of the organization."""
    if role is Role.OWNER and actor.roles.get(organization_id) is not Role.OWNER:
        raise Forbidden("Only owners can invite owners.")
    email = validation.email(email)
    token = new_opaque_token()
    organization = await locked_organization(session, organization_id)
    existing = await session.scalar(
        select(Membership.id)
        .join(User, User.id == Membership.user_id)
        .where(Membership.organization_id == organization_id, User.email == email)
    )
    if existing is not None:
        raise Conflict("This person is already a member.")
    # A new invitation to the same address replaces the pending one.
    await session.execute(
        delete(Invitation).where(
            Invitation.organization_id == organization_id,
            Invitation.email == email,
            Invitation.accepted_at.is_(None),
        )
    )
    await _check_seats(session, settings, now, organization, count_pending=True)
    invitation = Invitation(
        organization_id=organization_id,
        email=email,
        role=role.value,
        token_hash=hash_token(token),
        invited_by_id=actor.user.id,
        expires_at=now + timedelta(seconds=settings.invitation_ttl),
        created_at=now,
    )
    session.add(invitation)
    await session.flush()
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="member.invite",
        target=("Invitation", invitation.id),
        details={"email": email, "role": role.value},
    )
    return invitation, token


async def accept_invitation(
    session: AsyncSession, actor: UserActor, now: datetime, settings: Settings, token: str
) -> Membership:
    register_secret(token)
    invitation = await session.scalar(
        select(Invitation).where(
            Invitation.token_hash == hash_token(token),
            Invitation.accepted_at.is_(None),
            Invitation.expires_at > now,
        )
    )
    # Bound to the invited address, so a leaked link is no key for someone else.
    if invitation is None or invitation.email != actor.user.email:
        raise NotFound(INVALID_INVITATION)
    organization = await locked_organization(session, invitation.organization_id)
    # Claim it under the lock: a concurrent acceptance may have spent it meanwhile.
    claimed = await session.execute(
        update(Invitation)
        .where(Invitation.id == invitation.id, Invitation.accepted_at.is_(None))
        .values(accepted_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFound(INVALID_INVITATION)
    if invitation.organization_id in actor.roles:
        raise Conflict("You are already a member of this organization.")
    await _check_seats(session, settings, now, organization, count_pending=False)
    membership = Membership(
        organization_id=invitation.organization_id,
        user_id=actor.user.id,
        role=invitation.role,
        created_at=now,
    )
    session.add(membership)
    await session.flush()
    await audit.record(
        session,
        actor,
        now,
        organization_id=invitation.organization_id,
        action="invitation.accept",
        target=("User", actor.user.id),
        details={"role": invitation.role},
    )
    return membership


async def _target_membership(
    session: AsyncSession, organization_id: uuid.UUID, user_id: uuid.UUID
) -> Membership:
    membership = await session.scalar(
        select(Membership).where(
            Membership.organization_id == organization_id, Membership.user_id == user_id
        )
    )
    if membership is None:
        raise NotFound()
    return membership


async def _owner_count(session: AsyncSession, organization_id: uuid.UUID) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.organization_id == organization_id, Membership.role == Role.OWNER.value)
    )
    return count or 0


async def update_member_role(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    user_id: uuid.UUID,
    role: Role,
) -> Membership:
    """Change a member's role; the caller is an ADMIN, and only owners manage owners."""
    actor_role = actor.roles.get(organization_id)
    await locked_organization(session, organization_id)
    membership = await _target_membership(session, organization_id, user_id)
    previous = Role(membership.role)
    if Role.OWNER in (previous, role) and actor_role is not Role.OWNER:
        raise Forbidden("Only owners can manage owners.")
    demotes_owner = previous is Role.OWNER and role is not Role.OWNER
    if demotes_owner and await _owner_count(session, organization_id) <= 1:
        raise Conflict(LAST_OWNER)
    membership.role = role.value
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="member.role_update",
        target=("User", user_id),
        details={"from": previous.value, "to": role.value},
    )
    return membership


async def remove_member(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    user_id: uuid.UUID,
) -> bool:
    """Remove a member; the caller is an ADMIN, and only owners remove owners."""
    actor_role = actor.roles.get(organization_id)
    await locked_organization(session, organization_id)
    membership = await _target_membership(session, organization_id, user_id)
    if membership.role == Role.OWNER.value:
        if actor_role is not Role.OWNER:
            raise Forbidden("Only owners can manage owners.")
        if await _owner_count(session, organization_id) <= 1:
            raise Conflict(LAST_OWNER)
    await session.delete(membership)
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="member.remove",
        target=("User", user_id),
        details={"role": membership.role},
    )
    return True


async def get_user(session: AsyncSession, actor: UserActor, user_id: uuid.UUID) -> User:
    """A user the caller may see: themself, or someone sharing one of their organizations."""
    if user_id == actor.user.id:
        return actor.user
    user = await session.scalar(
        select(User)
        .join(Membership, Membership.user_id == User.id)
        .where(User.id == user_id, Membership.organization_id.in_(member_organizations(actor)))
        .limit(1)
    )
    if user is None:
        raise NotFound()
    return user
