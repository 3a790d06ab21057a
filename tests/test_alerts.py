"""Alerts: a threshold crossed is one ERROR line and one POST per window, after commit,
on every instance together (Redis) -- all on a driven clock."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kindrobots.config import Settings
from kindrobots.metrics import Metrics
from kindrobots.resolvers import security_events
from kindrobots.security.alerts import Alerts
from tests.conftest import REDIS_URL, RunningServer, backend_server, require_service
from tests.fake_stripe import event
from tests.org_helpers import quick_account, raw_id
from tests.processes import free_port
from tests.servers import serving


@dataclass
class Receiver:
    port: int = 0
    posts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/alerts"

    def alerts(self) -> list[str]:
        return [post["alert"] for post in self.posts]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    record = Receiver()

    async def hook(request: web.Request) -> web.Response:
        record.posts.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks/alerts", hook)
    async with serving(app) as record.port:
        yield record


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def alert_settings(base: Settings, receiver: Receiver, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "alert_webhook_url": receiver.url,
        "outbound_allow": (f"127.0.0.1:{receiver.port}",),
        "alert_signin_failures": 3,
        **overrides,
    }
    return base.model_copy(update=values)


def sessions(server: RunningServer, alerts: Alerts) -> async_sessionmaker[AsyncSession]:
    """Write sessions like the server's, handing their committed events to ``alerts``."""
    return async_sessionmaker(
        server.services.engine,
        expire_on_commit=False,
        info={security_events.ALERTS_KEY: alerts},
    )


async def failures(session: AsyncSession, count: int) -> None:
    for _ in range(count):
        await security_events.record(
            session, None, datetime.now(UTC), security_events.SIGNIN_FAILED, ip="192.0.2.1"
        )


def alert_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno == logging.ERROR and getattr(record, "alert", None) == name
    ]


