"""Shared fixtures: a real server on a real port, once per database backend.

Every test that uses ``server`` (or ``client``) runs twice: on the embedded
SQLite default and on PostgreSQL. The PostgreSQL and Redis suites skip when
those services are absent, unless ``KR_TEST_REQUIRE_SERVICES=1`` (as in CI),
where their absence fails the run instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from sqlalchemy import event, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from kindrobots.config import (
    Settings,
    format_keys,
    generate_audit_key,
    generate_key,
    load_settings,
)
from kindrobots.context import Services
from kindrobots.db.migrate import upgrade
from kindrobots.db.models import Organization
from kindrobots.ids import from_global_id
from kindrobots.security import redaction
from kindrobots.server import SERVICES, create_app
from tests.servers import Listener, listening, start_app

POSTGRES_URL = os.environ.get(
    "KR_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("KR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("KR_TEST_REQUIRE_SERVICES") == "1"

redaction.install()

# Fixtures of the chat tests against a fake LLM provider: fake, llm_server, account.
pytest_plugins = ["tests.llm_fixtures"]


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    """Skip without the service, or fail when the run says the service is mandatory."""
    if _reachable(url, default_port):
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{name} at {url} is required (KR_TEST_REQUIRE_SERVICES=1) but unreachable")
    pytest.skip(f"{name} not reachable at {url}")


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A PostgreSQL database of this test run alone, dropped afterwards.

    Test runs that share one server (developers, helpers, CI) never see each
    other's rows, and nothing outside ``kr_test_*`` databases is touched.
    """
    name = f"kr_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def make_settings(tmp: Path, backend: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "development",
        "data_dir": tmp,
        "database_url": POSTGRES_URL
        if backend == "postgresql"
        else f"sqlite+aiosqlite:///{tmp}/kr.db",
        "public_url": "http://localhost:8000",
        "signing_keys": format_keys((generate_key("sig"),)),
        "encryption_keys": format_keys((generate_key("enc"),)),
        "audit_key": generate_audit_key(),
        "log_format": "text",
        # Suites sign up hundreds of users from 127.0.0.1; limits have their own servers.
        "rate_limits": False,
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class Response:
    status: int
    headers: Any
    body: dict[str, Any]
    cookies: dict[str, str] = field(default_factory=dict)
    cookie_attributes: dict[str, SimpleCookie] = field(default_factory=dict)

    @property
    def data(self) -> Any:
        return self.body.get("data")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.body.get("errors") or [])

    @property
    def codes(self) -> list[str]:
        return [error.get("extensions", {}).get("code") for error in self.errors]


