"""Sessions: sign-up, sign-in, refresh, sign-out, and ``me``."""

from __future__ import annotations

from datetime import datetime, timedelta

import strawberry
from sqlalchemy.exc import IntegrityError
from strawberry.scalars import JSON

from kindrobots.auth.principals import UserActor
from kindrobots.db.models import SecurityEvent as SecurityEventRow
from kindrobots.errors import BadUserInput, Conflict, RateLimited, Unauthenticated
from kindrobots.resolvers import auth, containment, lockout, organizations, security_events
from kindrobots.schema.base import Info
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.organizations import MembershipType
from kindrobots.schema.permissions import authenticated, signed_in
from kindrobots.schema.users import UserType


@strawberry.type(name="SecurityEvent")
class SecurityEventType:
    """A security event about the signed-in user's own account."""

    event: str = strawberry.field(
        description="Stable name: signin.failed, signin.locked, account.locked, "
        "refresh_token.reused."
    )
    occurred_at: datetime
    ip: str | None
    details: JSON

    @classmethod
    def from_row(cls, row: SecurityEventRow) -> SecurityEventType:
        return cls(
            event=row.event, occurred_at=row.occurred_at, ip=row.ip, details=JSON(row.details)
        )


@strawberry.type
class Viewer:
    user: UserType
    actor: strawberry.Private[UserActor]

    @strawberry.field
    async def memberships(self, info: Info) -> list[MembershipType]:
        async with info.context.services.read() as session:
            rows = await organizations.list_memberships(session, self.actor)
        return [MembershipType.from_row(row) for row in rows]

    @strawberry.field(description="Your own account's security events, newest first.")
    async def security_events(self, info: Info, first: int = 20) -> list[SecurityEventType]:
        if not 1 <= first <= 100:
            raise BadUserInput("first", "first must be between 1 and 100.")
        async with info.context.services.read() as session:
            rows = await security_events.list_own_events(session, self.actor, first)
        return [SecurityEventType.from_row(row) for row in rows]


@strawberry.type
class AuthPayload:
    access_token: str
    refresh_token: str
    expires_at: datetime
    user: UserType

    @classmethod
    def from_result(cls, info: Info, result: auth.SignedIn) -> AuthPayload:
        info.context.set_session_cookies(result.access_token, result.refresh_token)
        return cls(
            access_token=result.access_token,
            refresh_token=result.refresh_token,
            expires_at=result.expires_at,
            user=UserType.from_row(result.user),
        )


@strawberry.input
class SignUpInput:
    email: str
    password: str
    display_name: str
    organization_name: str


@strawberry.input
class SignInInput:
    email: str
    password: str


def _issuer(info: Info) -> auth.Issuer:
    services = info.context.services
    return auth.Issuer(services.signer, timedelta(seconds=services.settings.refresh_token_ttl))


def _client(info: Info) -> auth.Client:
    return auth.Client(info.context.ip, info.context.user_agent)


@strawberry.type
class AuthQuery:
    @strawberry.field(description="The signed-in caller; null when signed out.")
    async def me(self, info: Info) -> Viewer | None:
        actor = info.context.caller
        if not isinstance(actor, UserActor):
            return None
        return Viewer(user=UserType.from_row(actor.user), actor=actor)


@strawberry.type
class AuthMutation:
    @strawberry.mutation(directives=[RateLimit(limit=5, window=3600, per=RateLimitKey.IP)])
    async def sign_up(self, info: Info, input: SignUpInput) -> AuthPayload:
        services = info.context.services
        account = await auth.prepare_sign_up(
            input.email, input.password, input.display_name, input.organization_name
        )
        try:
            async with services.write() as session:
                result = await auth.sign_up(
                    session, info.now(), _issuer(info), _client(info), account
                )
        except IntegrityError:
            # Two sign-ups with one email raced; the loser hears what it would have heard
            # later. Any other constraint is not the caller's doing: never blame their email.
            async with services.read() as session:
                if not await auth.email_taken(session, account.email):
                    raise
            raise Conflict(auth.EMAIL_TAKEN) from None
        return AuthPayload.from_result(info, result)

    @strawberry.mutation(directives=[RateLimit(limit=10, window=60, per=RateLimitKey.IP)])
    async def sign_in(self, info: Info, input: SignInInput) -> AuthPayload:
        services = info.context.services
        settings = services.settings
        now, ip = info.now(), info.context.ip
        async with services.read() as session:
            user = await auth.find_user(session, input.email)
            gate = await lockout.check(session, now, settings, user, ip)
        if gate.retry_after is not None:
            raise RateLimited(gate.retry_after)
        try:
            # A locked account still costs one hash, and its right password gets the
            # wrong one's answer.
            upgraded = await auth.check_password(user, input.password)
            if gate.locked:
                raise Unauthenticated(auth.INVALID_CREDENTIALS)
        except Unauthenticated:
            # The refusal is counted and recorded in a unit of work of its own.
            async with services.write() as session:
                await lockout.record_failure(session, now, settings, user, ip, locked=gate.locked)
            raise
        assert user is not None
        async with services.write() as session:
            result = await auth.sign_in(
                session, info.now(), _issuer(info), _client(info), user, upgraded
            )
        return AuthPayload.from_result(info, result)

    @strawberry.mutation(
        description="Rotate a refresh token (argument or kr_refresh cookie).",
        directives=[RateLimit(limit=30, window=60, per=RateLimitKey.IP)],
    )
    async def refresh_session(self, info: Info, refresh_token: str | None = None) -> AuthPayload:
        token = refresh_token or info.context.refresh_cookie
        async with info.context.services.write() as session:
            result = await auth.refresh_session(
                session, info.now(), _issuer(info), token, info.context.ip
            )
        if result is None:
            info.context.clear_session_cookies()
            raise Unauthenticated(auth.INVALID_REFRESH)
        return AuthPayload.from_result(info, result)

    @strawberry.mutation
    async def sign_out(self, info: Info) -> bool:
        caller = info.context.caller
        async with info.context.services.write() as session:
            ended = await auth.sign_out(
                session,
                caller if isinstance(caller, UserActor) else None,
                info.now(),
                info.context.refresh_cookie,
            )
        if ended is not None:
            await containment.announce(info.context.services.broker, containment.signed_out(ended))
        info.context.clear_session_cookies()
        return True

    @strawberry.mutation(extensions=authenticated())
    async def sign_out_everywhere(self, info: Info) -> bool:
        async with info.context.services.write() as session:
            await auth.sign_out_everywhere(session, signed_in(info), info.now())
        await containment.announce(
            info.context.services.broker, containment.signed_out_everywhere(signed_in(info).user.id)
        )
        info.context.clear_session_cookies()
        return True
