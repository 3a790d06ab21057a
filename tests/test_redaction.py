"""Log redaction: secrets never reach a log line, whichever logger wrote it."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from kindrobots.auth.tokens import new_opaque_token
from kindrobots.config import Settings
from kindrobots.logs import configure_logging
from kindrobots.security import redaction
from kindrobots.security.redaction import REDACTED, redact, register_secret

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


def token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")


@pytest.fixture(autouse=True)
def installed() -> None:
    redaction.install()


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Authorization: Bearer {s}", "Authorization: [REDACTED]"),
        ("authorization=Basic {s}", "authorization=[REDACTED]"),
        ("Proxy-Authorization: Basic {s}", "Proxy-Authorization: [REDACTED]"),
        ("sent bearer {s} upstream", "sent Bearer [REDACTED] upstream"),
        ("Cookie: kr_access={s}; kr_refresh={s}", "Cookie: [REDACTED]"),
        (
            "Set-Cookie: kr_refresh={s}; HttpOnly; Path=/graphql; SameSite=Strict",
            "Set-Cookie: [REDACTED]",
        ),
        ("password={s} user=bob", "password=[REDACTED] user=bob"),
        (
            '{{"password": "{s} with spaces", "name": "Bob"}}',
            '{"password": [REDACTED], "name": "Bob"}',
        ),
        ("{{'password': '{s}', 'email': 'a@b.c'}}", "{'password': [REDACTED], 'email': 'a@b.c'}"),
        ('{{"apiKey": "{s}"}}', '{"apiKey": [REDACTED]}'),
        ("X-Api-Key: {s}", "X-Api-Key: [REDACTED]"),
        (
            "POST /token refresh_token={s}&grant_type=refresh",
            "POST /token refresh_token=[REDACTED]&grant_type=refresh",
        ),
        (
            "https://x.example/cb?access_token={s}&state=1",
            "https://x.example/cb?access_token=[REDACTED]&state=1",
        ),
        ("client_secret={s}", "client_secret=[REDACTED]"),
    ],
)
def test_named_secrets(template: str, expected: str) -> None:
    secret = token()
    assert redact(template.format(s=secret)) == expected


@pytest.mark.parametrize(
    "key",
    [
        "sk-" + "a1B2c3D4e5F6g7H8i9J0",
        "sk-proj-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm",
        "sk-ant-api03-" + "AbCdEfGhIjKlMnOpQrSt-uvwx_yz",
        "sk_live_" + "51HxYzAbCdEfGhIjKlMn",
        "sk_test_" + "51HxYzAbCdEfGhIjKlMn",
        "rk_live_" + "51HxYzAbCdEfGhIjKlMn",
        "whsec_" + "AbCdEfGhIjKlMnOpQrStUv",
        JWT,
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        "AKIAIOSFODNN7EXAMPLE",
    ],
)
def test_secrets_by_shape_anywhere_in_text(key: str) -> None:
    redacted = redact(f"upstream said: invalid key {key} retrying")
    assert key not in redacted
    assert redacted == f"upstream said: invalid key {REDACTED} retrying"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "cannot connect to postgresql+asyncpg://kr:{s}@db.example.com:5432/kr",
            "cannot connect to postgresql+asyncpg://kr:[REDACTED]@db.example.com:5432/kr",
        ),
        ("redis://:{s}@cache:6379/0 unreachable", "redis://:[REDACTED]@cache:6379/0 unreachable"),
    ],
)
def test_passwords_in_urls(template: str, expected: str) -> None:
    assert redact(template.format(s=token())) == expected


def test_urls_without_credentials_are_kept() -> None:
    text = "fetched https://example.com:8443/openapi.json for admin@example.com at 12:30"
    assert redact(text) == text


def test_private_key_block() -> None:
    block = (
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    )
    assert redact(f"loaded {block} ok") == f"loaded {REDACTED} ok"


@pytest.mark.parametrize(
    "card",
    ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005"],
)
def test_card_numbers_that_pass_luhn_are_redacted(card: str) -> None:
    assert redact(f"charge card {card} failed") == f"charge card {REDACTED} failed"


@pytest.mark.parametrize(
    "number",
    [
        "1234567812345678",  # 16 digits, fails Luhn: an order number
        "2024061512345678",
        "4111111111111112",
    ],
)
def test_long_numbers_that_fail_luhn_are_kept(number: str) -> None:
    assert redact(f"order {number} shipped") == f"order {number} shipped"


def test_ordinary_text_is_untouched() -> None:
    text = (
        "user 42 signed in from 10.0.0.1 at 2024-06-15 12:34:56 "
        "request 123e4567-e89b-12d3-a456-426614174000 took 12.5ms; tokens used: "
    )
    assert redact(text) == text
    assert redact("key sk-abc is too short to be a key") == "key sk-abc is too short to be a key"


def test_redaction_is_idempotent() -> None:
    once = redact(f"Authorization: Bearer {token()} password={token()} {JWT}")
    assert redact(once) == once
    assert "]]" not in once


def test_registered_server_token_without_a_label() -> None:
    secret = new_opaque_token()

    def run() -> tuple[str, str]:
        before = redact(f"the user typed {secret} twice")
        register_secret(secret)
        return before, redact(f"the user typed {secret} twice")

    before, after = contextvars.copy_context().run(run)
    assert secret in before
    assert after == f"the user typed {REDACTED} twice"


def test_caller_chosen_values_never_leave_messages() -> None:
    """Only server-token shapes are redacted from messages: anything else is the caller's
    choice, and would let a caller scrub any text (their own address) from the log."""
    ordinary = ["abc", "127.0.0.1", "correct horse battery", "GET /graphql", "x" * 42, "y" * 44]
    line = " ".join(ordinary)

    def run() -> str:
        for value in [*ordinary, None, ""]:
            register_secret(value)
        return redact(line)

    assert contextvars.copy_context().run(run) == line


def test_caller_chosen_values_are_redacted_from_exception_text() -> None:
    password = f"correct horse {token()}"

    def run() -> tuple[str, str, str]:
        register_secret(password)
        register_secret("short")
        text = f"RuntimeError: could not hash {password} (short)"
        return redact(text), redact(text, exception=True), redact("short", exception=True)

    message, exception, short = contextvars.copy_context().run(run)
    assert password in message
    assert exception == f"RuntimeError: could not hash {REDACTED} (short)"
    assert short == "short"


async def test_registered_secrets_stay_in_their_own_task() -> None:
    """A secret of one request is redacted in that request, and only there."""
    mine, theirs = new_opaque_token(), new_opaque_token()
    registered = asyncio.Event()
    checked = asyncio.Event()

    async def request_a() -> str:
        register_secret(mine)
        registered.set()
        await checked.wait()
        return redact(f"a: {mine} {theirs}")

    async def request_b() -> str:
        await registered.wait()
        register_secret(theirs)
        line = redact(f"b: {mine} {theirs}")
        checked.set()
        return line

    line_a, line_b = await asyncio.gather(request_a(), request_b())
    assert line_a == f"a: {REDACTED} {theirs}"
    assert line_b == f"b: {mine} {REDACTED}"
    # Nor do they outlive the tasks in the caller's context.
    assert redact(f"{mine} {theirs}") == f"{mine} {theirs}"


def test_logged_message_and_arguments_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    secret = token()
    caplog.set_level(logging.INFO)
    logging.getLogger("kindrobots.test").info("login with %s and %r", f"password={secret}", JWT)
    assert secret not in caplog.text and JWT not in caplog.text
    (record,) = caplog.records
    assert record.getMessage() == f"login with password={REDACTED} and '{REDACTED}'"


def test_exception_traceback_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    api_key = token("sk-live-")
    password = token()
    logger = logging.getLogger("kindrobots.test")
    try:
        raise RuntimeError(f"connect failed: password={password} key={api_key}")
    except RuntimeError:
        logger.exception("upstream call failed")
    (record,) = caplog.records
    assert record.exc_text
    assert "Traceback" in record.exc_text and "RuntimeError" in record.exc_text
    assert api_key not in record.exc_text and password not in record.exc_text
    formatted = logging.Formatter("%(message)s").format(record)
    assert "RuntimeError: connect failed" in formatted
    assert api_key not in formatted and password not in formatted
    assert api_key not in caplog.text and password not in caplog.text


def test_exception_chain_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    secret = token("sk_live_")
    logger = logging.getLogger("kindrobots.test")
    try:
        try:
            raise ValueError(f"bad key {secret}")
        except ValueError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as exc:
        logger.error("failed", exc_info=exc)
    assert "ValueError: bad key" in caplog.text
    assert secret not in caplog.text


def test_stack_info_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """Stack dumps quote source lines; a key written into one does not survive."""

    log = logging.getLogger("kindrobots.test")

    def deep() -> None:
        log.warning("here", stack_info=True)  # whsec_0123456789abcdef

    deep()
    (record,) = caplog.records
    assert record.stack_info
    assert "in deep" in record.stack_info
    assert "whsec_0123456789abcdef" not in record.stack_info
    assert "whsec_0123456789abcdef" not in caplog.text


@pytest.mark.parametrize("name", ["aiohttp.access", "strawberry.execution", "sqlalchemy.engine"])
def test_third_party_loggers_are_redacted(name: str, caplog: pytest.LogCaptureFixture) -> None:
    password = token()
    caplog.set_level(logging.INFO, logger=name)
    logging.getLogger(name).warning(
        "GET /graphql headers=%s params=%s card=%s",
        {"Authorization": f"Bearer {JWT}", "Cookie": f"kr_refresh={password}"},
        {"password": password, "apiKey": token("sk-ant-")},
        "4111 1111 1111 1111",
    )
    assert caplog.records, "nothing captured"
    assert caplog.records[0].name == name
    for leaked in (JWT, password, "4111 1111 1111 1111"):
        assert leaked not in caplog.text
    assert "sk-ant-" not in caplog.text
    assert "GET /graphql" in caplog.text


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """``configure_logging`` replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, log_format: Literal["json", "text"]
) -> io.StringIO:
    """``configure_logging`` as ``serve`` runs it, writing to a buffer instead of stderr."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in [name for name in os.environ if name.startswith("KR_")]:
        monkeypatch.delenv(name)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(Settings(log_format=log_format, data_dir=tmp_path))
    return stream


def test_json_logs_are_json_and_redacted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, root_logger: logging.Logger
) -> None:
    password, api_key = token(), token("sk-")
    stream = configured(monkeypatch, tmp_path, "json")
    logging.getLogger("kindrobots.test").warning("sign-in password=%s", password)
    # Records pass the record factory and the handler's filter: still one clean marker.
    logging.getLogger("aiohttp.access").warning("Authorization: Bearer %s", api_key)
    try:
        raise RuntimeError(f"upstream rejected {api_key}")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("handler failed")

    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    assert len(lines) == 3, lines
    first, header, second = (json.loads(line) for line in lines)
    assert first["message"] == f"sign-in password={REDACTED}"
    assert first["level"] == "WARNING" and first["logger"] == "kindrobots.test"
    assert "time" in first
    assert header["message"] == f"Authorization: {REDACTED}"
    assert second["logger"] == "aiohttp.server"
    assert "RuntimeError" in json.dumps(second)
    assert password not in stream.getvalue() and api_key not in stream.getvalue()


def test_handler_redacts_records_made_without_the_factory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, root_logger: logging.Logger
) -> None:
    """Records built directly (e.g. unpickled from another process) pass the handler's filter."""
    secret = token()
    stream = configured(monkeypatch, tmp_path, "text")
    record = logging.makeLogRecord(
        {
            "name": "worker",
            "levelno": logging.ERROR,
            "levelname": "ERROR",
            "msg": "refresh_token=%s",
            "args": (secret,),
        }
    )
    assert secret in record.getMessage()
    root_logger.handle(record)
    output = stream.getvalue()
    assert "refresh_token=[REDACTED]" in output
    assert secret not in output
