"""The ``kindrobots`` command: serve, migrate, schema, keys.

Expected failures (a bad setting or argument, a database or Redis that cannot be reached,
an unmigrated database, a port in use) end a command with one line on stderr and a
non-zero exit, never a traceback: commands raise :class:`CliError`, and :func:`main`
turns configuration and connection errors into one too.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import TYPE_CHECKING, NoReturn

import redis.exceptions
from sqlalchemy.exc import DBAPIError

from kindrobots.config import (
    ConfigError,
    Settings,
    display_url,
    format_keys,
    generate_audit_key,
    generate_key,
    load_settings,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

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


class CliError(Exception):
    """An expected failure of a command: :func:`main` prints ``kindrobots: <message>`` as
    one line on stderr and exits with ``status`` (2 for configuration and usage, else 1).
    The message must hold no secret: it is shown as it is."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# SQLSTATEs of a connection the server refused: class 28 (credentials), 3D000 (no such
# database). Each is the operator's KR_DATABASE_URL to fix, not a bug to trace.
REFUSED_CREDENTIALS, NO_SUCH_DATABASE = "28", "3D000"
MAX_CAUSES = 8


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps (a DBAPI error's driver error, causes, contexts)."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < MAX_CAUSES:
        seen.append(current)
        yield current
        wrapped = current.orig if isinstance(current, DBAPIError) else None
        if isinstance(wrapped, BaseException):
            current = wrapped
        else:
            current = current.__cause__ or current.__context__


NETWORK_ERRNOS = frozenset(
    (errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT)
)


def _network_error(error: BaseException) -> bool:
    """A connection that could not be made or was lost; not a file a command could not
    write, which is an OSError too."""
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if not isinstance(error, OSError):
        return False
    # asyncio's "Multiple exceptions: …" when every address of a host name failed.
    return error.errno in NETWORK_ERRNOS or (type(error) is OSError and error.errno is None)


def backing_failure(settings: Settings, error: BaseException) -> CliError | None:
    """The one line for a database or Redis that cannot serve the command, or None for
    anything else (a bug, whose traceback is wanted). URLs are shown without credentials."""
    from kindrobots.security.errors import is_unavailable
    from kindrobots.security.redaction import redact

    causes = list(_causes(error))
    database = f"the database at {display_url(settings.database_url)} (KR_DATABASE_URL)"
    innermost = next((link for link in reversed(causes) if _network_error(link)), None)
    reason = redact(str(innermost) or type(innermost).__name__)[:200] if innermost else None
    if any(
        isinstance(link, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError)
        for link in causes
    ):
        where = f"Redis at {display_url(settings.redis_url)} (KR_REDIS_URL)"
        return CliError(f"cannot reach {where}: {reason or type(causes[-1]).__name__}")
    for link in causes:
        sqlstate = getattr(link, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(REFUSED_CREDENTIALS):
            return CliError(f"{database} refused the credentials it was given")
        if sqlstate == NO_SUCH_DATABASE:
            return CliError(f"{database} does not exist on that server")
    if innermost is not None or is_unavailable(error):
        return CliError(f"cannot reach {database}: {reason or type(causes[-1]).__name__}")
    return None


async def _check_migrated(engine: AsyncEngine) -> None:
    """Refuse a database behind this code's migrations (the embedded one migrates itself)."""
    from kindrobots.db.migrate import migration_state

    async with engine.connect() as connection:
        state = await migration_state(connection)
    if state.behind:
        raise CliError(state.describe())


def _require_migrated(settings: Settings) -> None:
    from kindrobots.db.engine import create_engine

    async def run() -> None:
        engine = create_engine(settings)
        try:
            await _check_migrated(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


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
    from kindrobots.server import ListenError, run

    if settings.is_sqlite:
        # The embedded default needs no separate step: it creates and migrates its own file.
        _migrate(settings)
    else:
        _require_migrated(settings)
    try:
        run(settings)
    except ListenError as error:
        raise CliError(str(error)) from None


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
        await _check_migrated(services.engine)
        return await job(services)
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
        raise CliError(f"unknown tier (one of {', '.join(t.value for t in Tier)})", 2) from None

    async def job(services: Services) -> int:
        async with services.write() as session:
            organization = await billing.find_organization(session, reference)
            if organization is None:
                raise CliError("no such organization")
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
        raise CliError("billing is not configured (KR_STRIPE_SECRET_KEY)", 2)

    async def job(services: Services) -> int:
        try:
            checked, changed, failed = await billing_sync(services, reference)
        except LookupError:
            raise CliError("no such organization") from None
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
    from kindrobots.resolvers import containment, data_rights

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
        await containment.announce(
            services.broker,
            containment.organization_deleted(organization_id, data_rights.DELETED_REASON),
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
    commands: argparse._SubParsersAction[Parser],
    key_commands: argparse._SubParsersAction[Parser],
    org_commands: argparse._SubParsersAction[Parser],
) -> None:
    announce = " (audited; closes open connections on every instance through KR_REDIS_URL)"
    add_command(
        key_commands,
        "rotate-signing",
        "sign session tokens with a new key on every instance; earlier keys verify "
        "until their tokens expire (KR_ACCESS_TOKEN_TTL), then leave the JWKS. The first "
        "run moves KR_SIGNING_KEYS into the database (sealed with KR_ENCRYPTION_KEYS)",
        SERVICES,
    )
    for name, text in (
        ("suspend", "refuse the organization's members and widgets until restored"),
        ("restore", "lift a suspension"),
        ("rotate-keys", "a new publishable key for every project"),
        ("revoke-sessions", "end every session of every member"),
    ):
        command = add_command(org_commands, name, text + announce, SERVICES)
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
        command = add_command(user_commands, name, text + announce, SERVICES)
        command.add_argument("user", help="email, user ID or global ID")
        if name == "suspend":
            command.add_argument("--reason", required=True, help="kept in the audit log")
    staff = commands.add_parser("staff", help="Kind Robots staff (the only way to grant it)")
    staff_commands = staff.add_subparsers(dest="staff_command", required=True)
    for name in ("grant", "revoke"):
        command = add_command(
            staff_commands,
            name,
            f"{name} the platform staff flag (audited in the platform chain)",
            SERVICES,
        )
        command.add_argument("user", help="email, user ID or global ID")


def _schema() -> None:
    from kindrobots.schema import build_schema

    sys.stdout.write(build_schema().as_str() + "\n")


def _keys_generate() -> None:
    sys.stdout.write(f"KR_ENCRYPTION_KEYS={format_keys((generate_key('enc'),))}\n")
    sys.stdout.write(f"KR_SIGNING_KEYS={format_keys((generate_key('sig'),))}\n")
    sys.stdout.write(f"KR_AUDIT_KEY={generate_audit_key()}\n")


COMMON = ("env", "data_dir", "log_level", "log_format")
DATABASE = ("database_url", "database_ssl", "db_pool_size", "db_max_overflow", "db_pool_timeout")
# Everything create_services reads: the commands that run business rules build them all.
SERVICES = (
    *DATABASE,
    "redis_url",
    "redis_max_connections",
    "broker_reconnect_deadline",
    "encryption_keys",
    "signing_keys",
    "audit_key",
    "public_url",
    "access_token_ttl",
    "outbound_allow",
    "max_feeds_per_user",
    "max_feeds_per_organization",
    "rate_limit_failure",
    "stripe_secret_key",
    "stripe_webhook_secret",
    "stripe_api_base",
)
EVERY_SETTING = ("*",)


def env_names(fields: tuple[str, ...]) -> list[str]:
    """The KR_* variables of ``fields`` (Settings field names; ``*`` for all of them)."""
    names = list(Settings.model_fields) if fields == EVERY_SETTING else [*COMMON, *fields]
    unknown = [name for name in names if name not in Settings.model_fields]
    if unknown:
        raise LookupError(f"not settings: {', '.join(unknown)}")
    return [f"KR_{name.upper()}" for name in dict.fromkeys(names)]


class Parser(argparse.ArgumentParser):
    """A usage error is one line too, naming the help to read."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (usage: {self.prog} --help)\n")


def add_command(
    commands: argparse._SubParsersAction[Parser],
    name: str,
    help: str,
    reads: tuple[str, ...] | None,
) -> Parser:
    """A command whose --help ends with the KR_* settings it reads (``reads``: Settings
    field names besides COMMON, EVERY_SETTING, or None for a command that loads none)."""
    if reads is None:
        epilog = "Reads no KR_* setting."
    else:
        epilog = (
            f"Reads {', '.join(env_names(reads))} (environment or ./.env); every KR_* "
            "variable is validated first. See README, Configuration."
        )
    command = commands.add_parser(name, help=help, description=help, epilog=epilog)
    command.set_defaults(reads=reads)
    return command


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be a number from 0 to 65535")
    return port


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="kindrobots", description="Kind Robots platform server.")
    root.add_argument("--version", action="version", version=f"kindrobots {version('kindrobots')}")
    commands = root.add_subparsers(dest="command", required=True)
    serve = add_command(commands, "serve", "run the HTTP and WebSocket server", EVERY_SETTING)
    serve.add_argument("--host", help="listen address (instead of KR_HOST)")
    serve.add_argument("--port", type=port_number, help="listen port (instead of KR_PORT)")
    add_command(
        commands, "migrate", "bring the database schema up to date", (*DATABASE, "audit_key")
    )
    add_command(commands, "schema", "print the GraphQL schema (SDL)", None)
    keys = commands.add_parser("keys", help="key management")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    add_command(
        key_commands,
        "generate",
        "print fresh KR_ENCRYPTION_KEYS, KR_SIGNING_KEYS and KR_AUDIT_KEY",
        None,
    )
    rotate = add_command(
        key_commands,
        "rotate",
        "re-encrypt every stored secret under the first KR_ENCRYPTION_KEYS key",
        SERVICES,
    )
    rotate.add_argument("--batch-size", type=int, default=100)
    audit = commands.add_parser("audit", help="audit log tools")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    add_command(
        audit_commands,
        "verify",
        "check every audit hash chain and its sealed head",
        (*DATABASE, "audit_key"),
    )
    org = commands.add_parser("org", help="organization administration")
    org_commands = org.add_subparsers(dest="org_command", required=True)
    set_tier = add_command(org_commands, "set-tier", "grant a tier by hand (audited)", SERVICES)
    set_tier.add_argument("organization", help="organization ID, global ID or slug")
    set_tier.add_argument("tier", help="STARTER, PROFESSIONAL or ENTERPRISE")
    org_export = add_command(
        org_commands,
        "export",
        "write the organization's data as a JSON archive (audited)",
        SERVICES,
    )
    org_export.add_argument("organization", help="organization ID, global ID or slug")
    org_export.add_argument("--output", help="file to write (default: standard output)")
    org_export.set_defaults(run=_org_export)
    org_delete = add_command(
        org_commands,
        "delete",
        "delete the organization and all its data for good (audited)",
        SERVICES,
    )
    org_delete.add_argument("organization", help="organization ID, global ID or slug")
    org_delete.add_argument(
        "--confirm", required=True, metavar="SLUG", help="the organization's slug, typed back"
    )
    org_delete.set_defaults(run=_org_delete)
    org_end_user = add_command(
        org_commands,
        "delete-end-user",
        "delete one end user's conversations by JWT subject (audited)",
        SERVICES,
    )
    org_end_user.add_argument("organization", help="organization ID, global ID or slug")
    org_end_user.add_argument("subject", help="the end user's JWT subject")
    org_end_user.add_argument("--project", help="only this project (global ID)")
    org_end_user.set_defaults(run=_org_delete_end_user)
    retention = commands.add_parser("retention", help="conversation retention")
    retention_commands = retention.add_subparsers(dest="retention_command", required=True)
    retention_run_parser = add_command(
        retention_commands,
        "run",
        "purge conversations idle past each organization's conversationRetentionDays; "
        "safe to run from cron on every instance at once",
        SERVICES,
    )
    retention_run_parser.add_argument("--batch-size", type=int, default=500)
    retention_run_parser.set_defaults(run=_retention_run)
    incident = commands.add_parser("incident", help="incident response")
    incident_commands = incident.add_subparsers(dest="incident_command", required=True)
    report = add_command(
        incident_commands,
        "report",
        "what a breach notification needs (SECURITY_POLICY 8.3) for one organization",
        SERVICES,
    )
    report.add_argument("--org", dest="organization", required=True, help="ID or slug")
    report.add_argument("--since", required=True, help="window start (ISO-8601)")
    report.add_argument("--until", help="window end (default: now)")
    report.add_argument("--confirmed", help="when the breach was confirmed (default: now)")
    report.add_argument("--format", choices=("json", "md"), default="json")
    report.set_defaults(run=_incident_report)
    billing = commands.add_parser("billing", help="Stripe billing tools")
    billing_commands = billing.add_subparsers(dest="billing_command", required=True)
    sync = add_command(
        billing_commands,
        "sync",
        "re-read subscriptions from Stripe and repair local state",
        (
            *SERVICES,
            "stripe_price_starter",
            "stripe_price_professional",
            "stripe_price_enterprise",
            "billing_grace_days",
        ),
    )
    sync.add_argument("--org", dest="organization", help="only this organization")
    _containment_parsers(commands, key_commands, org_commands)
    security = commands.add_parser("security", help="security events")
    security_commands = security.add_subparsers(dest="security_command", required=True)
    add_command(
        security_commands,
        "purge",
        "delete security events older than KR_SECURITY_EVENT_RETENTION_DAYS and "
        "expired sign-in counters (KR_LOCKOUT_WINDOW); safe to run from cron on every instance",
        (*SERVICES, "security_event_retention_days", "lockout_window", "lockout_seconds"),
    )
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _dispatch(args)
    except CliError as error:
        # One line whatever the message holds: a supervisor shows the last line.
        sys.stderr.write(f"kindrobots: {' '.join(str(error).splitlines())}\n")
        return error.status


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name)
        for name in ("host", "port")
        if getattr(args, name, None) is not None
    }
    try:
        return load_settings(**overrides)
    except ConfigError as error:
        raise CliError(str(error), 2) from None


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "schema":
        _schema()
        return 0
    if args.command == "keys" and args.keys_command == "generate":
        _keys_generate()
        return 0
    settings = _settings(args)
    from kindrobots.logs import configure_logging

    configure_logging(settings)
    try:
        return _run(args, settings)
    except CliError:
        raise
    except Exception as error:
        failure = backing_failure(settings, error)
        if failure is None:
            raise
        raise failure from None


def _run(args: argparse.Namespace, settings: Settings) -> int:
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
