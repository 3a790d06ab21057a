"""The ``kindrobots`` command: serve, migrate, schema, keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from kindrobots.config import (
    ConfigError,
    Settings,
    format_keys,
    generate_audit_key,
    generate_key,
    load_settings,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from kindrobots.context import Services
    from kindrobots.resolvers.containment import Closing

CONTAINMENT_COMMANDS = frozenset(
    {
        ("keys", "rotate-signing"),
        ("org", "suspend"),
        ("org", "restore"),
        ("org", "rotate-keys"),
        ("org", "revoke-sessions"),
    }
)


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
    from kindrobots.resolvers import security_events
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
            async with services.write() as session:
                await security_events.record(
                    session,
                    CLI,
                    datetime.now(UTC),
                    security_events.KEYS_ROTATED,
                    details={
                        "activeKey": keyring.active_key_id,
                        "rotated": report.rotated,
                        "failed": report.failed,
                    },
                )
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


async def _with_services(settings: Settings, job: Callable[[Services], Awaitable[int]]) -> int:
    from kindrobots.server import create_services

    services = create_services(settings)
    try:
        return await job(services)
    except (OSError, SQLAlchemyError) as exc:
        sys.stderr.write(f"kindrobots: the database is unreachable ({type(exc).__name__})\n")
        return 1
    finally:
        if services.stripe is not None:
            await services.stripe.close()
        if services.redis is not None:
            await services.redis.aclose()
        await services.engine.dispose()


def _org_set_tier(settings: Settings, reference: str, tier_name: str) -> int:
    from kindrobots.auth.principals import CLI
    from kindrobots.billing.plans import Tier
    from kindrobots.resolvers import billing

    try:
        tier = Tier(tier_name.upper())
    except ValueError:
        sys.stderr.write(f"kindrobots: unknown tier (one of {', '.join(t.value for t in Tier)})\n")
        return 2

    async def job(services: Services) -> int:
        async with services.write() as session:
            organization = await billing.find_organization(session, reference)
            if organization is None:
                sys.stderr.write("kindrobots: no such organization\n")
                return 1
            changed = await billing.set_tier(session, CLI, datetime.now(UTC), organization.id, tier)
        sys.stdout.write(f"{organization.slug}: {tier.value}{'' if changed else ' (unchanged)'}\n")
        return 0

    return asyncio.run(_with_services(settings, job))


async def billing_sync(services: Services, reference: str | None = None) -> tuple[int, int, int]:
    """Re-read every customer's (or one organization's) subscriptions from Stripe and
    repair local state: (organizations checked, changed, failed)."""
    from kindrobots.auth.principals import CLI
    from kindrobots.billing.stripe_client import StripeUnavailable
    from kindrobots.resolvers import billing

    assert services.stripe is not None
    organization_id = None
    if reference is not None:
        async with services.read() as session:
            organization = await billing.find_organization(session, reference)
        if organization is None:
            raise LookupError(reference)
        organization_id = organization.id
    async with services.read() as session:
        pairs = await billing.customers(session, organization_id)
    changed = failed = 0
    for org, customer in pairs:
        try:
            if await billing.sync_organization(
                services.write,
                services.stripe,
                CLI,
                datetime.now(UTC),
                services.settings,
                org,
                customer,
            ):
                changed += 1
        except StripeUnavailable:
            failed += 1
    return len(pairs), changed, failed


def _billing_sync(settings: Settings, reference: str | None) -> int:
    if not settings.billing_enabled:
        sys.stderr.write("kindrobots: billing is not configured (KR_STRIPE_SECRET_KEY)\n")
        return 2

    async def job(services: Services) -> int:
        try:
            checked, changed, failed = await billing_sync(services, reference)
        except LookupError:
            sys.stderr.write("kindrobots: no such organization\n")
            return 1
        sys.stdout.write(f"checked {checked}, repaired {changed}, failed {failed}\n")
        return 1 if failed else 0

    return asyncio.run(_with_services(settings, job))


def _security_purge(settings: Settings) -> int:
    from kindrobots.resolvers import lockout, security_events

    async def job(services: Services) -> int:
        now = datetime.now(UTC)
        async with services.write() as session:
            events = await security_events.purge_security_events(session, now, settings)
            throttles = await lockout.purge_sign_in_throttles(session, now, settings)
        sys.stdout.write(f"purged {events} security events, {throttles} sign-in counters\n")
        return 0

    return asyncio.run(_with_services(settings, job))


def _parse_time(option: str, value: str | None) -> datetime | None:
    """An ISO-8601 time for the command line (one without a zone is UTC); ValueError
    carries the one line to print."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{option}: not an ISO-8601 time (e.g. 2026-01-31T09:00:00Z): {value[:40]!r}"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


