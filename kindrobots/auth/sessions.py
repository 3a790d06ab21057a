"""The signed-in user behind an access token, checked against the live session."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import UserActor
from kindrobots.auth.tokens import TokenSigner
from kindrobots.db.enums import Role
from kindrobots.db.models import AuthSession, Membership, User


async def user_actor(
    session: AsyncSession,
    signer: TokenSigner,
    access_token: str,
    now: datetime,
    ip: str | None = None,
) -> UserActor | None:
    """The token's user with every role, if its sign-in is still live (one statement).

    Checked on every operation, so that signing out or being removed bites at once.
    """
    claims = signer.verify(access_token)
    if claims is None:
        return None
    statement = (
        select(User, Membership.organization_id, Membership.role)
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
        .where(User.id == claims.user_id)
    )
    rows = (await session.execute(statement)).all()
    if not rows:
        return None
    roles = {org_id: Role(role) for _, org_id, role in rows if org_id is not None}
    return UserActor(user=rows[0][0], session_id=claims.session_id, roles=roles, ip=ip)
