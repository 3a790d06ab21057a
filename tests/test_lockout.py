"""Account lockout and security events (issue 11, items 2 and 3), on both databases.

The rules take ``now``: lock expiry, slow-down and retention are driven by the clock
passed in, or by moving the stored timestamps back, never by sleeping.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import func, select, update

from kindrobots.config import Settings
from kindrobots.db.models import SecurityEvent, SignInThrottle, User
from kindrobots.ids import from_global_id
from kindrobots.resolvers import lockout, security_events
from tests.conftest import (
    PASSWORD,
    Account,
    Client,
    Response,
    RunningServer,
    backend_server,
    sign_up,
    unique_email,
)

SIGN_IN = """
mutation SignIn($input: SignInInput!) {
  signIn(input: $input) { accessToken refreshToken expiresAt user { id email } }
}
"""
REFRESH = """
mutation Refresh($token: String) { refreshSession(refreshToken: $token) { refreshToken } }
"""
MY_EVENTS = "{ me { securityEvents(first: 50) { event occurredAt ip details } } }"
WRONG = "not the password at all"


@pytest_asyncio.fixture(scope="module")
async def locking_server(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    """Slow-down off and a roomy per-address limit: every request here comes from
    127.0.0.1, and the slow-down has its own clock-driven tests of the rules."""
    async with backend_server(
        tmp_path_factory.mktemp(f"lockout-{backend}"),
        backend,
        lockout_slowdown_after=1000,
        lockout_ip_threshold=100000,
    ) as running:
        yield running


@pytest.fixture
def locking(locking_server: RunningServer, http: aiohttp.ClientSession) -> Client:
    return Client(http, locking_server.base_url)


async def sign_in(client: Client, email: str, password: str) -> Response:
    return await client.execute(SIGN_IN, {"input": {"email": email, "password": password}})


def _user_id(account: Account) -> uuid.UUID:
    return from_global_id(account.user_id, "User")


async def _my_events(client: Client, account: Account) -> list[dict[str, Any]]:
    response = await client.execute(MY_EVENTS, token=account.access_token)
    assert response.errors == [], response.errors
    return list(response.data["me"]["securityEvents"])


async def _fail(client: Client, email: str, times: int) -> Response:
    response = None
    for _ in range(times):
        response = await sign_in(client, email, WRONG)
        assert response.codes == ["UNAUTHENTICATED"], response.body
    assert response is not None
    return response


async def test_twenty_wrong_passwords_lock_and_the_right_one_gets_the_same_answer(
    locking: Client, locking_server: RunningServer
) -> None:
    account = await sign_up(locking)
    wrong = await _fail(locking, account.email, 20)

    right = await sign_in(locking, account.email, PASSWORD)
    again_wrong = await sign_in(locking, account.email, WRONG)
    assert right.status == wrong.status == again_wrong.status
    assert right.body == wrong.body == again_wrong.body
    assert right.cookies == wrong.cookies == {}
    assert right.codes == ["UNAUTHENTICATED"]

    # The owner is told, with their own user id on the event; nobody else is.
    events = await _my_events(locking, account)
    names = [event["event"] for event in events]
    assert names.count("account.locked") == 1
    assert names.count("signin.failed") == 20
    assert names.count("signin.locked") == 2
    locked = next(event for event in events if event["event"] == "account.locked")
    assert locked["details"]["failures"] == 20
    assert WRONG not in str(events) and PASSWORD not in str(events)
    stranger = await sign_up(locking)
    assert await _my_events(locking, stranger) == []
    async with locking_server.services.read() as session:
        owners = set(
            await session.scalars(
                select(SecurityEvent.user_id).where(SecurityEvent.event == "account.locked")
            )
        )
    assert _user_id(account) in owners and _user_id(stranger) not in owners

    # The lock expires: move its stored timestamps back past KR_LOCKOUT_SECONDS.
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with locking_server.services.write() as session:
        await session.execute(
            update(SignInThrottle)
            .where(SignInThrottle.key == f"user:{_user_id(account)}")
            .values(locked_until=past, window_started_at=past - timedelta(hours=1))
        )
    after = await sign_in(locking, account.email, PASSWORD)
    assert after.errors == [], after.body
    assert after.data["signIn"]["user"]["email"] == account.email


async def test_a_success_resets_the_count(locking: Client, locking_server: RunningServer) -> None:
    account = await sign_up(locking)
    await _fail(locking, account.email, 19)
    assert (await sign_in(locking, account.email, PASSWORD)).errors == []
    async with locking_server.services.read() as session:
        row = await session.get(SignInThrottle, f"user:{_user_id(account)}")
    assert row is None
    await _fail(locking, account.email, 19)
    assert (await sign_in(locking, account.email, PASSWORD)).errors == []


async def test_unknown_emails_answer_as_before_and_create_no_rows(
    locking: Client, locking_server: RunningServer
) -> None:
    account = await sign_up(locking)
    wrong = await sign_in(locking, account.email, WRONG)

    async def account_rows() -> int:
        async with locking_server.services.read() as session:
            return int(
                await session.scalar(
                    select(func.count())
                    .select_from(SignInThrottle)
                    .where(SignInThrottle.key.like("user:%"))
                )
                or 0
            )

    before = await account_rows()
    for _ in range(25):
        unknown = await sign_in(locking, unique_email("nobody"), WRONG)
        assert unknown.status == wrong.status
        assert unknown.body == wrong.body
    assert await account_rows() == before
    async with locking_server.services.read() as session:
        anonymous = await session.scalar(
            select(func.count())
            .select_from(SecurityEvent)
            .where(SecurityEvent.event == "signin.failed", SecurityEvent.user_id.is_(None))
        )
    assert (anonymous or 0) >= 25


async def test_a_reused_refresh_token_is_a_security_event_of_its_owner(locking: Client) -> None:
    account = await sign_up(locking)
    first = await locking.execute(REFRESH, {"token": account.refresh_token})
    assert first.errors == [], first.body
    replay = await locking.execute(REFRESH, {"token": account.refresh_token})
    assert replay.codes == ["UNAUTHENTICATED"]
    token = (await sign_in(locking, account.email, PASSWORD)).data["signIn"]["accessToken"]
    events = await _my_events(locking, Account(**{**account.__dict__, "access_token": token}))
    reused = [event for event in events if event["event"] == "refresh_token.reused"]
    assert len(reused) == 1
    assert account.refresh_token not in str(events)


# The rules, with a controllable clock.


def _settings(server: RunningServer, **values: Any) -> Settings:
    defaults = {
        "lockout_threshold": 20,
        "lockout_seconds": 900,
        "lockout_window": 900,
        "lockout_slowdown_after": 5,
        "lockout_ip_threshold": 100,
    }
    return server.settings.model_copy(update={**defaults, **values})


async def _user(server: RunningServer, client: Client) -> User:
    account = await sign_up(client)
    async with server.services.read() as session:
        user = await session.get(User, _user_id(account))
    assert user is not None
    return user


async def _failures(
    server: RunningServer,
    settings: Settings,
    user: User | None,
    now: datetime,
    times: int,
    ip: str | None = None,
) -> None:
    for _ in range(times):
        async with server.services.write() as session:
            await lockout.record_failure(session, now, settings, user, ip, locked=False)


async def _gate(
    server: RunningServer, settings: Settings, user: User | None, now: datetime, ip: str | None
) -> lockout.Gate:
    async with server.services.read() as session:
        return await lockout.check(session, now, settings, user, ip)


async def test_the_lock_expires_by_the_clock(
    locking: Client, locking_server: RunningServer
) -> None:
    settings = _settings(locking_server, lockout_slowdown_after=1000)
    user = await _user(locking_server, locking)
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    await _failures(locking_server, settings, user, t0, 19)
    assert await _gate(locking_server, settings, user, t0, None) == lockout.Gate()
    await _failures(locking_server, settings, user, t0, 1)
    assert await _gate(locking_server, settings, user, t0, None) == lockout.Gate(locked=True)
    later = t0 + timedelta(seconds=899)
    assert await _gate(locking_server, settings, user, later, None) == lockout.Gate(locked=True)
    expired = t0 + timedelta(seconds=900)
    assert await _gate(locking_server, settings, user, expired, None) == lockout.Gate()
    # After the lock, counting starts again from one.
    await _failures(locking_server, settings, user, expired, 1)
    async with locking_server.services.read() as session:
        row = await session.get(SignInThrottle, f"user:{user.id}")
    assert row is not None and row.failures == 1 and row.locked_until is None


async def test_failures_outside_the_window_do_not_add_up(
    locking: Client, locking_server: RunningServer
) -> None:
    settings = _settings(locking_server, lockout_slowdown_after=1000)
    user = await _user(locking_server, locking)
    t0 = datetime(2030, 2, 1, tzinfo=UTC)
    await _failures(locking_server, settings, user, t0, 15)
    await _failures(locking_server, settings, user, t0 + timedelta(seconds=900), 15)
    gate = await _gate(locking_server, settings, user, t0 + timedelta(seconds=901), None)
    assert gate == lockout.Gate()


async def test_after_five_failures_each_attempt_waits_longer(
    locking: Client, locking_server: RunningServer
) -> None:
    settings = _settings(locking_server)
    user = await _user(locking_server, locking)
    t0 = datetime(2030, 3, 1, tzinfo=UTC)
    await _failures(locking_server, settings, user, t0, 4)
    assert await _gate(locking_server, settings, user, t0, None) == lockout.Gate()
    await _failures(locking_server, settings, user, t0, 1)
    assert await _gate(locking_server, settings, user, t0, None) == lockout.Gate(retry_after=1)
    t1 = t0 + timedelta(seconds=1)
    assert await _gate(locking_server, settings, user, t1, None) == lockout.Gate()
    await _failures(locking_server, settings, user, t1, 1)
    assert await _gate(locking_server, settings, user, t1, None) == lockout.Gate(retry_after=2)
    assert lockout.delay_after(30, settings) == lockout.MAX_DELAY_SECONDS


async def test_an_address_with_many_failures_is_refused_until_its_window_ends(
    locking: Client, locking_server: RunningServer
) -> None:
    settings = _settings(locking_server, lockout_ip_threshold=10)
    ip = f"203.0.113.{uuid.uuid4().int % 250 + 1}"
    t0 = datetime(2030, 4, 1, tzinfo=UTC) + timedelta(minutes=uuid.uuid4().int % 1000)
    await _failures(locking_server, settings, None, t0, 10, ip)
    user = await _user(locking_server, locking)
    gate = await _gate(locking_server, settings, user, t0 + timedelta(seconds=100), ip)
    assert gate == lockout.Gate(retry_after=800)
    assert await _gate(locking_server, settings, user, t0, "198.51.100.7") == lockout.Gate()
    done = t0 + timedelta(seconds=900)
    assert await _gate(locking_server, settings, None, done, ip) == lockout.Gate()


async def test_retention_purges_old_events_only(locking_server: RunningServer) -> None:
    settings = _settings(locking_server, security_event_retention_days=90)
    now = datetime(2031, 1, 1, tzinfo=UTC)
    async with locking_server.services.write() as session:
        old = await security_events.record(
            session, None, now - timedelta(days=90, seconds=1), "test.old"
        )
        kept = await security_events.record(session, None, now - timedelta(days=89), "test.kept")
        old_id, kept_id = old.id, kept.id
    async with locking_server.services.write() as session:
        purged = await security_events.purge_security_events(session, now, settings)
    assert purged >= 1
    async with locking_server.services.read() as session:
        assert await session.get(SecurityEvent, old_id) is None
        assert await session.get(SecurityEvent, kept_id) is not None


async def test_each_event_is_a_structured_log_line(
    locking_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kindrobots.security"):
        async with locking_server.services.write() as session:
            await security_events.record(
                session, None, datetime.now(UTC), "signin.failed", ip="192.0.2.1"
            )
    (line,) = [record for record in caplog.records if record.name == "kindrobots.security"]
    assert line.__dict__["event"] == "signin.failed"
    assert line.__dict__["ip"] == "192.0.2.1"