async def _organization_or_none(services: Services, reference: str) -> uuid.UUID | None:
    from kindrobots.resolvers import billing

    async with services.read() as session:
        organization = await billing.find_organization(session, reference)
    if organization is None:
        sys.stderr.write("kindrobots: no such organization\n")
        return None
    return organization.id


def _org_export(settings: Settings, args: argparse.Namespace) -> int:
    from kindrobots.auth.principals import CLI
    from kindrobots.resolvers import data_rights

    async def job(services: Services) -> int:
        organization_id = await _organization_or_none(services, args.organization)
        if organization_id is None:
            return 1
        try:
            out = (
                await asyncio.to_thread(open, args.output, "w", encoding="utf-8")
                if args.output
                else sys.stdout
            )
        except OSError as exc:
            sys.stderr.write(f"kindrobots: cannot write {args.output}: {exc.strerror}\n")
            return 1
        try:
            now = datetime.now(UTC)
            async with services.write() as session:
                await data_rights.record_export(session, CLI, now, organization_id)
            # Rows stream out as they are read: a large organization never sits in memory.
            async with services.read() as session:
                export = await data_rights.export_organization(session, now, organization_id)
                async for chunk in data_rights.json_chunks(export):
                    out.write(chunk)
        finally:
            if out is not sys.stdout:
                out.close()
        return 0

    return asyncio.run(_with_services(settings, job))


def _org_delete(settings: Settings, args: argparse.Namespace) -> int:
    from kindrobots.auth.principals import CLI
    from kindrobots.errors import PublicError
    from kindrobots.resolvers import data_rights

    async def job(services: Services) -> int:
        organization_id = await _organization_or_none(services, args.organization)
        if organization_id is None:
            return 1
        try:
            async with services.write() as session:
                deleted = await data_rights.delete_organization(
                    session, CLI, datetime.now(UTC), organization_id, args.confirm
                )
        except PublicError as exc:
            sys.stderr.write(f"kindrobots: {exc.message}\n")
            return 1
        await services.broker.publish(
            data_rights.CLOSE_CHANNEL, data_rights.closing_message(organization_id)
        )
        sys.stdout.write(
            f"deleted organization {organization_id}: {sum(deleted.rows.values())} rows\n"
        )
        return 0

    return asyncio.run(_with_services(settings, job))


def _contain(settings: Settings, args: argparse.Namespace) -> int:
    """``staff``, ``org suspend|restore|rotate-keys|revoke-sessions``, ``user …`` and
    ``keys rotate-signing``: one transaction as the ``cli`` actor, then the announcement
    that closes open connections on every instance (through Redis, when configured)."""
    from kindrobots.auth.principals import CLI
    from kindrobots.errors import PublicError
    from kindrobots.resolvers import billing, containment

    async def job(services: Services) -> int:
        now = datetime.now(UTC)
        command = f"{args.command} {_subcommand(args)}"
        closing: containment.Closing | None = None
        try:
            async with services.write() as session:
                if args.command == "keys":
                    kid = await containment.rotate_signing_key(session, CLI, now, services.signer)
                    outcome = f"signing with {kid}; earlier keys verify until their tokens expire"
                elif args.command == "org":
                    found = await billing.find_organization(session, args.organization)
                    if found is None:
                        sys.stderr.write("kindrobots: no such organization\n")
                        return 1
                    closing, outcome = await _org_action(session, now, args, found.id)
                    outcome = f"{found.slug}: {outcome}"
                else:
                    user = await containment.find_user(session, args.user)
                    if user is None:
                        sys.stderr.write("kindrobots: no such user\n")
                        return 1
                    closing, outcome = await _user_action(session, now, args, user.id)
                    outcome = f"{user.email}: {outcome}"
        except PublicError as error:
            sys.stderr.write(f"kindrobots: {command}: {error.message}\n")
            return 1
        if args.command == "keys":
            await containment.announce_signing_keys(services.broker)
        await containment.announce(services.broker, closing)
        sys.stdout.write(outcome + "\n")
        return 0

    return asyncio.run(_with_services(settings, job))


