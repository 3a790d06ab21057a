"""What an operator meets at the command line and in the logs, run as real processes:
one line and a non-zero exit for every expected failure, the settings each command reads
in its help, the start-up line, the access log and its request ids."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest
import redis.exceptions
from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine

from kindrobots.cli import Parser, backing_failure, parser
from kindrobots.config import ConfigError, load_settings
from kindrobots.db.migrate import upgrade
from kindrobots.logs import configure_logging
from kindrobots.security.errors import public_failure
from kindrobots.server import SERVICES, create_app, failure_response
from tests.conftest import POSTGRES_URL, make_settings, require_service, scratch_database
from tests.processes import Instance, clean_env, free_port, run_cli, serve, terminate, wait_ready

SECRET = "pw-Zq8Xw3Rt5Yu7"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
OLD_REVISION = "0003"


def one_line(result: object) -> str:
    """The single stderr line of a failed command (and nothing else on stderr)."""
    stderr: str = getattr(result, "stderr")  # noqa: B009 (CompletedProcess or alike)
    returncode: int = getattr(result, "returncode")  # noqa: B009
    assert returncode != 0, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and SECRET not in stderr
    return lines[0]


def as_scheme(url: str, scheme: str) -> str:
    return scheme + url.removeprefix("postgresql+asyncpg")


@pytest.fixture
def postgres() -> None:
    require_service("PostgreSQL", POSTGRES_URL, 5432)


async def migrated_to(url: str, revision: str = "head") -> None:
    engine = create_async_engine(url)
    try:
        await upgrade(engine, revision)
    finally:
        await engine.dispose()


def test_version_is_the_package_version(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kindrobots {version('kindrobots')}\n"


def leaf_commands() -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    def walk(
        path: list[str], node: argparse.ArgumentParser
    ) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
        subparsers = [
            action for action in node._actions if isinstance(action, argparse._SubParsersAction)
        ]
        if not subparsers:
            yield path, node
        for action in subparsers:
            for name, child in action.choices.items():
                yield from walk([*path, name], child)

    yield from walk([], parser())


def test_every_command_help_names_the_settings_it_reads(tmp_path: Path) -> None:
    leaves = list(leaf_commands())
    assert len(leaves) >= 9
    for path, command in leaves:
        assert isinstance(command, Parser)
        # Declared through add_command: a command added without it has no `reads`.
        assert "reads" in command._defaults, f"kindrobots {' '.join(path)} declares no settings"
        result = run_cli(*path, "--help", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        help_text = " ".join(result.stdout.split())
        reads = command._defaults["reads"]
        if reads is None:
            assert "Reads no KR_* setting." in help_text, path
            continue
        assert "KR_ENV" in help_text and "KR_LOG_FORMAT" in help_text, path
        for name in reads if reads != ("*",) else ():
            assert f"KR_{name.upper()}" in help_text, (path, name)
    serve_help = " ".join(run_cli("serve", "--help", cwd=tmp_path).stdout.split())
    from kindrobots.config import Settings

    for field in Settings.model_fields:
        assert f"KR_{field.upper()}" in serve_help, field
    assert "--host" in serve_help and "--port" in serve_help


@pytest.mark.parametrize(
    "args",
    [["frobnicate"], [], ["serve", "--port", "70000"], ["keys", "rotate", "--batch-size", "x"]],
    ids=["unknown-command", "no-command", "port-out-of-range", "not-a-number"],
)
def test_a_bad_argument_is_one_line_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(*args, cwd=tmp_path)
    line = one_line(result)
    assert result.returncode == 2
    assert line.startswith("kindrobots") and "--help" in line
    assert not (tmp_path / ".kindrobots").exists()


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["audit", "verify"]])
def test_a_malformed_setting_is_one_line_exit_2(tmp_path: Path, command: list[str]) -> None:
    env = clean_env(KR_PORT="not-a-port", KR_DATABASE_URL=f"mysql://root:{SECRET}@db/kr")
    result = run_cli(*command, cwd=tmp_path, env=env)
    line = one_line(result)
    assert result.returncode == 2
    assert "KR_PORT" in line and "KR_DATABASE_URL" in line


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["security", "purge"]])
def test_an_unreachable_database_is_one_line(tmp_path: Path, command: list[str]) -> None:
    closed = free_port()
    env = clean_env(
        KR_DATABASE_URL=f"postgres://kr:{SECRET}@127.0.0.1:{closed}/kr", KR_DATA_DIR=str(tmp_path)
    )
    line = one_line(run_cli(*command, cwd=tmp_path, env=env))
    assert line.startswith(
        f"kindrobots: cannot reach the database at postgresql+asyncpg://127.0.0.1:{closed}/kr"
    ), line
    assert "KR_DATABASE_URL" in line


async def test_serve_refuses_a_database_behind_the_newest_migration(
    tmp_path: Path, postgres: None
) -> None:
    async with scratch_database() as url:
        await migrated_to(url, OLD_REVISION)
        env = clean_env(KR_DATABASE_URL=url, KR_DATA_DIR=str(tmp_path))
        line = one_line(run_cli("serve", "--port", str(free_port()), cwd=tmp_path, env=env))
        assert f"at migration {OLD_REVISION}" in line and "run `kindrobots migrate`" in line
        # The commands that run business rules refuse it too, rather than fail half-way.
        assert "kindrobots migrate" in one_line(run_cli("security", "purge", cwd=tmp_path, env=env))
    async with scratch_database() as url:  # never migrated at all
        env = clean_env(KR_DATABASE_URL=url, KR_DATA_DIR=str(tmp_path))
        line = one_line(run_cli("serve", cwd=tmp_path, env=env))
        assert line == "kindrobots: the database has no schema yet: run `kindrobots migrate`"


async def test_a_port_in_use_is_one_line(tmp_path: Path, postgres: None) -> None:
    async with scratch_database() as url:
        await migrated_to(url)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = clean_env(KR_DATABASE_URL=url, KR_DATA_DIR=str(tmp_path), KR_PORT=str(port))
            line = one_line(run_cli("serve", cwd=tmp_path, env=env))
    assert line == (
        f"kindrobots: cannot listen on 127.0.0.1:{port} (KR_HOST/KR_PORT, --host/--port): "
        "address already in use"
    )


def test_postgres_url_aliases_mean_asyncpg_and_keep_their_parameters() -> None:
    for scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        settings = load_settings(
            database_url=f"{scheme}://kr:p%40ss@db:6543/kr?sslmode=verify-full&application_name=kr"
        )
        assert (
            settings.database_url == "postgresql+asyncpg://kr:p%40ss@db:6543/kr?application_name=kr"
        )
        assert settings.database_ssl == "verify-full"
    assert load_settings(database_url="postgres://db/kr").database_ssl is None
    with pytest.raises(ConfigError, match="contradicts KR_DATABASE_SSL"):
        load_settings(database_url="postgres://db/kr?sslmode=disable", database_ssl="require")


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def stopped_log(instance: Instance) -> str:
    assert await terminate(instance.process, 30)
    return instance.log.read_text()


async def test_serve_listens_on_host_and_port_given_and_logs_json(
    tmp_path: Path, postgres: None
) -> None:
    """postgres:// migrates, postgresql:// serves, on --host/--port rather than KR_PORT;
    JSON lines only (no aiohttp banner), ISO-8601 UTC times, a start-up line without the
    password, and one access line per request with its request id."""
    async with scratch_database() as url:
        base = {"KR_DATA_DIR": str(tmp_path), "KR_LOG_FORMAT": "json"}
        migrate = run_cli(
            "migrate",
            cwd=tmp_path,
            env=clean_env(KR_DATABASE_URL=as_scheme(url, "postgres") + "?sslmode=disable", **base),
        )
        assert migrate.returncode == 0, migrate.stderr
        port = free_port()
        # The local server trusts every password: this one connects, and must never be logged.
        with_password = as_scheme(url, "postgresql").replace("postgres@", f"postgres:{SECRET}@")
        settings = {
            "KR_DATABASE_URL": with_password,
            "KR_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:6379/0",
            "KR_LOG_FORMAT": "json",
        }
        async with (
            aiohttp.ClientSession() as http,
            serve("a", tmp_path, settings, args=["--host", "127.0.0.1", "--port", str(port)]) as a,
        ):
            elsewhere, a.port = a.port, port  # KR_PORT as tests.processes set it, overridden
            await wait_ready(http, a)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(f"http://127.0.0.1:{elsewhere}/healthz"):
                    pass
            async with http.get(
                f"{a.base_url}/healthz?token={SECRET}", headers={"X-Request-ID": "req-42.a:b"}
            ) as response:
                assert response.status == 200
                assert response.headers["X-Request-ID"] == "req-42.a:b"
            async with http.post(
                f"{a.base_url}/graphql",
                json={"query": "# query Fake\nquery Ping { __typename }"},
                headers={"X-Request-ID": "no spaces allowed"},
            ) as response:
                assert response.status == 200
                generated = response.headers["X-Request-ID"]
                assert re.fullmatch(r"[0-9a-f]{32}", generated)
            async with http.get(f"{a.base_url}/healthz", headers={"X-Request-ID": "x" * 129}) as r:
                assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
            log = await stopped_log(a)
    assert "Running on" not in log and "=====" not in log
    assert SECRET not in log
    records = json_lines(log)  # every line is JSON
    for record in records:
        assert ISO_UTC.match(str(record["time"])), record
    (startup,) = [record for record in records if record.get("event") == "startup"]
    assert startup["mode"] == "development"
    assert startup["database"] == as_scheme(url, "postgresql+asyncpg").replace("postgres@", "")
    assert startup["broker"] == "redis://127.0.0.1:6379/0"
    assert startup["listen"] == f"http://127.0.0.1:{port}"
    assert startup["public_url"] == "http://localhost:8000"
    assert startup["metrics"] == f"http://127.0.0.1:{port}/metrics (loopback only)"
    access = [record for record in records if record["logger"] == "aiohttp.access"]
    health = next(record for record in access if record.get("request_id") == "req-42.a:b")
    assert (health["method"], health["path"], health["status"]) == ("GET", "/healthz", 200)
    assert isinstance(health["duration_ms"], float) and health["operation"] is None
    ping = next(record for record in access if record.get("request_id") == generated)
    assert (ping["method"], ping["path"], ping["status"], ping["operation"]) == (
        "POST",
        "/graphql",
        200,
        "Ping",
    )


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


async def running(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_an_error_line_carries_the_request_id(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    settings = make_settings(tmp_path, "sqlite", log_format="json")
    configure_logging(settings)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(log_stream)
    app = create_app(settings)
    await upgrade(app[SERVICES].engine)

    async def boom(_request: web.Request) -> web.Response:
        return failure_response(public_failure(RuntimeError("boom"), "GET /boom"))

    app.router.add_get("/boom", boom)
    async for base in running(app):
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/boom", headers={"X-Request-ID": "incident-7"}) as response,
        ):
            assert response.status == 500
            assert response.headers["X-Request-ID"] == "incident-7"
            error_id = (await response.json())["errors"][0]["extensions"]["errorId"]
    (line,) = [record for record in json_lines(log_stream.getvalue()) if record.get("error_id")]
    assert line["error_id"] == error_id and line["request_id"] == "incident-7"


async def test_readyz_is_503_while_the_database_is_behind(tmp_path: Path, postgres: None) -> None:
    async with scratch_database() as url:
        await migrated_to(url, OLD_REVISION)
        app = create_app(make_settings(tmp_path, "postgresql", database_url=url))
        async for base in running(app):
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/readyz") as response:
                    body = await response.json()
                    assert response.status == 503, body
                assert body["checks"] == {"database": "ok", "migrations": "behind"}
                assert f"at migration {OLD_REVISION}" in body["reason"]
                assert "kindrobots migrate" in body["reason"]
                await upgrade(app[SERVICES].engine)
                async with http.get(f"{base}/readyz") as response:
                    assert response.status == 200
                    assert await response.json() == {
                        "status": "ok",
                        "checks": {"database": "ok", "migrations": "ok"},
                    }


def test_only_connection_failures_are_called_unreachable(tmp_path: Path) -> None:
    settings = load_settings(
        database_url=f"postgresql://kr:{SECRET}@db.internal:5432/kr?application_name={SECRET}",
        redis_url=f"redis://:{SECRET}@cache.internal:6379/0",
        data_dir=tmp_path,
    )
    refused = backing_failure(settings, ConnectionRefusedError(111, "Connect call failed"))
    assert refused is not None
    assert str(refused) == (
        "cannot reach the database at postgresql+asyncpg://db.internal:5432/kr "
        "(KR_DATABASE_URL): [Errno 111] Connect call failed"
    )
    assert backing_failure(settings, RuntimeError("a bug")) is None  # keeps its traceback
    lost = redis.exceptions.ConnectionError("Error 111 connecting")
    try:
        raise RuntimeError("publish failed") from lost
    except RuntimeError as error:
        redis_down = backing_failure(settings, error)
    assert redis_down is not None and str(redis_down).startswith(
        "cannot reach Redis at redis://cache.internal:6379/0 (KR_REDIS_URL)"
    )
    # A file a command cannot write is an OSError too, but not an unreachable database.
    assert backing_failure(settings, PermissionError(13, "Permission denied")) is None
    assert SECRET not in str(refused) + str(redis_down)
