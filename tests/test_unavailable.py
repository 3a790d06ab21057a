"""SERVICE_UNAVAILABLE: what counts as an outage, and how each path answers one.

The classification (``security.errors.is_unavailable``) is checked on the exceptions
SQLAlchemy, asyncpg, aiosqlite and redis really raise; the paths that run before any
operation (X-Project-Key authentication, ``connection_init``, the caller's lookup at
the start of each operation) are checked against a server whose sessions fail.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import redis.exceptions
from sqlalchemy import exc as sa_exc

from kindrobots.security.errors import is_unavailable
from kindrobots.server import KindRobotsGraphQLView
from tests.chat_helpers import ORIGIN, deploy
from tests.conftest import Account, Client, RunningServer, sign_up
from tests.test_errors import assert_logged_without


def _wrapped(error: Exception) -> sa_exc.DBAPIError:
    """``error`` as SQLAlchemy raises it: a DBAPIError whose cause and ``orig`` it is."""
    try:
        raise error
    except Exception as original:
        wrapped = sa_exc.DBAPIError.instance("SELECT 1", None, original, Exception)
        assert isinstance(wrapped, sa_exc.DBAPIError)
        wrapped.__cause__ = original
        return wrapped


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "error",
    [
        sa_exc.TimeoutError("QueuePool limit of size 10 overflow 0 reached"),
        ConnectionRefusedError(111, "Connect call failed"),
        _wrapped(ConnectionResetError()),
        _wrapped(TimeoutError()),  # asyncpg's connect timeout, under a database error
        _wrapped(_PgError("08006")),  # connection_failure
        _wrapped(_PgError("57P01")),  # admin_shutdown
        _wrapped(_PgError("57P03")),  # cannot_connect_now (recovering)
        _wrapped(_PgError("53300")),  # too_many_connections
        sa_exc.DBAPIError("SELECT 1", None, Exception("closed"), connection_invalidated=True),
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
    ],
    ids=repr,
)
def test_outages_are_unavailable(error: Exception) -> None:
    assert is_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        # SQLite's busy timeout ran out: another writer holds the lock, the database is up.
        _wrapped(sqlite3.OperationalError("database is locked")),
        _wrapped(_PgError("23505")),  # unique_violation
        _wrapped(_PgError("42703")),  # undefined_column
        _wrapped(ValueError("bad")),
        TimeoutError(),  # not under a database error: some other wait of ours
        RuntimeError("boom"),
        KeyError("x"),
    ],
    ids=repr,
)
def test_other_errors_are_not_unavailable(error: Exception) -> None:
    assert not is_unavailable(error)


class FailingSessions:
    """A sessionmaker whose sessions fail to open, as the pool does when the database is
    down or every connection is taken."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self) -> FailingSessions:
        return self

    async def __aenter__(self) -> Any:
        raise self.error

    async def __aexit__(self, *_exc: object) -> None:
        return None


POOL_TIMEOUT = sa_exc.TimeoutError("QueuePool limit of size 10 overflow 5 reached")
SEND = 'mutation { sendMessage(input: {message: "a secret question"}) { content } }'


