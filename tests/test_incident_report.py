"""``kindrobots incident report``: what a breach notification needs (SECURITY_POLICY 8.3)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kindrobots.auth.principals import CLI
from kindrobots.db.models import SecurityEvent
from kindrobots.ids import from_global_id
from kindrobots.resolvers import audit
from tests.conftest import Client, RunningServer
from tests.data_rights_helpers import Seeded, cli_env, seed
from tests.processes import ROOT, run_cli

NOW = datetime.now(UTC).replace(microsecond=0)
SINCE = NOW - timedelta(days=10)
UNTIL = NOW - timedelta(days=5)
CONFIRMED = NOW - timedelta(days=6)
INSIDE = NOW - timedelta(days=7)


async def security_event(
    server: RunningServer,
    at: datetime,
    event: str,
    *,
    user: str | None = None,
    organization: uuid.UUID | None = None,
) -> str:
    row = SecurityEvent(
        occurred_at=at,
        event=event,
        user_id=from_global_id(user, "User") if user else None,
        organization_id=organization,
        ip="203.0.113.9",
        details={"attempts": 3},
    )
    async with server.services.write() as session:
        session.add(row)
        await session.flush()
    return str(row.id)


async def audit_event(server: RunningServer, seeded: Seeded, at: datetime, action: str) -> None:
    async with server.services.write() as session:
        await audit.record(session, CLI, at, organization_id=seeded.raw, action=action)


async def seeded_incident(client: Client, server: RunningServer) -> tuple[Seeded, set[str]]:
    """An organization with security and audit events inside and outside the window;
    returns the IDs of the security events the report must list."""
    seeded = await seed(client, server)
    other = await seed(client, server, name="Bystander")
    listed = {
        await security_event(server, INSIDE, "signin.failed", user=seeded.owner.user_id),
        await security_event(server, INSIDE, "account.locked", user=seeded.admin.user_id),
        await security_event(server, INSIDE, "origin.refused", organization=seeded.raw),
    }
    await security_event(
        server, SINCE - timedelta(hours=1), "signin.failed", organization=seeded.raw
    )
    await security_event(
        server, UNTIL + timedelta(hours=1), "signin.failed", user=seeded.owner.user_id
    )
    await security_event(server, INSIDE, "signin.failed", user=other.owner.user_id)
    await audit_event(server, seeded, INSIDE, "incident.inside")
    await audit_event(server, seeded, SINCE - timedelta(days=1), "incident.before")
    await audit_event(server, other, INSIDE, "incident.elsewhere")
    return seeded, listed


def report(
    server: RunningServer, tmp: Path, organization: str, *extra: str
) -> tuple[int, str, str]:
    ran = run_cli(
        "incident",
        "report",
        "--org",
        organization,
        "--since",
        SINCE.isoformat(),
        "--until",
        UNTIL.isoformat(),
        "--confirmed",
        CONFIRMED.isoformat(),
        *extra,
        env=cli_env(server, tmp),
        cwd=ROOT,
    )
    return ran.returncode, ran.stdout, ran.stderr


async def test_the_report_lists_owners_counts_and_the_windows_events(
    client: Client, server: RunningServer, tmp_path: Path
) -> None:
    seeded, listed = await seeded_incident(client, server)
    code, out, err = report(server, tmp_path, seeded.organization_id, "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    assert document["report"] == 1
    assert document["organization"]["id"] == seeded.organization_id
    assert [owner["email"] for owner in document["ownersToNotify"]] == [seeded.owner.email]
    assert document["notificationDeadline"] == (CONFIRMED + timedelta(hours=72)).isoformat()
    assert document["window"] == {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
    assert document["dataHeld"] == {
        "members": 3,
        "invitations": 3,
        "endUsers": 2,
        "conversations": 4,
        "messages": 8,
        "llmCredentials": 2,
        "projects": 1,
        "agents": 1,
        "manifests": 1,
        "auditEvents": document["dataHeld"]["auditEvents"],
    }
    assert document["dataHeld"]["auditEvents"] > 5
    security = document["securityEvents"]
    assert {event["id"] for event in security["events"]} == listed
    assert (security["total"], security["truncated"]) == (3, False)
    emails = {event["event"]: event["userEmail"] for event in security["events"]}
    assert emails["account.locked"] == seeded.admin.email
    assert [event["action"] for event in document["auditEvents"]["events"]] == ["incident.inside"]

    code, markdown, err = report(server, tmp_path, seeded.slug, "--format", "md")
    assert code == 0, err
    assert markdown.startswith("# Incident report: Data Org")
    assert seeded.owner.email in markdown and seeded.admin.email in markdown
    assert (CONFIRMED + timedelta(hours=72)).isoformat() in markdown
    assert "| conversations | 4 |" in markdown and "| llmCredentials | 2 |" in markdown
    assert "account.locked" in markdown and "origin.refused" in markdown
    assert "incident.inside" in markdown
    assert "incident.before" not in markdown and "incident.elsewhere" not in markdown
    assert markdown.count("signin.failed") == 1


async def test_bad_arguments_are_one_line_and_a_failure(
    client: Client, server: RunningServer, tmp_path: Path
) -> None:
    seeded = await seed(client, server)
    env = cli_env(server, tmp_path)
    cases = [
        ("--org", "no-such-org", "--since", SINCE.isoformat()),
        ("--org", seeded.slug, "--since", "last tuesday"),
        ("--org", seeded.slug, "--since", SINCE.isoformat(), "--until", "2026-13-40"),
        ("--org", seeded.slug, "--since", UNTIL.isoformat(), "--until", SINCE.isoformat()),
        ("--org", seeded.slug, "--since", SINCE.isoformat(), "--confirmed", "soon"),
    ]
    for case in cases:
        ran = run_cli("incident", "report", *case, env=env, cwd=ROOT)
        assert ran.returncode != 0, case
        assert ran.stdout == "", case
        assert ran.stderr.count("\n") == 1 and ran.stderr.startswith("kindrobots: "), ran.stderr
        assert "Traceback" not in ran.stderr
