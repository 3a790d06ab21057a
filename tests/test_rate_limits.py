"""``@rateLimit`` end to end: HTTP 429 + Retry-After, RATE_LIMITED over WebSocket, shared Redis.

Every server here trusts ``X-Forwarded-For`` from 127.0.0.1 and every test calls
from an address block of its own (:func:`fresh_ip`), so the per-IP counters of one
test never meet those of another test, another test run, or another developer on
the same Redis: nothing has to be flushed, and the keys expire by themselves.
Windows are never waited out: on Redis the test moves the stored timestamps of
its own key back by one window; in memory it moves the limiter's clock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from kindrobots.db.models import User
from kindrobots.security import ratelimit
from kindrobots.security.ratelimit import MemoryLimiter, RedisLimiter, address_key
from tests.chat_helpers import CHAT, deploy, widget_socket
from tests.conftest import (
    PASSWORD,
    POSTGRES_URL,
    REDIS_URL,
    SIGN_UP,
    Client,
    Response,
    RunningServer,
    make_settings,
    require_service,
    set_tier,
    sign_up,
    start_server,
    unique_email,
)
from tests.processes import ROOT, instances
from tests.redis_server import own_redis

SIGN_IN = """
mutation($input: SignInInput!) { signIn(input: $input) { accessToken user { email } } }
"""
SEND = "mutation($input: ChatInput!) { sendMessage(input: $input) { content } }"
PLANS = "{ plans { tier chatMessagesPerMinute } }"
ADD_CREDENTIAL = """
mutation($input: AddLlmCredentialInput!) { addLlmCredential(input: $input) { id } }
"""
SIGN_UP_WINDOW = 3600


def fresh_ip() -> str:
    """An address that no other test or test run uses: a unique-local IPv6 address in a
    random /64 (limits count IPv6 callers by /64, so only those bits tell callers apart)."""
    return str(ipaddress.IPv6Address((0xFD << 120) | (random.getrandbits(56) << 64) | 1))


def counted_as(ip: str) -> str:
    """How a per-IP limit names the caller: IPv4 alone, IPv6 by its /64."""
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class ForwardedClient(Client):
    """A client behind the trusted proxy: every request says it comes from ``ip``."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, ip: str) -> None:
        super().__init__(http, base_url, headers={"X-Forwarded-For": ip})
        self.ip = ip


def sign_up_input(email: str) -> dict[str, Any]:
    return {
        "input": {
            "email": email,
            "password": PASSWORD,
            "displayName": "Limited",
            "organizationName": "Limited Inc",
        }
    }


def retry_after(response: Response) -> int:
    """The header and the extension agree; the value of both."""
    (error,) = response.errors
    assert error["extensions"]["code"] == "RATE_LIMITED", response.errors
    header = int(response.headers["Retry-After"])
    assert header == error["extensions"]["retryAfter"]
    return header


@asynccontextmanager
async def limited_server(tmp: Path, **overrides: Any) -> AsyncIterator[RunningServer]:
    """A SQLite server with rate limits on that believes X-Forwarded-For from loopback."""
    settings = make_settings(
        tmp, "sqlite", rate_limits=True, trusted_proxies="127.0.0.1", **overrides
    )
    runner, running = await start_server(settings)
    try:
        yield running
    finally:
        await runner.cleanup()


async def users_named(server: RunningServer, email: str) -> int:
    async with server.services.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(User).where(User.email == email.lower())
        )
    return int(count or 0)


