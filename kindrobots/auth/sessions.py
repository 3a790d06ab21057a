"""The signed-in user behind an access token, checked against the live session."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import UserActor
from kindrobots.auth.signing_keys import refresh_unknown_kid
from kindrobots.auth.tokens import TokenSigner
from kindrobots.auth.widgets import ORGANIZATION_SUSPENDED
from kindrobots.db.enums import Role
from kindrobots.db.models import AuthSession, Membership, Organization, User
from kindrobots.errors import Forbidden

ACCOUNT_SUSPENDED = "This account is suspended."
__all__ = ["ACCOUNT_SUSPENDED", "ORGANIZATION_SUSPENDED", "user_actor"]


async def user_actor(
    session: AsyncSession,
    signer: TokenSigner,
    access_token: str,
    now: datetime,
    ip: str | None = None,
) -> UserActor | None:
    """The token's user with every role, if its sign-in is still live (one statement).

    Checked on every operation, so that signing out, being removed or being suspended
    bites at once. Suspension rides on the same statement: the user's row and, per
    membership, the organization's ``suspended_at``. A suspended user is FORBIDDEN here.
    """
    claims = signer.verify(access_token)
    if claims is None and await refresh_unknown_kid(session, signer, access_token, now):
        claims = signer.verify(access_token)
    if claims is None:
        return None
    statement = (
        select(User, Membership.organization_id, Membership.role, Organization.suspended_at)
        .join(
            AuthSession,
            and_(
                AuthSession.user_id == User.id,
                AuthSession.id == claims.session_id,
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > now,
            ),
        )
        .outerjoin(Membership, Membership.user_id == User.id)
        .outerjoin(Organization, Organization.id == Membership.organization_id)
        .where(User.id == claims.user_id)
    )
    rows = (await session.execute(statement)).all()
    if not rows:
        return None
    user = rows[0][0]
    if user.suspended_at is not None:
        raise Forbidden(ACCOUNT_SUSPENDED)
    roles = {org_id: Role(role) for _, org_id, role, _ in rows if org_id is not None}
    suspended = frozenset(org_id for _, org_id, _, at in rows if at is not None)
    return UserActor(
        user=user, session_id=claims.session_id, roles=roles, ip=ip, suspended=suspended
    )
