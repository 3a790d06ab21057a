"""The access log over real HTTP, through the process's own logging set-up: one request is
one line, whatever its path says, and no caller can redact text out of it."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from kindrobots.db.migrate import upgrade
from kindrobots.logs import EscapingFormatter, configure_logging, escape_controls
from kindrobots.server import SERVICES, AccessLogger, create_app
from tests.conftest import PASSWORD, make_settings, scratch_database

# Each a line break to some reader: LF, CR, NEL, U+2028, U+2029, VT, FF, FS, ESC, DEL.
BREAKS = ["%0a", "%0d", "%0d%0a", "%c2%85", "%e2%80%a8", "%e2%80%a9", "%0b", "%0c", "%1c"]
FORGED = "2026-01-01%2000:00:00,000%20ERROR%20kindrobots.auth:%20forged"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """What configure_logging's handler writes; pytest's own handlers come back after."""
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


@asynccontextmanager
async def logged_server(
    backend: str, tmp: Path, log_format: str, stream: io.StringIO
) -> AsyncIterator[str]:
    """A server with the access logger `kindrobots serve` uses, logging as configured."""

    async def start(**overrides: Any) -> AsyncIterator[str]:
        settings = make_settings(tmp, backend, log_format=log_format, **overrides)
        configure_logging(settings)
        (handler,) = logging.getLogger().handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)  # in place of stderr, which pytest captures
        app = create_app(settings)
        await upgrade(app[SERVICES].engine)
        runner = web.AppRunner(app, access_log_class=AccessLogger)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()

    if backend == "sqlite":
        async for base in start():
            yield base
        return
    async with scratch_database() as database_url:
        async for base in start(database_url=database_url):
            yield base


def access_lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().split("\n") if "aiohttp.access" in line]


async def test_a_path_cannot_forge_a_text_log_line(
    backend: str, tmp_path: Path, log_stream: io.StringIO
) -> None:
    async with (
        logged_server(backend, tmp_path, "text", log_stream) as base,
        aiohttp.ClientSession() as http,
    ):
        for brk in BREAKS:
            async with http.get(URL(f"{base}/x{brk}{FORGED}", encoded=True)) as response:
                assert response.status == 404
    output = log_stream.getvalue()
    # Every line a reader can find (by any of Unicode's line breaks) is a record of its
    # own, starting with the time; none of them is the forged one.
    for line in output.splitlines():
        assert TIMESTAMP.match(line), repr(line)
        assert not line.startswith("2026-01-01"), repr(line)
    forged = [line for line in output.splitlines() if "forged" in line]
    assert len(forged) == len(BREAKS)
    assert all(" INFO aiohttp.access: " in line for line in forged)
    assert "GET /x\\n2026-01-01 00:00:00,000 ERROR kindrobots.auth: forged 404" in output
    assert "/x\\u2028" in output and "/x\\x85" in output


async def test_a_path_cannot_forge_a_json_log_line(
    backend: str, tmp_path: Path, log_stream: io.StringIO
) -> None:
    async with (
        logged_server(backend, tmp_path, "json", log_stream) as base,
        aiohttp.ClientSession() as http,
    ):
        for brk in BREAKS:
            async with http.get(URL(f"{base}/x{brk}{FORGED}", encoded=True)) as response:
                assert response.status == 404
    output = log_stream.getvalue()
    records = [json.loads(line) for line in output.splitlines()]
    assert output.isascii()  # U+2028, U+2029 and NEL only ever as \\u escapes
    access = [record for record in records if record["logger"] == "aiohttp.access"]
    assert sum("forged" in record["message"] for record in access) == len(BREAKS)
    assert not any(record["level"] == "ERROR" for record in records)


async def test_a_sign_in_password_cannot_scrub_the_access_log(
    backend: str, tmp_path: Path, log_stream: io.StringIO
) -> None:
    """A caller-chosen value must never redact text from the log: with the password
    127.0.0.1, the access log still names the address the request came from."""
    async with (
        logged_server(backend, tmp_path, "text", log_stream) as base,
        aiohttp.ClientSession() as http,
    ):
        sign_up = {
            "query": "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
            "variables": {
                "i": {
                    "email": "scrub@example.com",
                    "password": PASSWORD,
                    "displayName": "Scrub",
                    "organizationName": "Scrub",
                }
            },
        }
        async with http.post(f"{base}/graphql", json=sign_up) as response:
            assert response.status == 200
        for password in ("127.0.0.1", "POST /graphql", "aiohttp.access"):
            sign_in = {
                "query": "mutation($i: SignInInput!) { signIn(input: $i) { accessToken } }",
                "variables": {"i": {"email": "scrub@example.com", "password": password}},
            }
            async with http.post(f"{base}/graphql", json=sign_in) as response:
                body = await response.json()
                assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    lines = access_lines(log_stream)
    assert len([line for line in lines if "POST /graphql" in line]) == 4, lines
    assert all(": 127.0.0.1 POST /graphql 200 " in line for line in lines), lines
    assert "[REDACTED]" not in "\n".join(lines)


def test_tracebacks_keep_their_lines_but_cannot_start_a_record() -> None:
    formatter = EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("bad\n2026-01-01 00:00:00,000 ERROR kindrobots.auth: forged\u2028x")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom\r\n", (), None)
        record.exc_text = logging.Formatter().formatException(__import__("sys").exc_info())
    text = formatter.format(record)
    first, *rest = text.split("\n")
    assert first.endswith("t: boom\\r\\n")
    assert rest and all(line.startswith("    ") for line in rest)
    assert text.splitlines() == text.split("\n")  # no U+2028 or NEL left raw


def test_escape_controls_covers_c0_c1_del_and_separators() -> None:
    raw = "".join(chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029])
    escaped = escape_controls("a" + raw + "é€")
    assert escaped.startswith("a\\x00") and escaped.endswith("\\u2028\\u2029é€")
    assert escaped.isprintable()
