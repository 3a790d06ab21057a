"""Containment (security policy 8.2): staff, suspension, revoked sessions, rotated keys.

Each rule changes the database and audits in the caller's transaction — in the
organization's chain when it touches one, in the platform chain otherwise — and
records a security event. Rules that end live connections return a :class:`Closing`;
the caller publishes it (:func:`announce`) once its transaction has committed, and
every instance closes the matching WebSockets (``server.LiveRegistry``).

Suspension touches no data: restoring lets the party back to everything it had.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import Actor
from kindrobots.auth.sessions import ACCOUNT_SUSPENDED, ORGANIZATION_SUSPENDED
from kindrobots.auth.signing_keys import sealed_row
from kindrobots.auth.tokens import LEEWAY_SECONDS, TokenSigner
from kindrobots.auth.widgets import FORBIDDEN, UNAUTHORIZED
from kindrobots.broker import Broker
from kindrobots.config import generate_key
from kindrobots.db import locks
from kindrobots.db.models import AuthSession, Membership, Project, SigningKey, User
from kindrobots.errors import NotFound
from kindrobots.ids import from_global_id
from kindrobots.resolvers import audit, security_events, validation
from kindrobots.resolvers.access import locked_organization
from kindrobots.resolvers.projects import new_publishable_key

CONTROL_CHANNEL = "control:connections"

SESSION_ENDED = "The session has ended; sign in again."
KEY_ROTATED = "This project key is no longer valid."
MEMBERSHIP_REMOVED = "Your membership of this organization was removed."

STAFF_GRANTED = "staff.granted"
STAFF_REVOKED = "staff.revoked"
ORGANIZATION_SUSPENDED_EVENT = "staff.organization_suspended"
ORGANIZATION_RESTORED_EVENT = "staff.organization_restored"
USER_SUSPENDED_EVENT = "staff.user_suspended"
USER_RESTORED_EVENT = "staff.user_restored"
USER_SESSIONS_REVOKED = "staff.user_sessions_revoked"
ORGANIZATION_SESSIONS_REVOKED = "staff.organization_sessions_revoked"
ORGANIZATION_KEYS_ROTATED = "staff.organization_keys_rotated"
SIGNING_KEY_ROTATED = "keys.signing_rotated"


@dataclass(frozen=True)
class Closing:
    """Which open connections end, and how: a connection matches when it is indexed
    under every key of one of ``match`` (``user:<id>``, ``session:<id>``,
    ``organization:<id>``, ``project:<id>``)."""

    match: tuple[tuple[str, ...], ...]
    code: int
    reason: str
    count: int = 0

    def message(self) -> dict[str, object]:
        return {
            "kind": "close",
            "match": [list(keys) for keys in self.match],
            "code": self.code,
            "reason": self.reason,
        }


def user_key(user_id: uuid.UUID) -> str:
    return f"user:{user_id}"


def session_key(session_id: uuid.UUID) -> str:
    return f"session:{session_id}"


def organization_key(organization_id: uuid.UUID) -> str:
    return f"organization:{organization_id}"


def project_key(project_id: uuid.UUID) -> str:
    return f"project:{project_id}"


async def announce(broker: Broker, closing: Closing | None) -> None:
    """Tell every instance (this one included) to close what ``closing`` matches."""
    if closing is not None and closing.match:
        await broker.publish(CONTROL_CHANNEL, closing.message())


async def announce_signing_keys(broker: Broker) -> None:
    """Every instance reads the signing key set again."""
    await broker.publish(CONTROL_CHANNEL, {"kind": "signing_keys"})


def organization_deleted(organization_id: uuid.UUID, reason: str) -> Closing:
    return Closing(((organization_key(organization_id),),), FORBIDDEN, reason)


def signed_out(session_id: uuid.UUID) -> Closing:
    return Closing(((session_key(session_id),),), UNAUTHORIZED, SESSION_ENDED)


def signed_out_everywhere(user_id: uuid.UUID) -> Closing:
    return Closing(((user_key(user_id),),), UNAUTHORIZED, SESSION_ENDED)


def key_rotated(project_id: uuid.UUID) -> Closing:
    return Closing(((project_key(project_id),),), FORBIDDEN, KEY_ROTATED)


def member_removed(organization_id: uuid.UUID, user_id: uuid.UUID) -> Closing:
    return Closing(
        ((user_key(user_id), organization_key(organization_id)),), FORBIDDEN, MEMBERSHIP_REMOVED
    )


async def find_user(session: AsyncSession, reference: str) -> User | None:
    """A user by email, UUID or global ID (command-line arguments)."""
    if "@" in reference:
        return await session.scalar(select(User).where(User.email == reference.strip().lower()))
    with contextlib.suppress(ValueError):
        return await session.get(User, uuid.UUID(reference))
    with contextlib.suppress(Exception):  # not a global ID either
        return await session.get(User, from_global_id(reference, "User"))
    return None


async def _locked_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await locks.lock_user(session, user_id)
    if user is None:
        raise NotFound()
    return user


async def set_staff(
    session: AsyncSession, actor: Actor, now: datetime, user_id: uuid.UUID, staff: bool
) -> bool:
    """Grant or revoke the platform flag (command line only); True when it changed."""
    user = await _locked_user(session, user_id)
    if user.is_staff == staff:
        return False
    user.is_staff = staff
    await audit.record(
        session,
        actor,
        now,
        organization_id=None,
        action="staff.grant" if staff else "staff.revoke",
        target=("User", user.id),
    )
    await security_events.record(
        session,
        actor,
        now,
        STAFF_GRANTED if staff else STAFF_REVOKED,
        user_id=user.id,
        details={"by": actor.kind},
    )
    return True


async def _revoke_sessions(
    session: AsyncSession, now: datetime, users: list[uuid.UUID], reason: str
) -> int:
    if not users:
        return 0
    result = await session.execute(
        update(AuthSession)
        .where(AuthSession.user_id.in_(users), AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def suspend_organization(
    session: AsyncSession, actor: Actor, now: datetime, organization_id: uuid.UUID, reason: str
) -> Closing:
    """Refuse the organization's members (for it) and its widgets until restored."""
    reason = validation.text(reason, "reason", 200)
    organization = await locked_organization(session, organization_id)
    if organization.suspended_at is None:
        organization.suspended_at = now
    organization.suspended_reason = reason
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="organization.suspend",
        target=("Organization", organization_id),
        details={"reason": reason},
    )
    await security_events.record(
        session, actor, now, ORGANIZATION_SUSPENDED_EVENT, organization_id=organization_id
    )
    return Closing(((organization_key(organization_id),),), FORBIDDEN, ORGANIZATION_SUSPENDED)


