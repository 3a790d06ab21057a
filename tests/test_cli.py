"""The ``kindrobots`` command, run as a real process."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kindrobots.config import load_settings
from tests.processes import clean_env, free_port
from tests.processes import run_cli as kindrobots

REPOSITORY = Path(__file__).resolve().parent.parent
COMMITTED_SCHEMA = REPOSITORY / "schema.graphql"


def test_committed_schema_is_current(tmp_path: Path) -> None:
    result = kindrobots("schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "kindrobots schema printed nothing"
    assert result.stdout == COMMITTED_SCHEMA.read_text(), (
        "schema.graphql is stale: run `kindrobots schema > schema.graphql` and commit it"
    )


def test_keys_generate_prints_loadable_fresh_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [kindrobots("keys", "generate", cwd=tmp_path) for _ in range(2)]
    parsed: list[dict[str, str]] = []
    for result in runs:
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert [line.split("=", 1)[0] for line in lines] == [
            "KR_ENCRYPTION_KEYS",
            "KR_SIGNING_KEYS",
            "KR_AUDIT_KEY",
        ]
        parsed.append(dict(line.split("=", 1) for line in lines))
    assert parsed[0]["KR_SIGNING_KEYS"] != parsed[1]["KR_SIGNING_KEYS"]
    assert parsed[0]["KR_ENCRYPTION_KEYS"] != parsed[1]["KR_ENCRYPTION_KEYS"]
    assert parsed[0]["KR_SIGNING_KEYS"] != parsed[0]["KR_ENCRYPTION_KEYS"]
    assert parsed[0]["KR_AUDIT_KEY"] != parsed[1]["KR_AUDIT_KEY"]

    # Ready for an env file: the settings loader takes them as they are.
    for name in [name for name in os.environ if name.startswith("KR_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(runs[0].stdout)
    settings = load_settings(
        env="production",
        metrics_port=9100,
        database_url="postgresql+asyncpg://kr@db.example.com/kr",
        public_url="https://kindrobots.example.com",
    )
    assert settings.signing_keys[0].kid == parsed[0]["KR_SIGNING_KEYS"].split(":", 1)[0]
    assert settings.encryption_keys[0].kid == parsed[0]["KR_ENCRYPTION_KEYS"].split(":", 1)[0]
    assert settings.audit_key == base64.b64decode(parsed[0]["KR_AUDIT_KEY"])


def test_migrate_creates_the_tables(tmp_path: Path) -> None:
    database = tmp_path / "nested" / "kr.db"
    env = clean_env(
        KR_DATABASE_URL=f"sqlite+aiosqlite:///{database}", KR_DATA_DIR=str(tmp_path / "data")
    )
    result = kindrobots("migrate", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(database) as connection:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"users", "organizations", "memberships", "invitations", "audit_events"} <= tables
    assert version

    again = kindrobots("migrate", cwd=tmp_path, env=env)  # idempotent
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_bad_setting_exits_2_naming_the_variable(tmp_path: Path, command: str) -> None:
    secret = "sk_live_" + "Z9y8X7w6V5u4T3s2"
    env = clean_env(KR_PORT="not-a-port", KR_DATABASE_URL=f"mysql://root:{secret}@db/kr")
    result = kindrobots(command, cwd=tmp_path, env=env)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "KR_PORT" in result.stderr and "KR_DATABASE_URL" in result.stderr
    assert secret not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".kindrobots").exists()


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = kindrobots("frobnicate", cwd=tmp_path)
    assert result.returncode == 2
    assert "usage" in result.stderr.lower()


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_until_serving(process: subprocess.Popen[str], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"serve did not listen on port {port}:\n{log.read_text()}")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_embedded_default(tmp_path: Path, stop: signal.Signals) -> None:
    """No configuration at all: SQLite and keys appear under ./.kindrobots, health answers."""
    port = free_port()
    log = tmp_path / "serve.log"
    workdir = tmp_path / "empty"
    workdir.mkdir()
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "kindrobots", "serve"],
            cwd=workdir,
            env=clean_env(KR_PORT=str(port)),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_until_serving(process, port, log)
        assert get(port, "/healthz") == (200, {"status": "ok"})
        status, body = get(port, "/readyz")
        assert status == 200, body
        assert body["status"] == "ok"

        data = workdir / ".kindrobots"
        assert (data / "kindrobots.db").is_file()
        keys = data / "keys.env"
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600
        with sqlite3.connect(data / "kindrobots.db") as connection:
            tables = {
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        assert "users" in tables

        process.send_signal(stop)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output_text = log.read_text()
    assert "Traceback" not in output_text, output_text
    # The generated key material never reaches the log.
    for line in keys.read_text().splitlines():
        for item in line.split("=", 1)[1].split(","):
            assert item.split(":", 1)[-1] not in output_text


def test_security_purge_deletes_old_events_only(tmp_path: Path) -> None:
    database = tmp_path / "kr.db"
    env = clean_env(
        KR_DATABASE_URL=f"sqlite+aiosqlite:///{database}", KR_DATA_DIR=str(tmp_path / "data")
    )
    assert kindrobots("migrate", cwd=tmp_path, env=env).returncode == 0
    with sqlite3.connect(database) as connection:
        for name, age in (("test.old", "-91 days"), ("test.kept", "-1 days")):
            connection.execute(
                "INSERT INTO security_events (id, occurred_at, event, details)"
                " VALUES (?, datetime('now', ?), ?, '{}')",
                (uuid.uuid4().hex, age, name),
            )
    result = kindrobots("security", "purge", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "purged 1 security events, 0 sign-in counters\n"
    with sqlite3.connect(database) as connection:
        left = [row[0] for row in connection.execute("SELECT event FROM security_events")]
    assert left == ["test.kept"]
