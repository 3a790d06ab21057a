"""Widget authentication: a project key, the page's Origin and, for AUTHENTICATED
projects, the end user's JWT — checked before a widget may chat."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import WidgetActor
from kindrobots.db.enums import AccessMode
from kindrobots.db.models import Organization, Project
from kindrobots.errors import Forbidden, Unauthenticated
from kindrobots.security.jwks import InvalidToken, JwksCache, verify_end_user
from kindrobots.security.origins import origin_allowed

UNAUTHORIZED = 4401
FORBIDDEN = 4403
# Said to the suspended party itself, so that it knows why (sessions say it to members).
ORGANIZATION_SUSPENDED = "This organization is suspended."
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


class WidgetRejected(Exception):
    """Refused before the connection is accepted: 4401 for a bad token, 4403 otherwise.

    The reason names the failed check, never the key or the token.
    """

    def __init__(self, close_code: int, reason: str, public: str | None = None) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason
        # What an HTTP caller is told instead of the generic refusal (a suspension).
        self.public = public

    def close_reason(self) -> bytes:
        """The reason as a WebSocket close reason: UTF-8, cut to fit a close frame."""
        encoded = self.reason.encode()[:MAX_CLOSE_REASON_BYTES]
        return encoded.decode(errors="ignore").encode()

    def as_error(self) -> Forbidden | Unauthenticated:
        if self.close_code == FORBIDDEN:
            return Forbidden(self.public or "This project key or origin is not allowed.")
        return Unauthenticated("The end-user token was refused.")


async def authenticate_widget(
    read: Callable[[], AbstractAsyncContextManager[AsyncSession]],
    jwks: JwksCache,
    *,
    project_key: object,
    origin: str | None,
    token: str | None,
    browser_only: bool,
) -> WidgetActor:
    """Check the project key, the Origin and (AUTHENTICATED projects) the end-user JWT.

    An Origin, when present, must match the project's; without one (a server-side
    client, over HTTP or WebSocket alike) the key and token decide. ``browser_only``
    refuses a missing Origin too.

    The project is read in a session of its own, closed before the token is verified:
    the JWKS may have to be fetched from the customer's server, and no database
    connection waits on that.
    """
    if not isinstance(project_key, str) or not project_key.startswith("pk_"):
        raise WidgetRejected(FORBIDDEN, "missing or malformed project key")
    async with read() as session:
        found = (
            await session.execute(
                select(Project, Organization.suspended_at)
                .join(Organization, Organization.id == Project.organization_id)
                .where(Project.publishable_key == project_key[:64])
            )
        ).first()
    if found is None:
        raise WidgetRejected(FORBIDDEN, "unknown project key")
    project, suspended_at = found
    if suspended_at is not None:
        raise WidgetRejected(FORBIDDEN, ORGANIZATION_SUSPENDED, ORGANIZATION_SUSPENDED)
    if (origin is not None or browser_only) and not origin_allowed(
        origin, list(project.allowed_origins)
    ):
        # The check first: a close reason is cut at 123 bytes, the origin then loses its tail.
        raise WidgetRejected(
            FORBIDDEN, f"origin not allowed for the project: {str(origin)[:100]!r}"
        )
    end_user, expires_at, verified = None, None, None
    if project.access_mode == AccessMode.AUTHENTICATED.value:
        if not token:
            raise WidgetRejected(UNAUTHORIZED, "end-user token missing")
        assert project.jwks_url and project.jwt_issuer and project.jwt_audience
        try:
            user = await verify_end_user(
                token,
                cache=jwks,
                jwks_url=project.jwks_url,
                issuer=project.jwt_issuer,
                audience=project.jwt_audience,
            )
        except InvalidToken as exc:
            raise WidgetRejected(UNAUTHORIZED, f"end-user token refused: {exc.reason}") from None
        end_user, expires_at, verified = user.subject, user.expires_at, token
    return WidgetActor(
        project.id,
        project.organization_id,
        end_user,
        project.publishable_key,
        origin,
        expires_at,
        end_user_token=verified,
    )


def still_allowed(
    actor: WidgetActor, project: Project | None, suspended_at: datetime | None = None
) -> None:
    """What was true when the widget connected must still be true for this message."""
    if project is None or project.publishable_key != actor.project_key:
        raise Forbidden("This project key is no longer valid.")
    if suspended_at is not None:
        raise Forbidden(ORGANIZATION_SUSPENDED)
    if actor.origin is not None and not origin_allowed(actor.origin, list(project.allowed_origins)):
        raise Forbidden("This site is no longer allowed to use this chat.")
    if project.access_mode == AccessMode.AUTHENTICATED.value and actor.end_user is None:
        raise Unauthenticated("This chat now needs a signed-in end user.")
    if actor.expires_at is not None and time.time() >= actor.expires_at:
        raise Unauthenticated("The end-user token has expired.")