class Clock:
    """The memory limiter's clock, movable: the real monotonic time plus an offset."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


async def age_redis_keys(redis: Redis, pattern: str, seconds: int) -> int:
    """Move every timestamp of the matching sliding logs ``seconds`` into the past."""
    moved = 0
    async for key in redis.scan_iter(match=pattern):
        members = cast("list[tuple[bytes, float]]", await redis.zrange(key, 0, -1, withscores=True))
        if members:
            # Same members, older scores: what the log would hold one window later.
            await redis.zadd(key, {member: score - seconds * 1000 for member, score in members})
            moved += 1
    return moved


@pytest.fixture(params=["memory", "redis"])
def limiter_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        require_service("Redis", REDIS_URL, 6379)
    return str(request.param)


def backend_overrides(backend: str) -> dict[str, Any]:
    return {"redis_url": REDIS_URL} if backend == "redis" else {}


# --- The limit over HTTP and over WebSocket -----------------------------------------------


async def test_the_sixth_sign_up_is_refused_with_429_until_the_window_has_passed(
    limiter_backend: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=clock.monotonic))
    async with limited_server(tmp_path, **backend_overrides(limiter_backend)) as server:
        ip = fresh_ip()
        client = ForwardedClient(http, server.base_url, ip)
        for _ in range(5):
            accepted = await client.execute(SIGN_UP, sign_up_input(unique_email("five")))
            assert (accepted.status, accepted.errors) == (200, [])

        refused_email = unique_email("sixth")
        refused = await client.execute(SIGN_UP, sign_up_input(refused_email))
        assert refused.status == 429
        assert refused.data is None
        assert 0 < retry_after(refused) <= SIGN_UP_WINDOW
        assert await users_named(server, refused_email) == 0

        # Another address has its own allowance; a refused call did not spend any.
        other = ForwardedClient(http, server.base_url, fresh_ip())
        assert (await other.execute(SIGN_UP, sign_up_input(unique_email()))).errors == []
        again = await client.execute(SIGN_UP, sign_up_input(refused_email))
        assert again.status == 429

        # One window later the address may sign up again.
        if limiter_backend == "redis":
            redis = server.services.redis
            assert redis is not None
            assert await age_redis_keys(redis, f"rl:*:ip:{counted_as(ip)}", SIGN_UP_WINDOW) == 1
        else:
            clock.offset += SIGN_UP_WINDOW
        later = await client.execute(SIGN_UP, sign_up_input(refused_email))
        assert (later.status, later.errors) == (200, [])
        assert await users_named(server, refused_email) == 1


async def ws_operation(
    ws: aiohttp.ClientWebSocketResponse, operation_id: str, query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    """One operation over graphql-transport-ws: its ``next`` (or ``error``) frame."""
    await ws.send_json(
        {
            "type": "subscribe",
            "id": operation_id,
            "payload": {"query": query, "variables": variables},
        }
    )
    result: dict[str, Any] | None = None
    while True:
        frame = await ws.receive_json(timeout=10)
        assert frame.get("id") == operation_id, frame
        if frame["type"] == "next":
            result = frame
        elif frame["type"] == "error":
            return dict(frame)
        elif frame["type"] == "complete":
            assert result is not None
            return result


def frame_codes(frame: dict[str, Any]) -> list[str]:
    errors = frame["payload"] if frame["type"] == "error" else frame["payload"].get("errors", [])
    return [error.get("extensions", {}).get("code") for error in errors]


async def test_rate_limited_over_websocket_and_the_connection_stays_open(
    limiter_backend: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with limited_server(tmp_path, **backend_overrides(limiter_backend)) as server:
        ip = fresh_ip()
        account = await sign_up(ForwardedClient(http, server.base_url, fresh_ip()))
        credentials = {"input": {"email": account.email, "password": PASSWORD}}
        async with http.ws_connect(
            server.ws_url, protocols=["graphql-transport-ws"], headers={"X-Forwarded-For": ip}
        ) as ws:
            await ws.send_json({"type": "connection_init", "payload": {}})
            assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
            for number in range(10):
                frame = await ws_operation(ws, f"in-{number}", SIGN_IN, credentials)
                assert frame["payload"]["data"]["signIn"]["user"]["email"] == account.email

            refused = await ws_operation(ws, "eleventh", SIGN_IN, credentials)
            assert frame_codes(refused) == ["RATE_LIMITED"]
            (error,) = refused["payload"]["errors"]
            assert 0 < error["extensions"]["retryAfter"] <= 60

            # The refusal is an operation result: the connection goes on serving.
            plans = await ws_operation(ws, "after", PLANS, {})
            assert [plan["tier"] for plan in plans["payload"]["data"]["plans"]] == [
                "STARTER",
                "PROFESSIONAL",
                "ENTERPRISE",
            ]
            assert not ws.closed

        # Over HTTP the same address is refused too: one limit, whatever the transport.
        over_http = await ForwardedClient(http, server.base_url, ip).execute(SIGN_IN, credentials)
        assert over_http.status == 429


# --- Plans: the project chat limit follows the organization's tier -----------------------


async def test_upgrading_the_tier_raises_the_project_chat_limit_without_a_restart(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    require_service("Redis", REDIS_URL, 6379)
    async with limited_server(tmp_path, redis_url=REDIS_URL) as server:
        client = ForwardedClient(http, server.base_url, fresh_ip())
        account = await sign_up(client)
        shop = await deploy(client, account)
        plans = {
            p["tier"]: p["chatMessagesPerMinute"]
            for p in (await client.execute(PLANS)).data["plans"]
        }
        assert (plans["STARTER"], plans["PROFESSIONAL"]) == (20, 120)
        project = {"X-Project-Key": shop.project_key}

        for number in range(20):
            sent = await client.execute(SEND, {"input": {"message": f"m{number}"}}, headers=project)
            assert (sent.status, sent.errors) == (200, []), sent.errors
        refused = await client.execute(SEND, {"input": {"message": "21st"}}, headers=project)
        assert refused.status == 429
        assert 0 < retry_after(refused) <= 60

        # The plan counts a project's chat messages, whichever way they come: the widget's
        # chat subscription draws on the same 20 per minute.
        async with widget_socket(http, server, shop.project_key) as ws:
            widget = await ws_operation(ws, "chat", CHAT, {"input": {"message": "from widget"}})
            assert frame_codes(widget) == ["RATE_LIMITED"]

            await set_tier(server, account.organization_id, "PROFESSIONAL")

            # No restart: the very next message is measured against Professional's 120.
            upgraded = await client.execute(SEND, {"input": {"message": "pro"}}, headers=project)
            assert (upgraded.status, upgraded.errors) == (200, []), upgraded.errors
            assert upgraded.data["sendMessage"]["content"] == "You said: pro"
            widget = await ws_operation(ws, "chat-2", CHAT, {"input": {"message": "pro widget"}})
            assert frame_codes(widget) == [], widget

        await set_tier(server, account.organization_id, "STARTER")
        downgraded = await client.execute(SEND, {"input": {"message": "back"}}, headers=project)
        assert downgraded.status == 429


# --- Callers who are refused anyway spend nobody's allowance -----------------------------


async def test_calls_refused_by_permission_do_not_spend_an_organizations_limit(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """addLlmCredential allows 10 a minute per organization, counted only for its admins."""
    async with limited_server(tmp_path) as server:
        owner_client = ForwardedClient(http, server.base_url, fresh_ip())
        owner = await sign_up(owner_client)
        stranger_client = ForwardedClient(http, server.base_url, fresh_ip())
        stranger = await sign_up(stranger_client)
        variables = {
            "input": {
                "organizationId": owner.organization_id,
                "provider": "OPENAI",
                "apiKey": "sk-not-a-real-key-0000",
                "label": "Stolen slot",
            }
        }
        for _ in range(12):
            anonymous = await stranger_client.execute(ADD_CREDENTIAL, variables)
            assert anonymous.codes == ["UNAUTHENTICATED"]
            foreign = await stranger_client.execute(
                ADD_CREDENTIAL, variables, token=stranger.access_token
            )
            assert foreign.codes in (["NOT_FOUND"], ["FORBIDDEN"])

        for _ in range(10):
            added = await owner_client.execute(ADD_CREDENTIAL, variables, token=owner.access_token)
            assert (added.status, added.errors) == (200, []), added.errors
        eleventh = await owner_client.execute(ADD_CREDENTIAL, variables, token=owner.access_token)
        assert eleventh.codes == ["RATE_LIMITED"] and eleventh.status == 429


# --- Two processes, one Redis ------------------------------------------------------------


# Limits on, behind the trusted proxy on loopback, as every server of this module.
LIMITED_PROCESS = {"KR_RATE_LIMITS": "true", "KR_TRUSTED_PROXIES": "127.0.0.1"}


async def test_two_processes_on_one_redis_share_the_limit_exactly(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    require_service("Redis", REDIS_URL, 6379)
    async with instances(http, tmp_path, LIMITED_PROCESS, cwd=ROOT) as (a, b):
        ip = fresh_ip()
        clients = [ForwardedClient(http, a.base_url, ip), ForwardedClient(http, b.base_url, ip)]

        # Alternating, one after another: the sixth is refused whichever process takes it.
        sequential = [
            await clients[number % 2].execute(SIGN_UP, sign_up_input(unique_email()))
            for number in range(8)
        ]
        assert [response.status for response in sequential] == [200] * 5 + [429] * 3
        assert all(response.codes == ["RATE_LIMITED"] for response in sequential[5:])

        # All at once, on both processes: still exactly five (one atomic check in Redis).
        burst_ip = fresh_ip()
        burst = [
            ForwardedClient(http, a.base_url, burst_ip),
            ForwardedClient(http, b.base_url, burst_ip),
        ]
        responses = await asyncio.gather(
            *(burst[n % 2].execute(SIGN_UP, sign_up_input(unique_email())) for n in range(12))
        )
        statuses = sorted(response.status for response in responses)
        assert statuses == [200] * 5 + [429] * 7, [r.body for r in responses]


# --- Redis going away and coming back ---------------------------------------------------


FAILURES = re.compile(
    r'^kindrobots_rate_limit_backend_failures_total\{policy="(\w+)"\} ([0-9.e+]+)$', re.M
)


async def backend_failures(
    http: aiohttp.ClientSession, server: RunningServer, policy: str
) -> float:
    async with http.get(f"{server.base_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    counts = {match[1]: float(match[2]) for match in FAILURES.finditer(text)}
    return counts.get(policy, 0.0)


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_redis_outage_follows_the_failure_policy_and_limits_resume(
    policy: str, tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        own_redis(tmp_path) as redis,
        limited_server(tmp_path, redis_url=redis.url, rate_limit_failure=policy) as server,
    ):
        ip = fresh_ip()
        client = ForwardedClient(http, server.base_url, ip)
        up = await client.execute(SIGN_UP, sign_up_input(unique_email()))
        assert (up.status, up.errors) == (200, [])
        before = await backend_failures(http, server, policy)

        await redis.kill()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kindrobots.ratelimit"):
            during = [
                await client.execute(SIGN_UP, sign_up_input(unique_email())) for _ in range(6)
            ]
        if policy == "open":
            # Served without a limit (six more than the five allowed), and said so.
            assert [(r.status, r.errors) for r in during] == [(200, [])] * 6
        else:
            assert [r.status for r in during] == [429] * 6
            assert all(retry_after(r) == 1 for r in during)
        # Every failed check is counted; the log says so once, with the cause, not six times.
        assert await backend_failures(http, server, policy) == before + 6
        (warning,) = limiter_warnings(caplog)
        assert f"backend unreachable; failing {policy}" in warning.getMessage()
        assert "ConnectionError" in (warning.exc_text or "")

        # The server itself keeps answering: health, and fields without a limit.
        async with http.get(f"{server.base_url}/healthz") as health:
            assert health.status == 200
        async with http.get(f"{server.base_url}/readyz") as ready:
            assert ready.status == 503
        plans = await client.execute(PLANS)
        assert (plans.status, plans.errors) == (200, [])

        # Redis back on the same port (empty: no persistence) — the limits count again.
        await redis.start()
        caplog.clear()
        fresh = ForwardedClient(http, server.base_url, fresh_ip())
        with caplog.at_level(logging.WARNING, logger="kindrobots.ratelimit"):
            resumed = [
                await fresh.execute(SIGN_UP, sign_up_input(unique_email())) for _ in range(6)
            ]
        assert [r.status for r in resumed] == [200] * 5 + [429]
        assert resumed[-1].codes == ["RATE_LIMITED"]
        (recovered,) = limiter_warnings(caplog)
        assert "reachable again after 6 failed checks" in recovered.getMessage()
        assert await backend_failures(http, server, policy) == before + 6


def limiter_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "kindrobots.ratelimit" and record.levelno == logging.WARNING
    ]


# --- The limiters themselves ------------------------------------------------------------


async def test_redis_limiter_is_atomic_under_concurrency() -> None:
    require_service("Redis", REDIS_URL, 6379)
    redis = Redis.from_url(REDIS_URL)
    try:
        limiter = RedisLimiter(redis, "closed")
        key = f"rl:test.atomic:IP:ip:{fresh_ip()}"
        decisions = await asyncio.gather(*(limiter.hit(key, 5, 60) for _ in range(40)))
        assert sum(decision.allowed for decision in decisions) == 5
        assert sorted(d.remaining for d in decisions if d.allowed) == [0, 1, 2, 3, 4]
        assert all(0 < d.retry_after <= 60 for d in decisions if not d.allowed)
        assert 0 < await redis.pttl(key) <= 60_000
        await redis.delete(key)
    finally:
        await redis.aclose()


async def test_memory_limiter_slides_and_forgets(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=clock.monotonic))
    limiter = MemoryLimiter(max_keys=2)
    assert [(await limiter.hit("a", 2, 10)).allowed for _ in range(3)] == [True, True, False]
    clock.offset += 5
    refused = await limiter.hit("a", 2, 10)
    assert not refused.allowed and 0 < refused.retry_after <= 5
    clock.offset += 5
    assert (await limiter.hit("a", 2, 10)).allowed
    # A key with nothing inside its window is forgotten when room is needed.
    clock.offset += 20
    assert (await limiter.hit("b", 1, 10)).allowed
    assert (await limiter.hit("c", 1, 10)).allowed
    assert set(limiter._logs) == {"b", "c"}


async def test_memory_limiter_stays_bounded_under_a_flood_of_live_keys() -> None:
    limiter = MemoryLimiter(max_keys=100)
    for number in range(1_000):
        assert (await limiter.hit(f"flood:{number}", 5, 3600)).allowed
        assert len(limiter._logs) <= 100
    # The newest callers are still counted.
    for _ in range(4):
        await limiter.hit("flood:999", 5, 3600)
    assert not (await limiter.hit("flood:999", 5, 3600)).allowed


@pytest.mark.parametrize(
    ("ip", "counted"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        (None, "unknown"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_addresses_are_counted_as_ipv4_or_ipv6_slash_64(ip: str | None, counted: str) -> None:
    assert address_key(ip) == counted


async def test_rotating_addresses_inside_one_ipv6_slash_64_gains_nothing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with limited_server(tmp_path) as server:
        block = ipaddress.ip_network(counted_as(fresh_ip()))
        for number in range(1, 6):
            client = ForwardedClient(http, server.base_url, str(block[number]))
            accepted = await client.execute(SIGN_UP, sign_up_input(unique_email()))
            assert (accepted.status, accepted.errors) == (200, [])
        rotated = ForwardedClient(http, server.base_url, str(block[2**63 + 12345]))
        refused = await rotated.execute(SIGN_UP, sign_up_input(unique_email()))
        assert refused.status == 429
        neighbour = ipaddress.ip_network(f"{block.network_address + 2**64}/64")
        elsewhere = ForwardedClient(http, server.base_url, str(neighbour[1]))
        assert (await elsewhere.execute(SIGN_UP, sign_up_input(unique_email()))).errors == []


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_limit_of_zero_refuses_every_call(backend: str) -> None:
    if backend == "redis":
        require_service("Redis", REDIS_URL, 6379)
        redis = Redis.from_url(REDIS_URL)
        limiter: MemoryLimiter | RedisLimiter = RedisLimiter(redis, "open")
    else:
        limiter = MemoryLimiter()
    try:
        decision = await limiter.hit(f"rl:test.zero:IP:ip:{fresh_ip()}", 0, 60)
        assert (decision.allowed, decision.remaining) == (False, 0)
        assert 0 < decision.retry_after <= 60
    finally:
        if backend == "redis":
            await redis.aclose()


# --- The benchmark runs ------------------------------------------------------------------


def test_the_benchmark_runs_in_quick_mode() -> None:
    """Only that it runs and reports its ratios: no timing is asserted."""
    require_service("Redis", REDIS_URL, 6379)
    result = subprocess.run(  # noqa: S603 - our own bench script
        [sys.executable, "bench/ratelimit.py", "--quick", "--redis-url", REDIS_URL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ratios = dict(re.findall(r"^ratio (.+): ([0-9.]+)$", result.stdout, re.M))
    assert {
        "redis/in-process checks/s",
        "limited/unlimited query latency (in-process)",
        "limited/unlimited query latency (redis)",
        "limited/unlimited http latency (in-process)",
        "limited/unlimited http latency (redis)",
    } <= set(ratios), result.stdout
    assert all(float(value) > 0 for value in ratios.values()), result.stdout
