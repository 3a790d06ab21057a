"""The ``kindrobots`` command: serve, migrate, schema, keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from kindrobots.config import (
    ConfigError,
    Settings,
    format_keys,
    generate_audit_key,
    generate_key,
    load_settings,
)

if TYPE_CHECKING:
    from kindrobots.context import Services


def _migrate(settings: Settings) -> None:
    from kindrobots.db.engine import create_engine
    from kindrobots.db.migrate import upgrade

    async def run() -> None:
        engine = create_engine(settings)
        try:
            await upgrade(engine, audit_key=settings.audit_key)
        finally:
            await engine.dispose()

    asyncio.run(run())


def _serve(settings: Settings) -> None:
    from kindrobots.server import run

    if settings.is_sqlite:
        # The embedded default needs no separate step: it creates and migrates its own file.
        _migrate(settings)
    run(settings)


def _audit_verify(settings: Settings) -> int:
    from kindrobots.db.audit_chain import verify
    from kindrobots.db.engine import create_engine, create_sessionmaker

    async def run() -> int:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                report = await verify(session, settings.audit_key)
        finally:
            await engine.dispose()
        for link in report.broken:
            chain = (
                "platform"
                if link.organization_id is None
                else f"organization {link.organization_id}"
            )
            where = (
                f"event {link.sequence} ({link.event_id})"
                if link.event_id is not None
                else f"head (sequence {link.sequence})"
            )
            sys.stdout.write(f"BROKEN {chain} at {where}: {link.reason}\n")
        state = "intact" if not report.broken else f"{len(report.broken)} broken chain(s)"
        sys.stdout.write(f"audit log: {report.checked} events checked, {state}\n")
        return 1 if report.broken else 0

    return asyncio.run(run())


@dataclass
class RotationReport:
    rotated: int = 0
    current: int = 0
    failed: int = 0


async def rotate_keys(services: Services, batch_size: int) -> RotationReport:
    """Re-seal every secret under the first key: one unit of work per batch, so an
    interrupted run keeps what it committed and the next run continues from there."""
    from kindrobots.auth.principals import CLI
    from kindrobots.resolvers.credentials import count_under_active_key, rotate_batch

    keyring = services.keyring
    report, failed = RotationReport(), set[uuid.UUID]()
    async with services.read() as session:
        report.current = await count_under_active_key(session, keyring)
    while True:
        async with services.write() as session:
            batch = await rotate_batch(session, CLI, datetime.now(UTC), keyring, batch_size, failed)
        report.rotated += batch.rotated
        failed.update(batch.failed)
        if batch.done:
            report.failed = len(failed)
            return report


def _keys_rotate(settings: Settings, batch_size: int) -> int:
    from kindrobots.server import create_services

    async def run() -> int:
        services = create_services(settings)
        try:
            report = await rotate_keys(services, batch_size)
        finally:
            if services.redis is not None:
                await services.redis.aclose()
            await services.engine.dispose()
        sys.stdout.write(
            f"re-encrypted {report.rotated}, already under {services.keyring.active_key_id} "
            f"{report.current}, failed {report.failed}\n"
        )
        return 1 if report.failed else 0

    return asyncio.run(run())


def _schema() -> None:
    from kindrobots.schema import build_schema

    sys.stdout.write(build_schema().as_str() + "\n")


def _keys_generate() -> None:
    sys.stdout.write(f"KR_ENCRYPTION_KEYS={format_keys((generate_key('enc'),))}\n")
    sys.stdout.write(f"KR_SIGNING_KEYS={format_keys((generate_key('sig'),))}\n")
    sys.stdout.write(f"KR_AUDIT_KEY={generate_audit_key()}\n")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="kindrobots", description="Kind Robots platform server.")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP and WebSocket server")
    commands.add_parser("migrate", help="bring the database schema up to date")
    commands.add_parser("schema", help="print the GraphQL schema (SDL)")
    keys = commands.add_parser("keys", help="key management")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    key_commands.add_parser(
        "generate", help="print fresh KR_ENCRYPTION_KEYS, KR_SIGNING_KEYS and KR_AUDIT_KEY"
    )
    rotate = key_commands.add_parser(
        "rotate", help="re-encrypt every stored secret under the first KR_ENCRYPTION_KEYS key"
    )
    rotate.add_argument("--batch-size", type=int, default=100)
    audit = commands.add_parser("audit", help="audit log tools")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check every audit hash chain and its sealed head")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "schema":
        _schema()
        return 0
    if args.command == "keys" and args.keys_command == "generate":
        _keys_generate()
        return 0
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"kindrobots: {exc}\n")
        return 2
    from kindrobots.logs import configure_logging

    configure_logging(settings)
    if args.command == "migrate":
        _migrate(settings)
    elif args.command == "audit":
        return _audit_verify(settings)
    elif args.command == "keys":
        return _keys_rotate(settings, args.batch_size)
    else:
        _serve(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