def _org_delete_end_user(settings: Settings, args: argparse.Namespace) -> int:
    from kindrobots.auth.principals import CLI
    from kindrobots.errors import PublicError
    from kindrobots.ids import from_global_id
    from kindrobots.resolvers import data_rights

    async def job(services: Services) -> int:
        organization_id = await _organization_or_none(services, args.organization)
        if organization_id is None:
            return 1
        try:
            project_id = from_global_id(args.project, "Project") if args.project else None
            async with services.write() as session:
                deleted = await data_rights.delete_end_user_data(
                    session, CLI, datetime.now(UTC), organization_id, args.subject, project_id
                )
        except PublicError as exc:
            sys.stderr.write(f"kindrobots: {exc.message}\n")
            return 1
        sys.stdout.write(
            f"deleted {deleted.conversations} conversations, {deleted.messages} messages\n"
        )
        return 0

    return asyncio.run(_with_services(settings, job))


async def retention_run(services: Services, batch_size: int) -> tuple[int, int, int]:
    """Purge every organization's conversations idle past its retention, one batch per
    unit of work: (organizations purged, conversations, messages)."""
    from kindrobots.resolvers import data_rights

    now = datetime.now(UTC)
    organizations = conversations = messages = 0
    after: uuid.UUID | None = None
    while True:
        async with services.read() as session:
            page = await data_rights.organizations_with_retention(session, after, 100)
        for organization_id in page:
            totals = data_rights.EndUserDeletion(0, 0)
            while True:
                async with services.write() as session:
                    batch = await data_rights.purge_conversations_batch(
                        session, data_rights.RETENTION, now, organization_id, batch_size, totals
                    )
                totals = data_rights.EndUserDeletion(
                    totals.conversations + batch.conversations, totals.messages + batch.messages
                )
                if batch.done:
                    break
            organizations += 1 if totals.conversations else 0
            conversations += totals.conversations
            messages += totals.messages
        if len(page) < 100:
            return organizations, conversations, messages
        after = page[-1]


def _retention_run(settings: Settings, args: argparse.Namespace) -> int:
    async def job(services: Services) -> int:
        organizations, conversations, messages = await retention_run(services, args.batch_size)
        sys.stdout.write(
            f"purged {conversations} conversations ({messages} messages) "
            f"in {organizations} organizations\n"
        )
        return 0

    return asyncio.run(_with_services(settings, job))


