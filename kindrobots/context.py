"""What a GraphQL field sees: the process's services and the caller of one request.

Only the schema layer (the adapters) reads this; business rules in ``resolvers``
take a session, an actor and the time instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kindrobots.auth.principals import Actor
from kindrobots.auth.tokens import TokenSigner
from kindrobots.auth.widgets import WidgetRejected
from kindrobots.billing.stripe_client import StripeGateway
from kindrobots.broker import Broker
from kindrobots.config import Settings
from kindrobots.metrics import Metrics
from kindrobots.security.alerts import Alerts
from kindrobots.security.connections import Closable, ConnectionLimits, LiveConnections, Slot
from kindrobots.security.crypto import KeyRing
from kindrobots.security.events import Refusals
from kindrobots.security.jwks import JwksCache
from kindrobots.security.ratelimit import Limiter

if TYPE_CHECKING:
    from redis.asyncio import Redis

AuthSource = Literal["bearer", "cookie", "connection"]


@dataclass
class Services:
    """Built once per process by the app factory."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    # Write transactions (``write()``): on SQLite they take the write lock at BEGIN.
    writer: async_sessionmaker[AsyncSession]
    signer: TokenSigner
    keyring: KeyRing
    # Live feeds (conversationEvents) open on this instance, per user and organization.
    feeds: ConnectionLimits
    broker: Broker
    limiter: Limiter
    jwks: JwksCache
    redis: Redis | None = None
    # The Stripe client; None while billing is off (no KR_STRIPE_* settings).
    stripe: StripeGateway | None = None
    # This app's metrics (served at /metrics), alert engine and throttled refusal events.
    metrics: Metrics = field(default_factory=Metrics)
    alerts: Alerts | None = None
    refusals: Refusals | None = None

    def refused(
        self,
        event: str,
        *,
        source: str,
        ip: str | None,
        details: dict[str, Any],
        user_id: uuid.UUID | None = None,
    ) -> None:
        """A refusal worth a security event, throttled (``security.events.Refusals``)."""
        if self.refusals is not None:
            self.refusals.refused(event, source=source, ip=ip, details=details, user_id=user_id)

    # Open WebSockets of this instance, for containment to close (server.contain).
    live: LiveConnections = field(default_factory=LiveConnections)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A short session for reads. Sibling resolvers run concurrently, so none is shared."""
        async with self.sessionmaker() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction: the change and its audit event commit together or not at all."""
        async with self.writer() as session, session.begin():
            yield session


@dataclass
class Cookie:
    name: str
    value: str
    max_age: int
    same_site: Literal["Lax", "Strict"]
    path: str = "/"


@dataclass
class RequestContext:
    services: Services
    ip: str | None
    user_agent: str | None
    access_token: str | None = None
    refresh_cookie: str | None = None
    auth_source: AuthSource | None = None
    connection_params: dict[str, Any] | None = None
    origin: str | None = None
    # Who is calling, as of the current operation: set when each operation begins
    # (schema.callers.identify), since a session may end while a WebSocket stays open.
    caller: Actor | None = None
    # A widget's refusal at authentication, kept to answer its fields with the reason.
    widget_refusal: WidgetRejected | None = None
    # WebSocket only: close the connection with a protocol close code (4401, 4403).
    close_connection: Callable[..., Awaitable[Any]] | None = None
    # WebSocket only: the connection's claims on the per-IP and per-project limits.
    connection_slot: Slot | None = None
    # WebSocket only: the connection, as indexed in ``Services.live``.
    websocket: Closable | None = None
    # Set by the transport: HTTP writes Set-Cookie headers, a WebSocket cannot and ignores them.
    cookie_sink: Callable[[list[Cookie]], None] | None = None
    # Per-operation caches (schema.loaders), emptied when an operation begins.
    loader_cache: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def now(self) -> datetime:
        return datetime.now(UTC)

    def set_session_cookies(self, access: str, refresh: str) -> None:
        self._send_cookies(
            [
                Cookie("kr_access", access, self.settings.access_token_ttl, "Lax"),
                Cookie(
                    "kr_refresh", refresh, self.settings.refresh_token_ttl, "Strict", "/graphql"
                ),
            ]
        )

    def clear_session_cookies(self) -> None:
        self._send_cookies(
            [Cookie("kr_access", "", 0, "Lax"), Cookie("kr_refresh", "", 0, "Strict", "/graphql")]
        )

    def _send_cookies(self, cookies: list[Cookie]) -> None:
        if self.cookie_sink is not None:
            self.cookie_sink(cookies)

    def refresh_expiry(self) -> timedelta:
        return timedelta(seconds=self.settings.refresh_token_ttl)
