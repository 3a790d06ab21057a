"""Sealed chain heads: rewriting events and recomputing every hash, or cutting the newest
events off, is caught by ``verify`` (and ``kindrobots audit verify``) on both databases."""

from __future__ import annotations

import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.db import audit_chain
from kindrobots.db.audit_chain import ChainTampered, event_hash, head_mac, verify
from kindrobots.db.locks import lock_organization, lock_row, locked_heads
from kindrobots.db.models import PLATFORM_CHAIN, Agent, AuditEvent, AuditHead, Project
from kindrobots.ids import from_global_id
from tests.conftest import (
    Client,
    RunningServer,
    count_statements,
    make_settings,
    scratch_database,
    start_server,
)
from tests.org_helpers import organization_with_events
from tests.processes import audit_verify


@pytest_asyncio.fixture
async def fresh(backend: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server on a database of its own: these tests tamper with the platform chain."""
    if backend == "sqlite":
        runner, running = await start_server(make_settings(tmp_path, backend))
        try:
            yield running
        finally:
            await runner.cleanup()
        return
    async with scratch_database() as url:
        runner, running = await start_server(make_settings(tmp_path, backend, database_url=url))
        try:
            yield running
        finally:
            await runner.cleanup()


async def org_chain(server: RunningServer, http: aiohttp.ClientSession) -> uuid.UUID:
    """An organization with four events, written over GraphQL."""
    organization_id = await organization_with_events(Client(http, server.base_url), server)
    return from_global_id(organization_id, "Organization")


async def platform_chain(server: RunningServer, count: int = 3) -> None:
    for index in range(count):
        async with server.services.write() as session:
            await audit_chain.append(
                session,
                AuditEvent(
                    organization_id=None,
                    actor_kind="system",
                    actor="retention",
                    action="platform.retention_run",
                    details={"run": index},
                    created_at=datetime.now(UTC),
                ),
                server.settings.audit_key,
            )


def _chain_filter(chain: uuid.UUID | None) -> ColumnElement[bool]:
    if chain is None:
        return AuditEvent.organization_id.is_(None)
    return AuditEvent.organization_id == chain


async def rewrite(
    server: RunningServer, chain: uuid.UUID | None, change: Callable[[AuditEvent], None]
) -> None:
    """What an attacker with the database can do: edit event 2, re-link and re-hash on."""
    async with server.services.write() as session:
        events = (
            await session.scalars(
                select(AuditEvent).where(_chain_filter(chain)).order_by(AuditEvent.sequence)
            )
        ).all()
        change(events[1])
        for previous, event in pairwise(events):
            event.previous_hash = previous.hash
            event.hash = event_hash(event)
            await session.flush()


async def cut_newest(server: RunningServer, chain: uuid.UUID | None, keep: int) -> None:
    async with server.services.write() as session:
        await session.execute(
            delete(AuditEvent).where(_chain_filter(chain), AuditEvent.sequence > keep)
        )


async def broken(server: RunningServer, key: bytes | None = None) -> list[tuple[uuid.UUID, str]]:
    async with server.services.read() as session:
        report = await verify(session, key or server.settings.audit_key)
    return [(link.chain_id, link.reason) for link in report.broken]


async def test_intact_chains_verify(fresh: RunningServer, http: aiohttp.ClientSession) -> None:
    organization = await org_chain(fresh, http)
    await platform_chain(fresh)
    async with fresh.services.read() as session:
        report = await verify(session, fresh.settings.audit_key)
        heads = {head.chain_id: head for head in await session.scalars(select(AuditHead))}
        platform = (
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.organization_id.is_(None))
                .order_by(AuditEvent.sequence)
            )
        ).all()
    assert report.broken == []
    assert report.checked == 7
    assert [event.sequence for event in platform] == [1, 2, 3]
    assert {event.actor_kind for event in platform} == {"system"}
    assert heads[PLATFORM_CHAIN].sequence == 3 and heads[PLATFORM_CHAIN].hash == platform[-1].hash
    assert heads[organization].sequence == 4
    assert heads[organization].mac == head_mac(
        fresh.settings.audit_key, organization, 4, heads[organization].hash
    )
    # Another key does not accept these heads.
    assert {reason for _, reason in await broken(fresh, secrets.token_bytes(32))} == {
        "the head's MAC does not verify (head forged, or another KR_AUDIT_KEY)"
    }


async def test_user_events_name_their_actor(
    fresh: RunningServer, http: aiohttp.ClientSession
) -> None:
    organization = await org_chain(fresh, http)
    async with fresh.services.read() as session:
        events = (
            await session.scalars(select(AuditEvent).where(_chain_filter(organization)))
        ).all()
    assert {(event.actor_kind, event.actor) for event in events} == {
        ("user", str(events[0].actor_id))
    }


@pytest.mark.parametrize("chain", ["organization", "platform"])
async def test_a_rewritten_chain_with_recomputed_hashes_is_caught(
    fresh: RunningServer, http: aiohttp.ClientSession, chain: str
) -> None:
    organization = await org_chain(fresh, http)
    await platform_chain(fresh, 4)
    target = organization if chain == "organization" else None

    def change(event: AuditEvent) -> None:
        event.details = {**event.details, "role": "OWNER"}

    await rewrite(fresh, target, change)
    # Every link holds; only the sealed head disagrees.
    assert await broken(fresh) == [
        (
            target or PLATFORM_CHAIN,
            "the head's hash differs from event 4's (events rewritten)",
        )
    ]


@pytest.mark.parametrize("chain", ["organization", "platform"])
async def test_cutting_off_the_newest_events_is_caught(
    fresh: RunningServer, http: aiohttp.ClientSession, chain: str
) -> None:
    organization = await org_chain(fresh, http)
    await platform_chain(fresh, 4)
    target = organization if chain == "organization" else None
    await cut_newest(fresh, target, keep=2)
    assert await broken(fresh) == [
        (
            target or PLATFORM_CHAIN,
            "the head names event 4 but the newest event is 2 (events cut off)",
        )
    ]
    # All of them, too: the head still names event 4.
    await cut_newest(fresh, target, keep=0)
    assert [chain_id for chain_id, _ in await broken(fresh)] == [target or PLATFORM_CHAIN]


@pytest.mark.parametrize("chain", ["organization", "platform"])
async def test_a_head_forged_with_another_key_is_caught(
    fresh: RunningServer, http: aiohttp.ClientSession, chain: str
) -> None:
    organization = await org_chain(fresh, http)
    await platform_chain(fresh, 4)
    target = organization if chain == "organization" else None
    chain_id = target or PLATFORM_CHAIN
    await cut_newest(fresh, target, keep=3)
    async with fresh.services.write() as session:
        newest = await session.scalar(
            select(AuditEvent).where(_chain_filter(target), AuditEvent.sequence == 3)
        )
        assert newest is not None
        await session.execute(
            update(AuditHead)
            .where(AuditHead.chain_id == chain_id)
            .values(
                sequence=3,
                hash=newest.hash,
                mac=head_mac(secrets.token_bytes(32), chain_id, 3, newest.hash),
            )
        )
    assert await broken(fresh) == [
        (chain_id, "the head's MAC does not verify (head forged, or another KR_AUDIT_KEY)")
    ]


async def test_missing_or_unsealed_heads_are_caught(
    fresh: RunningServer, http: aiohttp.ClientSession
) -> None:
    organization = await org_chain(fresh, http)
    async with fresh.services.write() as session:
        await session.execute(delete(AuditHead).where(AuditHead.chain_id == organization))
        await session.execute(
            update(AuditHead).where(AuditHead.chain_id == PLATFORM_CHAIN).values(mac=None)
        )
    assert sorted(await broken(fresh)) == sorted(
        [
            (organization, "events exist but the chain has no head"),
            (PLATFORM_CHAIN, "the head is not sealed (no MAC)"),
        ]
    )
    async with fresh.services.write() as session:
        await session.execute(delete(AuditHead).where(AuditHead.chain_id == PLATFORM_CHAIN))
    assert (PLATFORM_CHAIN, "the chain has no head") in await broken(fresh)


async def test_a_head_that_does_not_verify_is_never_extended(fresh: RunningServer) -> None:
    """Sealing a forged head again would launder it: the next write refuses instead, and
    verify keeps reporting the chain until an operator looks at it."""
    await platform_chain(fresh, 2)
    for forged in (None, "0" * 64):
        async with fresh.services.write() as session:
            await session.execute(
                update(AuditHead).where(AuditHead.chain_id == PLATFORM_CHAIN).values(mac=forged)
            )
        with pytest.raises(ChainTampered):
            await platform_chain(fresh, 1)
        assert [chain for chain, _ in await broken(fresh)] == [PLATFORM_CHAIN]


async def _append_user_event(
    session: AsyncSession, server: RunningServer, organization: uuid.UUID
) -> None:
    await audit_chain.append(
        session,
        AuditEvent(
            organization_id=organization,
            actor_kind="staff",
            actor=str(uuid.uuid4()),
            action="organization.inspect",
            created_at=datetime.now(UTC),
        ),
        server.settings.audit_key,
    )
    await session.flush()


async def test_a_locked_organization_appends_with_two_statements(
    fresh: RunningServer, http: aiohttp.ClientSession
) -> None:
    organization = await org_chain(fresh, http)
    with count_statements(fresh) as counter:
        async with fresh.services.write() as session:
            assert await lock_organization(session, organization) is not None
            assert organization in locked_heads(session)
            await _append_user_event(session, fresh, organization)
    kinds = [statement.split()[0].upper() for statement in counter.statements]
    # The lock (organization and head in one SELECT), the event, the head: nothing else,
    # and no BEGIN among the statements on SQLite either.
    assert kinds == ["SELECT", "INSERT", "UPDATE"], counter.statements
    assert "audit_heads" in counter.statements[0] and "organizations" in counter.statements[0]

    # Unlocked, append reads (and locks) the head itself.
    with count_statements(fresh) as counter:
        async with fresh.services.write() as session:
            await _append_user_event(session, fresh, organization)
    kinds = [statement.split()[0].upper() for statement in counter.statements]
    assert kinds == ["SELECT", "INSERT", "UPDATE"], counter.statements
    assert "audit_heads" in counter.statements[0]
    assert await broken(fresh) == []


async def test_lock_row_reads_a_row_of_the_organization_fresh(
    fresh: RunningServer, http: aiohttp.ClientSession
) -> None:
    organization = await org_chain(fresh, http)
    other = await org_chain(fresh, http)
    async with fresh.services.write() as session:
        agent = Agent(
            organization_id=organization,
            name="Helper",
            system_prompt="Be kind.",
            model="demo",
            temperature=0.5,
        )
        session.add(agent)
    async with fresh.services.write() as session:
        stale = await session.get(Agent, agent.id)
        assert stale is not None
        # Changed behind the identity map's back (as by another transaction).
        await session.execute(
            update(Agent)
            .where(Agent.id == agent.id)
            .values(name="Renamed")
            .execution_options(synchronize_session=False)
        )
        assert stale.name == "Helper"
        with count_statements(fresh) as counter:
            locked = await lock_row(session, Agent, agent.id, organization)
        assert locked is stale and locked.name == "Renamed"
        assert counter.count == 1, counter.statements
        assert organization in locked_heads(session)
        await _append_user_event(session, fresh, organization)
    async with fresh.services.write() as session:
        # Another organization's row, or one that does not exist: None.
        assert await lock_row(session, Agent, agent.id, other) is None
        assert await lock_row(session, Project, uuid.uuid4(), organization) is None
    assert await broken(fresh) == []


async def test_cli_verify_exits_1_on_a_broken_chain(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = make_settings(tmp_path, "sqlite")
    runner, running = await start_server(settings)
    try:
        organization = await org_chain(running, http)
        await platform_chain(running, 3)

        def run() -> subprocess.CompletedProcess[str]:
            return audit_verify(settings, tmp_path)

        intact = run()
        assert intact.returncode == 0, intact.stdout + intact.stderr
        assert intact.stdout == "audit log: 7 events checked, intact\n"

        await cut_newest(running, None, keep=2)
        await rewrite(running, organization, lambda event: setattr(event, "ip", "10.9.9.9"))
        tampered = run()
        assert tampered.returncode == 1
        lines = tampered.stdout.splitlines()
        assert sorted(lines[:-1]) == sorted(
            [
                f"BROKEN organization {organization} at head (sequence 4): "
                "the head's hash differs from event 4's (events rewritten)",
                "BROKEN platform at head (sequence 3): the head names event 3 but the "
                "newest event is 2 (events cut off)",
            ]
        )
        assert lines[-1] == "audit log: 6 events checked, 2 broken chain(s)"

        # Another KR_AUDIT_KEY than the one that sealed the heads: nothing verifies.
        other_key = audit_verify(
            settings.model_copy(update={"audit_key": secrets.token_bytes(32)}), tmp_path
        )
        assert other_key.returncode == 1
        assert "another KR_AUDIT_KEY" in other_key.stdout
    finally:
        await runner.cleanup()