async def restore_organization(
    session: AsyncSession, actor: Actor, now: datetime, organization_id: uuid.UUID
) -> bool:
    """Lift a suspension; False (and nothing audited) when there was none."""
    organization = await locked_organization(session, organization_id)
    if organization.suspended_at is None:
        return False
    organization.suspended_at = organization.suspended_reason = None
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="organization.restore",
        target=("Organization", organization_id),
    )
    await security_events.record(
        session, actor, now, ORGANIZATION_RESTORED_EVENT, organization_id=organization_id
    )
    return True


async def suspend_user(
    session: AsyncSession, actor: Actor, now: datetime, user_id: uuid.UUID, reason: str
) -> Closing:
    """Refuse every call of the user until restored; sessions stay, so restoring is enough."""
    reason = validation.text(reason, "reason", 200)
    user = await _locked_user(session, user_id)
    if user.suspended_at is None:
        user.suspended_at = now
    user.suspended_reason = reason
    await audit.record(
        session,
        actor,
        now,
        organization_id=None,
        action="user.suspend",
        target=("User", user_id),
        details={"reason": reason},
    )
    await security_events.record(session, actor, now, USER_SUSPENDED_EVENT, user_id=user_id)
    return Closing(((user_key(user_id),),), FORBIDDEN, ACCOUNT_SUSPENDED)


async def restore_user(
    session: AsyncSession, actor: Actor, now: datetime, user_id: uuid.UUID
) -> bool:
    user = await _locked_user(session, user_id)
    if user.suspended_at is None:
        return False
    user.suspended_at = user.suspended_reason = None
    await audit.record(
        session, actor, now, organization_id=None, action="user.restore", target=("User", user_id)
    )
    await security_events.record(session, actor, now, USER_RESTORED_EVENT, user_id=user_id)
    return True