class Client:
    """GraphQL over real HTTP; bearer tokens and cookies are explicit, never ambient."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url
        self.headers = headers or {}  # sent with every request, under the call's own

    async def execute(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        cookies: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        request_headers = {
            "Content-Type": "application/json",
            **self.headers,
            **(headers or {}),
        }
        if token:
            request_headers["Authorization"] = f"Bearer {token}"
        if cookies:
            request_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        payload = {"query": query, "variables": variables or {}}
        async with self.http.post(
            f"{self.base_url}/graphql", json=payload, headers=request_headers
        ) as response:
            return await self._wrap(response)

    @staticmethod
    async def _wrap(response: aiohttp.ClientResponse) -> Response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = {"text": await response.text()}
        cookies: dict[str, str] = {}
        attributes: dict[str, SimpleCookie] = {}
        for header in response.headers.getall("Set-Cookie", []):
            parsed: SimpleCookie = SimpleCookie()
            parsed.load(header)
            for name, morsel in parsed.items():
                cookies[name] = morsel.value
                attributes[name] = parsed
        return Response(
            response.status,
            response.headers,
            body if isinstance(body, dict) else {"list": body},
            cookies,
            attributes,
        )


@dataclass
class RunningServer:
    base_url: str
    settings: Settings
    services: Services
    backend: str

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/graphql"


async def start_server(settings: Settings) -> tuple[web.AppRunner, RunningServer]:
    app = create_app(settings)
    services = app[SERVICES]
    await upgrade(services.engine, audit_key=settings.audit_key)
    runner, port = await start_app(app)
    backend = "postgresql" if settings.database_url.startswith("postgresql") else "sqlite"
    return runner, RunningServer(f"http://127.0.0.1:{port}", settings, services, backend)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_service("PostgreSQL", POSTGRES_URL, 5432)
    return str(request.param)


@asynccontextmanager
async def backend_server(tmp: Path, backend: str, **overrides: Any) -> AsyncIterator[RunningServer]:
    """A server on ``backend``: SQLite under ``tmp``, or a scratch PostgreSQL database.

    ``overrides`` are settings on top of :func:`make_settings`.
    """
    async with AsyncExitStack() as stack:
        if backend == "postgresql":
            require_service("PostgreSQL", POSTGRES_URL, 5432)
            url = await stack.enter_async_context(scratch_database())
            overrides = {"database_url": url, **overrides}
        runner, running = await start_server(make_settings(tmp, backend, **overrides))
        try:
            yield running
        finally:
            await runner.cleanup()


@pytest_asyncio.fixture(scope="session")
async def server(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    async with backend_server(tmp_path_factory.mktemp(backend), backend) as running:
        yield running


@pytest_asyncio.fixture
async def listener() -> AsyncIterator[Listener]:
    """A local TCP port that records connections: proof that nothing connected to it."""
    async with listening() as record:
        yield record


@pytest_asyncio.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
def client(server: RunningServer, http: aiohttp.ClientSession) -> Client:
    return Client(http, server.base_url)


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


PASSWORD = "correct horse battery"

SIGN_UP = """
mutation SignUp($input: SignUpInput!) {
  signUp(input: $input) { accessToken refreshToken expiresAt user { id email displayName } }
}
"""

MY_ORGANIZATIONS = "{ me { user { id } memberships { role organization { id name tier } } } }"


@dataclass
class Account:
    email: str
    password: str
    access_token: str
    refresh_token: str
    user_id: str
    organization_id: str
    cookies: dict[str, str]


async def sign_up(client: Client, email: str | None = None, organization: str = "Acme") -> Account:
    email = email or unique_email()
    response = await client.execute(
        SIGN_UP,
        {
            "input": {
                "email": email,
                "password": PASSWORD,
                "displayName": "Test User",
                "organizationName": organization,
            }
        },
    )
    assert response.errors == [], response.errors
    payload = response.data["signUp"]
    me = await client.execute(MY_ORGANIZATIONS, token=payload["accessToken"])
    (membership,) = me.data["me"]["memberships"]
    return Account(
        email=email,
        password=PASSWORD,
        access_token=payload["accessToken"],
        refresh_token=payload["refreshToken"],
        user_id=payload["user"]["id"],
        organization_id=membership["organization"]["id"],
        cookies=response.cookies,
    )


async def set_tier(server: RunningServer, organization_id: str, tier: str) -> None:
    """Billing is not built yet; tests move an organization between tiers directly."""
    raw = from_global_id(organization_id, "Organization")
    async with server.services.write() as session:
        await session.execute(update(Organization).where(Organization.id == raw).values(tier=tier))


class StatementCounter:
    def __init__(self) -> None:
        self.statements: list[str] = []
        self.transactions = 0

    @property
    def count(self) -> int:
        return len(self.statements)


@contextmanager
def count_statements(server: RunningServer) -> Iterator[StatementCounter]:
    """Every SQL statement the server sends while the block runs."""
    counter = StatementCounter()

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        counter.statements.append(statement)

    def begin(_conn: Any) -> None:
        counter.transactions += 1

    engine = server.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    event.listen(engine, "begin", begin)
    try:
        yield counter
    finally:
        event.remove(engine, "before_cursor_execute", record)
        event.remove(engine, "begin", begin)
