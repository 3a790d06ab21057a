"""Migration 0003 on a database with events: actors backfilled, hashes recomputed,
one head per chain; ``migrate`` with the key seals them, a bare upgrade leaves them
for ``verify`` to flag."""

from __future__ import annotations

import importlib
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from kindrobots.db.audit_chain import verify
from kindrobots.db.migrate import upgrade
from kindrobots.db.models import PLATFORM_CHAIN, AuditEvent, AuditHead, Organization, User
from tests.conftest import scratch_database
from tests.test_migrations import downgrade

MIGRATION = importlib.import_module(
    "kindrobots.db.migrations.versions.0003_audit_heads_and_actor_kind"
)
KEY = secrets.token_bytes(32)


@pytest_asyncio.fixture
async def engine(backend: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if backend == "sqlite":
        created = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/old.db")
        yield created
        await created.dispose()
        return
    async with scratch_database() as url:
        created = create_async_engine(url)
        yield created
        await created.dispose()


async def _database_at_0002(engine: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """Two organizations on revision 0002: one with three events (one actor gone), one bare."""
    await upgrade(engine, "0002")
    busy, bare, user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        for organization in (busy, bare):
            await connection.execute(_org_insert(organization, now))
        await connection.execute(_user_insert(user, now))
        previous = None
        for sequence, actor in enumerate((user, None, user), start=1):
            row: dict[str, Any] = {
                "id": uuid.uuid4(),
                "organization_id": busy,
                "actor_id": actor,
                "action": "member.invite",
                "target_type": "Invitation",
                "target_id": f"SW52aXRhdGlvbjo{sequence}",
                "metadata": {"email": f"m{sequence}@example.com", "role": "VIEWER"},
                "ip": "127.0.0.1",
                "created_at": now + timedelta(seconds=sequence),
                "sequence": sequence,
                "previous_hash": previous,
            }
            row["hash"] = previous = MIGRATION._hash_0002(row)
            await connection.execute(insert(_old_events()).values(**row))
    return busy, bare, user


def _org_insert(organization: uuid.UUID, now: datetime) -> Any:
    return insert(Organization).values(
        id=organization, name="Old", slug=f"old-{organization.hex}", tier="STARTER", created_at=now
    )


def _user_insert(user: uuid.UUID, now: datetime) -> Any:
    return insert(User).values(
        id=user,
        email=f"{user.hex}@example.com",
        display_name="Old",
        password_hash="x",
        is_staff=False,
        created_at=now,
        updated_at=now,
    )


def _old_events() -> Any:
    return sa.table(
        "audit_events",
        *(
            sa.column(column.name, column.type)
            for column in MIGRATION.events.c
            if column.name not in ("actor_kind", "actor")
        ),
    )


async def _report(engine: AsyncEngine) -> list[tuple[uuid.UUID, str]]:
    async with async_sessionmaker(engine)() as session:
        report = await verify(session, KEY)
    return [(link.chain_id, link.reason) for link in report.broken]


async def test_migrate_backfills_rehashes_and_seals(engine: AsyncEngine) -> None:
    busy, bare, user = await _database_at_0002(engine)
    await upgrade(engine, audit_key=KEY)
    async with async_sessionmaker(engine)() as session:
        events = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.organization_id == busy).order_by("sequence")
            )
        ).all()
        heads = {head.chain_id: head for head in await session.scalars(select(AuditHead))}
    assert [(event.actor_kind, event.actor) for event in events] == [
        ("user", str(user)),
        ("user", "system"),
        ("user", str(user)),
    ]
    assert set(heads) == {busy, bare, PLATFORM_CHAIN}
    assert (heads[busy].sequence, heads[busy].hash) == (3, events[-1].hash)
    assert (heads[bare].sequence, heads[bare].hash) == (0, None)
    assert (heads[PLATFORM_CHAIN].sequence, heads[PLATFORM_CHAIN].hash) == (0, None)
    assert all(head.mac for head in heads.values())
    assert await _report(engine) == []


async def test_a_bare_upgrade_leaves_the_heads_unsealed(engine: AsyncEngine) -> None:
    busy, bare, _ = await _database_at_0002(engine)
    await upgrade(engine)
    unsealed = "the head is not sealed (no MAC)"
    assert sorted(await _report(engine)) == sorted(
        [(busy, unsealed), (bare, unsealed), (PLATFORM_CHAIN, unsealed)]
    )
    # Running migrate again later (key at hand) does not seal what it did not write.
    await upgrade(engine, audit_key=KEY)
    assert len(await _report(engine)) == 3


async def test_downgrade_restores_the_old_hashes(engine: AsyncEngine) -> None:
    busy, _, _ = await _database_at_0002(engine)
    async with engine.connect() as connection:
        before = (
            (await connection.execute(select(_old_events()).order_by("sequence"))).mappings().all()
        )
    await upgrade(engine, audit_key=KEY)
    await downgrade(engine, "0002")
    async with engine.connect() as connection:
        after = (
            (await connection.execute(select(_old_events()).order_by("sequence"))).mappings().all()
        )
    assert [dict(row) for row in after] == [dict(row) for row in before]
    assert all(row["organization_id"] == busy for row in after)
