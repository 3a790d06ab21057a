"""The audit log is append-only and hash-chained per organization."""

from __future__ import annotations

import subprocess
from itertools import pairwise
from pathlib import Path

import aiohttp
from sqlalchemy import delete, select, update

from kindrobots.db.audit_chain import verify
from kindrobots.db.models import AuditEvent
from kindrobots.ids import from_global_id
from kindrobots.server import create_services
from tests.conftest import (
    Client,
    RunningServer,
    make_settings,
    start_server,
)
from tests.org_helpers import organization_with_events
from tests.processes import audit_verify


async def _broken(server: RunningServer, organization_id: str) -> list[tuple[int, str]]:
    raw = from_global_id(organization_id, "Organization")
    async with server.services.read() as session:
        report = await verify(session, server.settings.audit_key)
    return [(link.sequence, link.reason) for link in report.broken if link.organization_id == raw]


async def test_events_link_to_their_predecessor(client: Client, server: RunningServer) -> None:
    organization_id = await organization_with_events(client, server)
    raw = from_global_id(organization_id, "Organization")
    async with server.services.read() as session:
        events = (
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.organization_id == raw)
                .order_by(AuditEvent.sequence)
            )
        ).all()
    assert [event.sequence for event in events] == [1, 2, 3, 4]
    assert events[0].previous_hash is None
    assert all(later.previous_hash == earlier.hash for earlier, later in pairwise(events))
    assert await _broken(server, organization_id) == []


async def test_an_altered_event_breaks_the_chain(client: Client, server: RunningServer) -> None:
    organization_id = await organization_with_events(client, server)
    raw = from_global_id(organization_id, "Organization")
    async with server.services.write() as session:
        await session.execute(
            update(AuditEvent)
            .where(AuditEvent.organization_id == raw, AuditEvent.sequence == 2)
            .values(details={"email": "someone-else@example.com", "role": "OWNER"})
        )
    assert await _broken(server, organization_id) == [
        (2, "content does not match its hash (event altered)")
    ]


async def test_a_deleted_event_breaks_the_chain(client: Client, server: RunningServer) -> None:
    organization_id = await organization_with_events(client, server)
    raw = from_global_id(organization_id, "Organization")
    async with server.services.write() as session:
        await session.execute(
            delete(AuditEvent).where(AuditEvent.organization_id == raw, AuditEvent.sequence == 3)
        )
    broken = await _broken(server, organization_id)
    assert len(broken) == 1 and broken[0][0] == 4 and "missing" in broken[0][1]


async def test_cli_verify_reports_the_first_broken_link(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = make_settings(tmp_path, "sqlite")
    runner, running = await start_server(settings)
    try:
        client = Client(http, running.base_url)
        organization_id = await organization_with_events(client, running)
    finally:
        await runner.cleanup()

    def run() -> subprocess.CompletedProcess[str]:
        return audit_verify(settings, tmp_path)

    intact = run()
    assert intact.returncode == 0, intact.stderr
    assert "4 events checked, intact" in intact.stdout

    services = create_services(settings)
    raw = from_global_id(organization_id, "Organization")
    async with services.write() as session:
        await session.execute(
            update(AuditEvent)
            .where(AuditEvent.organization_id == raw, AuditEvent.sequence == 3)
            .values(action="member.remove")
        )
    await services.engine.dispose()

    tampered = run()
    assert tampered.returncode == 1
    assert f"BROKEN organization {raw} at event 3" in tampered.stdout