def _incident_report(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from kindrobots.errors import PublicError
    from kindrobots.resolvers import billing, incidents

    try:
        since = _parse_time("--since", args.since)
        until = _parse_time("--until", args.until)
        confirmed = _parse_time("--confirmed", args.confirmed)
    except ValueError as exc:
        sys.stderr.write(f"kindrobots: {exc}\n")
        return 2
    assert since is not None  # a required option

    async def job(services: Services) -> int:
        async with services.read() as session:
            organization = await billing.find_organization(session, args.organization)
            if organization is None:
                sys.stderr.write("kindrobots: no such organization\n")
                return 1
            try:
                report = await incidents.incident_report(
                    session, datetime.now(UTC), organization, since, until, confirmed
                )
            except PublicError as exc:
                sys.stderr.write(f"kindrobots: {exc.message}\n")
                return 2
        document = incidents.to_document(report)
        if args.format == "md":
            sys.stdout.write(incidents.to_markdown(document))
        else:
            sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        return 0

    return asyncio.run(_with_services(settings, job))


def _subcommand(args: argparse.Namespace) -> str:
    return str(getattr(args, f"{args.command}_command", ""))


async def _org_action(
    session: AsyncSession, now: datetime, args: argparse.Namespace, organization_id: uuid.UUID
) -> tuple[Closing | None, str]:
    from kindrobots.auth.principals import CLI
    from kindrobots.resolvers import containment

    action = args.org_command
    if action == "suspend":
        closing = await containment.suspend_organization(
            session, CLI, now, organization_id, args.reason
        )
        return closing, "suspended"
    if action == "restore":
        restored = await containment.restore_organization(session, CLI, now, organization_id)
        return None, "restored" if restored else "not suspended"
    if action == "rotate-keys":
        closing = await containment.rotate_organization_keys(session, CLI, now, organization_id)
        return closing, f"{closing.count} project keys rotated"
    closing = await containment.revoke_organization_sessions(session, CLI, now, organization_id)
    return closing, f"{closing.count} sessions revoked"


async def _user_action(
    session: AsyncSession, now: datetime, args: argparse.Namespace, user_id: uuid.UUID
) -> tuple[Closing | None, str]:
    from kindrobots.auth.principals import CLI
    from kindrobots.resolvers import containment

    action = args.user_command if args.command == "user" else args.staff_command
    if args.command == "staff":
        changed = await containment.set_staff(session, CLI, now, user_id, action == "grant")
        state = "staff" if action == "grant" else "not staff"
        return None, state if changed else f"{state} (unchanged)"
    if action == "suspend":
        return await containment.suspend_user(session, CLI, now, user_id, args.reason), "suspended"
    if action == "restore":
        restored = await containment.restore_user(session, CLI, now, user_id)
        return None, "restored" if restored else "not suspended"
    closing = await containment.revoke_user_sessions(session, CLI, now, user_id)
    return closing, f"{closing.count} sessions revoked"


def _containment_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    key_commands: argparse._SubParsersAction[argparse.ArgumentParser],
    org_commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    announce = " (audited; closes open connections on every instance through KR_REDIS_URL)"
    key_commands.add_parser(
        "rotate-signing",
        help="sign session tokens with a new key on every instance; earlier keys verify "
        "until their tokens expire (KR_ACCESS_TOKEN_TTL), then leave the JWKS. The first "
        "run moves KR_SIGNING_KEYS into the database (sealed with KR_ENCRYPTION_KEYS)",
    )
    for name, text in (
        ("suspend", "refuse the organization's members and widgets until restored"),
        ("restore", "lift a suspension"),
        ("rotate-keys", "a new publishable key for every project"),
        ("revoke-sessions", "end every session of every member"),
    ):
        command = org_commands.add_parser(name, help=text + announce)
        command.add_argument("organization", help="organization ID, global ID or slug")
        if name == "suspend":
            command.add_argument("--reason", required=True, help="kept in the audit log")
    user = commands.add_parser("user", help="user containment")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    for name, text in (
        ("suspend", "refuse every call of the user until restored"),
        ("restore", "lift a suspension"),
        ("revoke-sessions", "end every session of the user"),
    ):
        command = user_commands.add_parser(name, help=text + announce)
        command.add_argument("user", help="email, user ID or global ID")
        if name == "suspend":
            command.add_argument("--reason", required=True, help="kept in the audit log")
    staff = commands.add_parser("staff", help="Kind Robots staff (the only way to grant it)")
    staff_commands = staff.add_subparsers(dest="staff_command", required=True)
    for name in ("grant", "revoke"):
        command = staff_commands.add_parser(
            name, help=f"{name} the platform staff flag (audited in the platform chain)"
        )
        command.add_argument("user", help="email, user ID or global ID")


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
    org = commands.add_parser("org", help="organization administration")
    org_commands = org.add_subparsers(dest="org_command", required=True)
    set_tier = org_commands.add_parser("set-tier", help="grant a tier by hand (audited)")
    set_tier.add_argument("organization", help="organization ID, global ID or slug")
    set_tier.add_argument("tier", help="STARTER, PROFESSIONAL or ENTERPRISE")
    org_export = org_commands.add_parser(
        "export", help="write the organization's data as a JSON archive (audited; KR_DATABASE_URL)"
    )
    org_export.add_argument("organization", help="organization ID, global ID or slug")
    org_export.add_argument("--output", help="file to write (default: standard output)")
    org_export.set_defaults(run=_org_export)
    org_delete = org_commands.add_parser(
        "delete", help="delete the organization and all its data for good (audited)"
    )
    org_delete.add_argument("organization", help="organization ID, global ID or slug")
    org_delete.add_argument(
        "--confirm", required=True, metavar="SLUG", help="the organization's slug, typed back"
    )
    org_delete.set_defaults(run=_org_delete)
    org_end_user = org_commands.add_parser(
        "delete-end-user", help="delete one end user's conversations by JWT subject (audited)"
    )
    org_end_user.add_argument("organization", help="organization ID, global ID or slug")
    org_end_user.add_argument("subject", help="the end user's JWT subject")
    org_end_user.add_argument("--project", help="only this project (global ID)")
    org_end_user.set_defaults(run=_org_delete_end_user)
    retention = commands.add_parser("retention", help="conversation retention")
    retention_commands = retention.add_subparsers(dest="retention_command", required=True)
    retention_run_parser = retention_commands.add_parser(
        "run",
        help="purge conversations idle past each organization's conversationRetentionDays; "
        "safe to run from cron on every instance at once (KR_DATABASE_URL)",
    )
    retention_run_parser.add_argument("--batch-size", type=int, default=500)
    retention_run_parser.set_defaults(run=_retention_run)
    incident = commands.add_parser("incident", help="incident response")
    incident_commands = incident.add_subparsers(dest="incident_command", required=True)
    report = incident_commands.add_parser(
        "report",
        help="what a breach notification needs (SECURITY_POLICY 8.3) for one organization",
    )
    report.add_argument("--org", dest="organization", required=True, help="ID or slug")
    report.add_argument("--since", required=True, help="window start (ISO-8601)")
    report.add_argument("--until", help="window end (default: now)")
    report.add_argument("--confirmed", help="when the breach was confirmed (default: now)")
    report.add_argument("--format", choices=("json", "md"), default="json")
    report.set_defaults(run=_incident_report)
    billing = commands.add_parser("billing", help="Stripe billing tools")
    billing_commands = billing.add_subparsers(dest="billing_command", required=True)
    sync = billing_commands.add_parser(
        "sync", help="re-read subscriptions from Stripe and repair local state"
    )
    sync.add_argument("--org", dest="organization", help="only this organization")
    _containment_parsers(commands, key_commands, org_commands)
    security = commands.add_parser("security", help="security events")
    security_commands = security.add_subparsers(dest="security_command", required=True)
    security_commands.add_parser(
        "purge",
        help="delete security events older than KR_SECURITY_EVENT_RETENTION_DAYS and "
        "expired sign-in counters (KR_LOCKOUT_WINDOW); safe to run from cron on every instance",
    )
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
    if getattr(args, "run", None) is not None:
        result: int = args.run(settings, args)
        return result
    if args.command == "migrate":
        _migrate(settings)
    elif args.command == "audit":
        return _audit_verify(settings)
    elif (args.command, _subcommand(args)) in CONTAINMENT_COMMANDS or args.command in (
        "user",
        "staff",
    ):
        return _contain(settings, args)
    elif args.command == "keys":
        return _keys_rotate(settings, args.batch_size)
    elif args.command == "org":
        return _org_set_tier(settings, args.organization, args.tier)
    elif args.command == "billing":
        return _billing_sync(settings, args.organization)
    elif args.command == "security":
        return _security_purge(settings)
    else:
        _serve(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