async def test_a_threshold_fires_once_per_window_after_commit(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    alerts = Alerts(alert_settings(server.settings, receiver), Metrics(), clock=clock)
    maker = sessions(server, alerts)
    try:
        # Rolled back: the failures never happened, nothing fires.
        async with maker() as session:
            await session.begin()
            await failures(session, 5)
            await session.rollback()
        await alerts.drain()
        assert receiver.posts == [] and alert_lines(caplog, "signin_failures") == []
        async with maker() as session, session.begin():
            await failures(session, 3)
        await alerts.drain()
        assert receiver.alerts() == ["signin_failures"]
        assert receiver.posts[0]["count"] == 3 and receiver.posts[0]["threshold"] == 3
        assert len(alert_lines(caplog, "signin_failures")) == 1
        # Within the minute: more failures, no second alert.
        clock.now += 30
        async with maker() as session, session.begin():
            await failures(session, 10)
        await alerts.drain()
        assert receiver.alerts() == ["signin_failures"]
        # After the window it fires again.
        clock.now += 31
        async with maker() as session, session.begin():
            await failures(session, 3)
        await alerts.drain()
        assert receiver.alerts() == ["signin_failures", "signin_failures"]
        assert len(alert_lines(caplog, "signin_failures")) == 2
    finally:
        await alerts.close()


async def test_budget_exhaustion_alerts_per_organization(
    server: RunningServer, receiver: Receiver
) -> None:
    clock = Clock()
    alerts = Alerts(alert_settings(server.settings, receiver), Metrics(), clock=clock)
    maker = sessions(server, alerts)
    first, second = [
        raw_id((await quick_account(server)).organization_id, "Organization") for _ in range(2)
    ]
    try:
        # The rule that records budget.exhausted lives elsewhere: any `record` call alerts.
        for organization in (first, first, second):
            async with maker() as session, session.begin():
                await security_events.record(
                    session,
                    None,
                    datetime.now(UTC),
                    "budget.exhausted",
                    organization_id=organization,
                )
        await alerts.drain()
        assert receiver.alerts() == ["budget_exhausted", "budget_exhausted"]
        assert [post["organizationId"] for post in receiver.posts] == [str(first), str(second)]
    finally:
        await alerts.close()


async def test_the_upstream_error_rate_alerts_once_enough_requests_fail(
    receiver: Receiver,
) -> None:
    base = Settings.model_construct(env="development")
    settings = alert_settings(
        base, receiver, alert_upstream_min_requests=4, alert_upstream_error_rate=0.5
    )
    alerts = Alerts(settings, Metrics(), clock=Clock())
    try:
        for ok in (True, True, True, False, False):
            alerts.upstream(ok)
        await alerts.drain()
        assert receiver.posts == []  # 2 of 5 failed: under half
        alerts.upstream(False)
        alerts.upstream(False)
        await alerts.drain()
        assert receiver.alerts() == ["upstream_errors"]
        assert receiver.posts[0]["rate"] == 0.5 and receiver.posts[0]["requests"] == 6
    finally:
        await alerts.close()


async def test_two_instances_on_one_redis_post_once(receiver: Receiver) -> None:
    require_service("Redis", REDIS_URL, 6379)
    redis = Redis.from_url(REDIS_URL)
    prefix = f"kr:test-alert:{secrets.token_hex(6)}"
    settings = alert_settings(Settings.model_construct(env="development"), receiver)
    clock = Clock()
    one, two = (
        Alerts(settings, Metrics(), redis, clock=clock, prefix=prefix),
        Alerts(settings, Metrics(), redis, clock=clock, prefix=prefix),
    )
    try:
        # Sign-in failures counted across instances: 2 here and 1 there cross 3.
        one.observe("signin.failed", None)
        two.observe("signin.failed", None)
        await one.drain()
        await two.drain()
        assert receiver.posts == []
        one.observe("signin.failed", None)
        two.observe("signin.failed", None)
        await one.drain()
        await two.drain()
        assert receiver.alerts() == ["signin_failures"]
        one.observe("refresh_token.reused", None)
        two.observe("refresh_token.reused", None)
        await one.drain()
        await two.drain()
        assert receiver.alerts() == ["signin_failures", "refresh_token_reuse"]
        clock.now += 301
        two.observe("refresh_token.reused", None)
        await two.drain()
        assert receiver.alerts()[-1] == "refresh_token_reuse" and len(receiver.posts) == 3
        # Redis gone: alerts still fire, counted and latched in each process.
        gone = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
        alone = Alerts(settings, Metrics(), gone, clock=clock, prefix=prefix)
        alone.observe("refresh_token.reused", None)
        await alone.drain()
        await alone.close()
        await gone.aclose()
        assert len(receiver.posts) == 4
    finally:
        await one.close()
        await two.close()
        async for key in redis.scan_iter(f"{prefix}:*"):
            await redis.delete(key)
        await redis.aclose()


async def test_a_failed_post_is_logged_without_the_url(
    caplog: pytest.LogCaptureFixture, receiver: Receiver
) -> None:
    closed = free_port()
    secret_url = f"http://127.0.0.1:{closed}/hook?token=s3cret-alert-token"
    settings = Settings.model_construct(env="development").model_copy(
        update={
            "alert_webhook_url": secret_url,
            "outbound_allow": (f"127.0.0.1:{closed}",),
            "alert_refresh_token_reuse": 1,
        }
    )
    alerts = Alerts(settings, Metrics(), clock=Clock())
    try:
        alerts.observe("refresh_token.reused", None)
        await alerts.drain()
    finally:
        await alerts.close()
    assert len(alert_lines(caplog, "refresh_token_reuse")) == 1
    failed = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert failed == [
        "alert refresh_token_reuse not delivered, POST failed (The server could not be reached.)"
    ]
    assert not any("s3cret" in r.getMessage() for r in caplog.records)


async def test_webhook_signature_failures_over_http_raise_one_alert(
    backend: str, tmp_path: Path, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    async with backend_server(
        tmp_path,
        backend,
        stripe_secret_key=f"sk_test_{secrets.token_hex(8)}",
        stripe_webhook_secret=f"whsec_{secrets.token_hex(8)}",
        stripe_api_base="http://127.0.0.1:9",
        alert_webhook_url=receiver.url,
        outbound_allow=f"127.0.0.1:{receiver.port}",
        alert_webhook_signature_failures=2,
    ) as server:
        for _ in range(4):
            async with http.post(
                f"{server.base_url}/webhooks/stripe",
                data=event("invoice.paid", {"id": "in_1"}),
                headers={"Stripe-Signature": "t=1,v1=forged"},
            ) as response:
                assert response.status == 400
        assert server.services.refusals is not None and server.services.alerts is not None
        await server.services.refusals.drain()
        await server.services.alerts.drain()
        assert receiver.alerts() == ["webhook_signature_failures"]
        assert receiver.posts[0]["count"] == 2