async def revoke_user_sessions(
    session: AsyncSession, actor: Actor, now: datetime, user_id: uuid.UUID
) -> Closing:
    """End every sign-in of the user: access tokens stop at once, refresh tokens too."""
    await _locked_user(session, user_id)
    count = await _revoke_sessions(session, now, [user_id], "staff")
    await audit.record(
        session,
        actor,
        now,
        organization_id=None,
        action="user.revoke_sessions",
        target=("User", user_id),
        details={"sessions": count},
    )
    await security_events.record(
        session, actor, now, USER_SESSIONS_REVOKED, user_id=user_id, details={"sessions": count}
    )
    return Closing(((user_key(user_id),),), UNAUTHORIZED, SESSION_ENDED, count)


async def revoke_organization_sessions(
    session: AsyncSession, actor: Actor, now: datetime, organization_id: uuid.UUID
) -> Closing:
    """End every sign-in of every member of the organization."""
    await locked_organization(session, organization_id)
    members = list(
        await session.scalars(
            select(Membership.user_id).where(Membership.organization_id == organization_id)
        )
    )
    count = await _revoke_sessions(session, now, members, "staff")
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="organization.revoke_sessions",
        target=("Organization", organization_id),
        details={"members": len(members), "sessions": count},
    )
    await security_events.record(
        session,
        actor,
        now,
        ORGANIZATION_SESSIONS_REVOKED,
        organization_id=organization_id,
        details={"members": len(members), "sessions": count},
    )
    return Closing(
        tuple((user_key(member),) for member in members), UNAUTHORIZED, SESSION_ENDED, count
    )


async def rotate_organization_keys(
    session: AsyncSession, actor: Actor, now: datetime, organization_id: uuid.UUID
) -> Closing:
    """A new publishable key for every project: the old ones are refused at once."""
    await locked_organization(session, organization_id)
    projects = list(
        await session.scalars(select(Project).where(Project.organization_id == organization_id))
    )
    for project in projects:
        project.publishable_key = new_publishable_key()
        project.updated_at = now
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="organization.rotate_project_keys",
        target=("Organization", organization_id),
        details={"projects": len(projects)},
    )
    await security_events.record(
        session,
        actor,
        now,
        ORGANIZATION_KEYS_ROTATED,
        organization_id=organization_id,
        details={"projects": len(projects)},
    )
    return Closing(
        tuple((project_key(project.id),) for project in projects),
        FORBIDDEN,
        KEY_ROTATED,
        len(projects),
    )


async def rotate_signing_key(
    session: AsyncSession, actor: Actor, now: datetime, signer: TokenSigner
) -> str:
    """A new session-token signing key, signing from now on, on every instance; returns
    its key ID. The keys it replaces verify until the last token they signed has expired
    (``KR_ACCESS_TOKEN_TTL`` from now), then leave the JWKS. The first rotation moves
    ``KR_SIGNING_KEYS`` into the database; from then on the table is the key set."""
    assert signer.keyring is not None, "create_services gives the signer the key ring"
    new = generate_key("sig")
    # First: the platform chain's head is locked until commit, so rotations queue up.
    await audit.record(
        session,
        actor,
        now,
        organization_id=None,
        action="keys.rotate_signing",
        details={"kid": new.kid},
    )
    rows = list(await session.scalars(select(SigningKey)))
    if not rows:
        for position, key in enumerate(signer.seed):
            # Older than the new key, in the seed's order (the first would have signed).
            row = sealed_row(signer.keyring, key, now - timedelta(microseconds=position + 1))
            session.add(row)
            rows.append(row)
    retires_at = now + signer.ttl + timedelta(seconds=LEEWAY_SECONDS)
    retiring = []
    for row in rows:
        if row.retires_at is None or row.retires_at > retires_at:
            row.retires_at = retires_at
        if row.retires_at > now:
            retiring.append(row.kid)
    await session.execute(delete(SigningKey).where(SigningKey.retires_at <= now))
    session.add(sealed_row(signer.keyring, new, now))
    await security_events.record(
        session,
        actor,
        now,
        SIGNING_KEY_ROTATED,
        details={"kid": new.kid, "retiring": retiring, "retiresAt": retires_at.isoformat()},
    )
    return new.kid