@pytest.fixture
def failing(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def fail(error: Exception) -> None:
        monkeypatch.setattr(server.services, "sessionmaker", FailingSessions(error))

    yield fail


@pytest.fixture
async def shop(client: Client) -> tuple[Account, str]:
    owner = await sign_up(client)
    return owner, (await deploy(client, owner)).project_key


def _assert_unavailable(response: Any) -> None:
    assert response.status == 503, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    assert int(response.headers["Retry-After"]) > 0
    assert response.codes == ["SERVICE_UNAVAILABLE"], response.body


async def test_send_message_answers_503_when_the_pool_is_exhausted(
    client: Client, shop: tuple[Account, str], failing: Any
) -> None:
    failing(POOL_TIMEOUT)
    _assert_unavailable(await client.execute(SEND, headers={"X-Project-Key": shop[1]}))


async def test_a_dashboard_query_answers_503_when_the_database_is_down(
    client: Client, shop: tuple[Account, str], failing: Any
) -> None:
    failing(ConnectionRefusedError(111, "Connect call failed"))
    response = await client.execute("{ me { user { id } } }", token=shop[0].access_token)
    _assert_unavailable(response)
    assert response.data is None


async def test_anything_else_before_execution_is_masked_with_an_error_id(
    client: Client,
    shop: tuple[Account, str],
    failing: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing(RuntimeError(f"detail with {shop[1]}"))
    with caplog.at_level(logging.ERROR, logger="kindrobots.errors"):
        response = await client.execute(SEND, headers={"X-Project-Key": shop[1]})
    assert response.status == 500, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    (error,) = response.errors
    assert error["message"] == "Unexpected error."
    assert set(error["extensions"]) == {"code", "errorId"}
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert_logged_without(caplog, error["extensions"]["errorId"], shop[1], "a secret question")


async def _connection_init(
    http: aiohttp.ClientSession, server: RunningServer, payload: dict[str, Any], origin: str | None
) -> aiohttp.ClientWebSocketResponse:
    headers = {"Origin": origin} if origin else {}
    async with http.ws_connect(
        server.ws_url, protocols=["graphql-transport-ws"], headers=headers
    ) as ws:
        await ws.send_json({"type": "connection_init", "payload": payload})
        message = await ws.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.CLOSE, message
        return ws


@pytest.mark.parametrize(
    ("error", "code"), [(POOL_TIMEOUT, 1013), (RuntimeError("boom"), 1011)], ids=["pool", "bug"]
)
async def test_connection_init_closes_with_a_code_when_authentication_fails(
    http: aiohttp.ClientSession,
    server: RunningServer,
    shop: tuple[Account, str],
    failing: Any,
    error: Exception,
    code: int,
) -> None:
    failing(error)
    widget = await _connection_init(http, server, {"projectKey": shop[1]}, ORIGIN)
    assert widget.close_code == code
    token = shop[0].access_token
    dashboard = await _connection_init(http, server, {"authorization": f"Bearer {token}"}, None)
    assert dashboard.close_code == code


async def test_an_operation_on_an_open_socket_gets_service_unavailable(
    http: aiohttp.ClientSession,
    server: RunningServer,
    shop: tuple[Account, str],
    failing: Any,
) -> None:
    token = shop[0].access_token
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        await ws.send_json(
            {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
        )
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
        failing(POOL_TIMEOUT)
        await ws.send_json(
            {"type": "subscribe", "id": "1", "payload": {"query": "{ me { user { id } } }"}}
        )
        frame = await ws.receive_json(timeout=10)
        errors = frame["payload"] if frame["type"] == "error" else frame["payload"]["errors"]
        assert [error["extensions"]["code"] for error in errors] == ["SERVICE_UNAVAILABLE"]


@pytest.mark.parametrize(
    ("error", "code"), [(POOL_TIMEOUT, 1013), (RuntimeError("boom"), 1011)], ids=["pool", "bug"]
)
async def test_a_socket_that_fails_after_the_handshake_still_gets_a_close_frame(
    http: aiohttp.ClientSession,
    server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    code: int,
) -> None:
    async def broken_context(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr(KindRobotsGraphQLView, "get_context", broken_context)
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        message = await ws.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.CLOSE, message
        assert ws.close_code == code


def test_an_outage_is_logged_once_and_every_refusal_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 4 of the robustness issue: no log flood while the database is away."""
    from prometheus_client import REGISTRY

    from kindrobots.security import errors as masking

    monkeypatch.setattr(masking, "_outages", masking._OutageLog())
    name = "kindrobots_service_unavailable_total"
    before = REGISTRY.get_sample_value(name) or 0.0
    with caplog.at_level(logging.WARNING, logger="kindrobots.errors"):
        answers = [
            masking.public_failure(ConnectionRefusedError(111, "Connection refused"), "test")
            for _ in range(50)
        ]
    assert {answer.extensions["code"] for answer in answers} == {"SERVICE_UNAVAILABLE"}
    lines = [r for r in caplog.records if "service unavailable" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert (REGISTRY.get_sample_value(name) or 0.0) == before + 50
