"""Sign-up, sign-in and session rotation (refresh-token families)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.passwords import hash_password, needs_upgrade, verify_password
from kindrobots.auth.tokens import hash_token, new_opaque_token
from kindrobots.context import RequestContext
from kindrobots.db.models import AuthSession, RefreshToken, User
from kindrobots.resolvers import validation
from kindrobots.resolvers.access import current_viewer, require_viewer
from kindrobots.resolvers.organizations import insert_organization
from kindrobots.security.errors import Conflict, Unauthenticated
from kindrobots.security.redaction import register_secret

INVALID_CREDENTIALS = "Invalid email or password."
INVALID_REFRESH = "The session has ended; sign in again."


@dataclass
class SignedIn:
    access_token: str
    refresh_token: str
    expires_at: datetime
    user: User


async def _start_session(session: AsyncSession, ctx: RequestContext, user: User) -> SignedIn:
    now = ctx.now()
    auth_session = AuthSession(
        user_id=user.id,
        created_at=now,
        expires_at=now + ctx.refresh_expiry(),
        ip=ctx.ip,
        user_agent=(ctx.user_agent or "")[:255] or None,
    )
    session.add(auth_session)
    await session.flush()
    return _issue(session, ctx, user, auth_session.id)


def _issue(
    session: AsyncSession, ctx: RequestContext, user: User, session_id: uuid.UUID
) -> SignedIn:
    refresh = new_opaque_token()
    session.add(
        RefreshToken(session_id=session_id, token_hash=hash_token(refresh), created_at=ctx.now())
    )
    access, expires_at = ctx.services.signer.issue(user.id, session_id, ctx.now())
    ctx.set_session_cookies(access, refresh)
    return SignedIn(access, refresh, expires_at, user)


async def sign_up(
    ctx: RequestContext, email: str, password: str, display_name: str, organization_name: str
) -> SignedIn:
    email = validation.email(email)
    password = validation.password(password)
    display_name = validation.text(display_name, "displayName", 100)
    organization_name = validation.text(organization_name, "organizationName", 100)
    password_hash = await hash_password(password)
    try:
        async with ctx.services.write() as session:
            if await session.scalar(select(User.id).where(User.email == email)):
                raise Conflict("An account with this email already exists.")
            user = User(email=email, display_name=display_name, password_hash=password_hash)
            session.add(user)
            await session.flush()
            await insert_organization(session, ctx, user, organization_name)
            return await _start_session(session, ctx, user)
    except IntegrityError:
        # Two sign-ups with one email raced; the loser hears what it would have heard later.
        # Any other constraint is not the caller's doing: never blame their email for it.
        async with ctx.services.read() as session:
            if await session.scalar(select(User.id).where(User.email == email)) is None:
                raise
        raise Conflict("An account with this email already exists.") from None


async def sign_in(ctx: RequestContext, email: str, password: str) -> SignedIn:
    register_secret(password)
    email = email.strip().lower()
    async with ctx.services.read() as session:
        user = await session.scalar(select(User).where(User.email == email))
    # Unknown email and wrong password cost the same hash and say the same words.
    # Hashing happens outside any transaction: no connection waits on Argon2.
    if not await verify_password(user.password_hash if user else None, password):
        raise Unauthenticated(INVALID_CREDENTIALS)
    assert user is not None
    upgraded = await hash_password(password) if needs_upgrade(user.password_hash) else None
    async with ctx.services.write() as session:
        user = await session.merge(user)
        if upgraded:
            user.password_hash = upgraded
        return await _start_session(session, ctx, user)


async def refresh_session(ctx: RequestContext, refresh_token: str | None) -> SignedIn:
    token = refresh_token or ctx.refresh_cookie
    if not token:
        raise Unauthenticated(INVALID_REFRESH)
    register_secret(token)
    now = ctx.now()
    async with ctx.services.write() as session:
        row = (
            await session.execute(
                select(RefreshToken, AuthSession, User)
                .join(AuthSession, AuthSession.id == RefreshToken.session_id)
                .join(User, User.id == AuthSession.user_id)
                .where(RefreshToken.token_hash == hash_token(token))
                .with_for_update(of=RefreshToken)
            )
        ).first()
        if row is None:
            raise Unauthenticated(INVALID_REFRESH)
        stored, auth_session, user = row
        if auth_session.revoked_at is not None or auth_session.expires_at <= now:
            raise Unauthenticated(INVALID_REFRESH)
        spent = await session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == stored.id, RefreshToken.used_at.is_(None))
            .values(used_at=now)
        )
        if spent.rowcount == 1:  # type: ignore[attr-defined]
            return _issue(session, ctx, user, auth_session.id)
        # A spent token came back: someone holds a copy. End the whole family.
        await _revoke(session, AuthSession.id == auth_session.id, now, "refresh_reuse")
    ctx.clear_session_cookies()
    raise Unauthenticated(INVALID_REFRESH)


async def _revoke(session: AsyncSession, condition: object, now: datetime, reason: str) -> None:
    await session.execute(
        update(AuthSession)
        .where(condition, AuthSession.revoked_at.is_(None))  # type: ignore[arg-type]
        .values(revoked_at=now, revoked_reason=reason)
    )


async def sign_out(ctx: RequestContext) -> bool:
    """End this session (found by access token or refresh cookie); idempotent."""
    viewer = await current_viewer(ctx)
    session_id = viewer.session_id if viewer else None
    async with ctx.services.write() as session:
        if session_id is None and ctx.refresh_cookie:
            session_id = await session.scalar(
                select(RefreshToken.session_id).where(
                    RefreshToken.token_hash == hash_token(ctx.refresh_cookie)
                )
            )
        if session_id is not None:
            await _revoke(session, AuthSession.id == session_id, ctx.now(), "sign_out")
    ctx.clear_session_cookies()
    return True


async def sign_out_everywhere(ctx: RequestContext) -> bool:
    viewer = await require_viewer(ctx)
    async with ctx.services.write() as session:
        await _revoke(session, AuthSession.user_id == viewer.user.id, ctx.now(), "sign_out_all")
    ctx.clear_session_cookies()
    return True
