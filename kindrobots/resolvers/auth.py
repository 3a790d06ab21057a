"""Sign-up, sign-in and session rotation (refresh-token families).

Argon2 is slow on purpose, so hashing and verifying happen in the steps before a
transaction opens (:func:`prepare_sign_up`, :func:`check_password`): no database
connection waits on a hash.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.passwords import hash_password, needs_upgrade, verify_password
from kindrobots.auth.principals import UserActor
from kindrobots.auth.sessions import ACCOUNT_SUSPENDED
from kindrobots.auth.tokens import TokenSigner, hash_token, new_opaque_token
from kindrobots.db.models import AuthSession, RefreshToken, User
from kindrobots.errors import Conflict, Forbidden, Unauthenticated
from kindrobots.resolvers import lockout, security_events, validation
from kindrobots.resolvers.organizations import insert_organization
from kindrobots.security.redaction import register_secret

INVALID_CREDENTIALS = "Invalid email or password."
INVALID_REFRESH = "The session has ended; sign in again."
EMAIL_TAKEN = "An account with this email already exists."


@dataclass(frozen=True)
class Issuer:
    """How sessions are issued: the token signer and the sign-in lifetime."""

    signer: TokenSigner
    refresh_ttl: timedelta


@dataclass(frozen=True)
class Client:
    """Where a sign-in comes from, kept on the session for the account's owner to see."""

    ip: str | None
    user_agent: str | None


@dataclass
class SignedIn:
    access_token: str
    refresh_token: str
    expires_at: datetime
    user: User


@dataclass(frozen=True)
class NewAccount:
    email: str
    password_hash: str
    display_name: str
    organization_name: str


async def prepare_sign_up(
    email: str, password: str, display_name: str, organization_name: str
) -> NewAccount:
    return NewAccount(
        email=validation.email(email),
        password_hash=await hash_password(validation.password(password)),
        display_name=validation.text(display_name, "displayName", 100),
        organization_name=validation.text(organization_name, "organizationName", 100),
    )


async def email_taken(session: AsyncSession, email: str) -> bool:
    return await session.scalar(select(User.id).where(User.email == email)) is not None


async def sign_up(
    session: AsyncSession, now: datetime, issuer: Issuer, client: Client, account: NewAccount
) -> SignedIn:
    """The account, its first organization and its first session.

    Two sign-ups with one email may race past the check; the loser's commit fails on
    the unique email, and the caller answers it with the same CONFLICT.
    """
    if await email_taken(session, account.email):
        raise Conflict(EMAIL_TAKEN)
    user = User(
        email=account.email,
        display_name=account.display_name,
        password_hash=account.password_hash,
    )
    session.add(user)
    await session.flush()
    auth_session = await _new_session(session, now, issuer, client, user)
    actor = UserActor(user=user, session_id=auth_session.id, ip=client.ip)
    await insert_organization(session, actor, now, user, account.organization_name)
    return _issue(session, now, issuer, user, auth_session.id)


async def find_user(session: AsyncSession, email: str) -> User | None:
    email = email.strip().lower()
    if "\x00" in email:
        return None  # no account has it; PostgreSQL would refuse it in a query
    return await session.scalar(select(User).where(User.email == email))


async def check_password(user: User | None, password: str) -> str | None:
    """UNAUTHENTICATED unless ``password`` is the user's; returns an upgraded hash when the
    stored one is of an older scheme. Unknown email and wrong password cost the same hash
    and say the same words."""
    register_secret(password)
    if not await verify_password(user.password_hash if user else None, password):
        raise Unauthenticated(INVALID_CREDENTIALS)
    assert user is not None
    return await hash_password(password) if needs_upgrade(user.password_hash) else None


async def sign_in(
    session: AsyncSession,
    now: datetime,
    issuer: Issuer,
    client: Client,
    user: User,
    upgraded_hash: str | None,
) -> SignedIn:
    """A new session for a user whose password :func:`check_password` accepted; a
    suspended account is told so (staff suspended it: there is nothing to guess)."""
    if user.suspended_at is not None:
        raise Forbidden(ACCOUNT_SUSPENDED)
    user = await session.merge(user, load=False)
    await lockout.reset(session, user)
    if upgraded_hash:
        user.password_hash = upgraded_hash
    auth_session = await _new_session(session, now, issuer, client, user)
    return _issue(session, now, issuer, user, auth_session.id)


async def _new_session(
    session: AsyncSession, now: datetime, issuer: Issuer, client: Client, user: User
) -> AuthSession:
    auth_session = AuthSession(
        user_id=user.id,
        created_at=now,
        expires_at=now + issuer.refresh_ttl,
        ip=client.ip,
        user_agent=(client.user_agent or "")[:255] or None,
    )
    session.add(auth_session)
    await session.flush()
    return auth_session


def _issue(
    session: AsyncSession, now: datetime, issuer: Issuer, user: User, session_id: uuid.UUID
) -> SignedIn:
    refresh = new_opaque_token()
    session.add(RefreshToken(session_id=session_id, token_hash=hash_token(refresh), created_at=now))
    access, expires_at = issuer.signer.issue(user.id, session_id, now)
    return SignedIn(access, refresh, expires_at, user)


async def refresh_session(
    session: AsyncSession,
    now: datetime,
    issuer: Issuer,
    token: str | None,
    ip: str | None = None,
) -> SignedIn | None:
    """Rotate a refresh token. ``None`` means refused after ending the token's whole
    family (a spent token came back) and recording ``refresh_token.reused``: the caller
    commits that, then answers UNAUTHENTICATED and clears the cookies."""
    if not token:
        raise Unauthenticated(INVALID_REFRESH)
    register_secret(token)
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
    if user.suspended_at is not None:
        raise Forbidden(ACCOUNT_SUSPENDED)
    spent = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == stored.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    )
    if spent.rowcount == 1:  # type: ignore[attr-defined]
        return _issue(session, now, issuer, user, auth_session.id)
    await _revoke(session, AuthSession.id == auth_session.id, now, "refresh_reuse")
    await security_events.record(
        session,
        None,
        now,
        security_events.REFRESH_TOKEN_REUSED,
        user_id=user.id,
        ip=ip,
        details={"sessionId": str(auth_session.id)},
    )
    return None


async def _revoke(
    session: AsyncSession, condition: ColumnElement[bool], now: datetime, reason: str
) -> None:
    await session.execute(
        update(AuthSession)
        .where(condition, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )


async def sign_out(
    session: AsyncSession, actor: UserActor | None, now: datetime, refresh_cookie: str | None
) -> uuid.UUID | None:
    """End this session (found by access token or refresh cookie); idempotent. Returns
    the session, for its open connections to be closed."""
    session_id = actor.session_id if actor else None
    if session_id is None and refresh_cookie:
        session_id = await session.scalar(
            select(RefreshToken.session_id).where(
                RefreshToken.token_hash == hash_token(refresh_cookie)
            )
        )
    if session_id is not None:
        await _revoke(session, AuthSession.id == session_id, now, "sign_out")
    return session_id


async def sign_out_everywhere(session: AsyncSession, actor: UserActor, now: datetime) -> bool:
    await _revoke(session, AuthSession.user_id == actor.user.id, now, "sign_out_all")
    return True
