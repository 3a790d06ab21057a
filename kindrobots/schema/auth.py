"""Sessions: sign-up, sign-in, refresh, sign-out, and ``me``."""

from __future__ import annotations

from datetime import datetime

import strawberry

from kindrobots.resolvers import auth, organizations
from kindrobots.resolvers.access import current_viewer
from kindrobots.schema.base import Info
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.organizations import MembershipType
from kindrobots.schema.permissions import IsAuthenticated
from kindrobots.schema.users import UserType


@strawberry.type
class Viewer:
    user: UserType

    @strawberry.field
    async def memberships(self, info: Info) -> list[MembershipType]:
        return [
            MembershipType.from_row(row)
            for row in await organizations.list_memberships(info.context)
        ]


@strawberry.type
class AuthPayload:
    access_token: str
    refresh_token: str
    expires_at: datetime
    user: UserType

    @classmethod
    def from_result(cls, result: auth.SignedIn) -> AuthPayload:
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


@strawberry.type
class AuthQuery:
    @strawberry.field(description="The signed-in caller; null when signed out.")
    async def me(self, info: Info) -> Viewer | None:
        viewer = await current_viewer(info.context)
        return Viewer(user=UserType.from_row(viewer.user)) if viewer else None


@strawberry.type
class AuthMutation:
    @strawberry.mutation(directives=[RateLimit(limit=5, window=3600, per=RateLimitKey.IP)])
    async def sign_up(self, info: Info, input: SignUpInput) -> AuthPayload:
        result = await auth.sign_up(
            info.context, input.email, input.password, input.display_name, input.organization_name
        )
        return AuthPayload.from_result(result)

    @strawberry.mutation(directives=[RateLimit(limit=10, window=60, per=RateLimitKey.IP)])
    async def sign_in(self, info: Info, input: SignInInput) -> AuthPayload:
        return AuthPayload.from_result(
            await auth.sign_in(info.context, input.email, input.password)
        )

    @strawberry.mutation(
        description="Rotate a refresh token (argument or kr_refresh cookie).",
        directives=[RateLimit(limit=30, window=60, per=RateLimitKey.IP)],
    )
    async def refresh_session(self, info: Info, refresh_token: str | None = None) -> AuthPayload:
        return AuthPayload.from_result(await auth.refresh_session(info.context, refresh_token))

    @strawberry.mutation
    async def sign_out(self, info: Info) -> bool:
        return await auth.sign_out(info.context)

    @strawberry.mutation(permission_classes=[IsAuthenticated])
    async def sign_out_everywhere(self, info: Info) -> bool:
        return await auth.sign_out_everywhere(info.context)
