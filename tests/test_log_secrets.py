"""Project keys and SQL bound parameters never reach a log line."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from kindrobots.db.engine import create_engine
from kindrobots.security.redaction import REDACTED, redact
from tests.conftest import POSTGRES_URL, make_settings, require_service


def project_key() -> str:
    return "pk_" + secrets.token_urlsafe(24)  # the shape resolvers/projects.py issues


def test_a_logged_project_key_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    key = project_key()
    caplog.set_level(logging.INFO, logger="kindrobots.test")
    logging.getLogger("kindrobots.test").info("widget connected with %s from %s", key, "x")
    (record,) = [r for r in caplog.records if r.name == "kindrobots.test"]
    assert key not in record.getMessage()
    assert record.getMessage() == f"widget connected with {REDACTED} from x"


def test_project_keys_are_redacted_inside_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    key = project_key()
    try:
        raise ValueError(f"unknown project key {key!r}")
    except ValueError:
        logging.getLogger("kindrobots.test").exception("lookup failed")
    rendered = caplog.text
    assert key not in rendered and REDACTED in rendered


def test_short_pk_names_are_not_keys() -> None:
    # Constraint names such as pk_messages are not secrets; only key-length values are.
    assert redact('constraint "pk_messages" violated') == 'constraint "pk_messages" violated'
    assert redact("pk_" + "A1b2C3d4E5f6G7h8I9j0") == REDACTED


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_failing_statement_never_shows_its_parameters(backend: str, tmp_path: Path) -> None:
    if backend == "postgresql":
        require_service("PostgreSQL", POSTGRES_URL, 5432)
    engine = create_engine(make_settings(tmp_path, backend))
    key, chat = project_key(), "my card is 4242 and my address is 1 Secret Lane"
    try:
        with pytest.raises(DBAPIError) as failure:
            async with engine.connect() as connection:
                await connection.execute(
                    text("INSERT INTO no_such_table (key, content) VALUES (:key, :content)"),
                    {"key": key, "content": chat},
                )
    finally:
        await engine.dispose()
    message = str(failure.value)
    assert "no_such_table" in message  # the statement is still there to debug with
    assert key not in message and "Secret Lane" not in message
    assert "hidden" in message
