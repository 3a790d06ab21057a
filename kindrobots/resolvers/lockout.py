"""Sign-in lockout: failures counted per account and per address, in the database so that
every instance agrees.

Per account, failures within ``KR_LOCKOUT_WINDOW`` seconds slow sign-in down from
``KR_LOCKOUT_SLOWDOWN_AFTER`` on (each further attempt waits a doubling delay, capped at
a minute, and is refused with RATE_LIMITED and ``retryAfter`` before then) and at
``KR_LOCKOUT_THRESHOLD`` lock the account for ``KR_LOCKOUT_SECONDS``. During the lock
every attempt, the right password too, costs one hash and gets the wrong password's
answer. Per address, ``KR_LOCKOUT_IP_THRESHOLD`` failures in a window refuse that
address with RATE_LIMITED until the window ends: that count includes unknown emails,
which create no row of their own, so guessing emails grows nothing without bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.config import Settings
from kindrobots.db.models import SignInThrottle, User
from kindrobots.resolvers import security_events

MAX_DELAY_SECONDS = 60


@dataclass(frozen=True)
class Gate:
    """What may happen to a sign-in attempt before its password is checked."""

    locked: bool = False  # the account is locked: answer as for a wrong password
    retry_after: int | None = None  # refuse with RATE_LIMITED, before any hash


def _account_key(user: User) -> str:
    return f"user:{user.id}"


def _ip_key(ip: str) -> str:
    return f"ip:{ip}"


def _stale(row: SignInThrottle, now: datetime, settings: Settings) -> bool:
    """The counts no longer apply: the lock has expired, or the window has ended."""
    if row.locked_until is not None:
        return row.locked_until <= now
    return row.window_started_at + timedelta(seconds=settings.lockout_window) <= now


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


def delay_after(failures: int, settings: Settings) -> int:
    """Seconds an account with ``failures`` recent failures waits between attempts."""
    if failures < settings.lockout_slowdown_after:
        return 0
    return int(min(2 ** (failures - settings.lockout_slowdown_after), MAX_DELAY_SECONDS))


async def check(
    session: AsyncSession, now: datetime, settings: Settings, user: User | None, ip: str | None
) -> Gate:
    keys = ([_ip_key(ip)] if ip else []) + ([_account_key(user)] if user else [])
    if not keys:
        return Gate()
    rows = {
        row.key: row
        for row in await session.scalars(select(SignInThrottle).where(SignInThrottle.key.in_(keys)))
        if not _stale(row, now, settings)
    }
    by_ip = rows.get(_ip_key(ip)) if ip else None
    if by_ip is not None and by_ip.failures >= settings.lockout_ip_threshold:
        end = by_ip.window_started_at + timedelta(seconds=settings.lockout_window)
        return Gate(retry_after=_seconds(end - now))
    account = rows.get(_account_key(user)) if user else None
    if account is None:
        return Gate()
    if account.locked_until is not None:
        return Gate(locked=True)
    wait = account.last_failure_at + timedelta(seconds=delay_after(account.failures, settings))
    if wait > now:
        return Gate(retry_after=_seconds(wait - now))
    return Gate()


async def _count(
    session: AsyncSession, now: datetime, settings: Settings, key: str
) -> SignInThrottle:
    """One more failure under ``key``, under a row lock so concurrent failures all count."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(
        insert(SignInThrottle)
        .values(key=key, window_started_at=now, failures=0, last_failure_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    row = await session.scalar(
        select(SignInThrottle)
        .where(SignInThrottle.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert row is not None
    if _stale(row, now, settings):
        row.window_started_at = now
        row.failures = 0
        row.locked_until = None
    row.failures += 1
    row.last_failure_at = now
    await session.flush()
    return row


async def record_failure(
    session: AsyncSession,
    now: datetime,
    settings: Settings,
    user: User | None,
    ip: str | None,
    *,
    locked: bool,
) -> None:
    """Count a refused sign-in and record its security events. An attempt on a locked
    account neither counts nor extends the lock: it is ``signin.locked``."""
    if ip:
        await _count(session, now, settings, _ip_key(ip))
    if locked:
        user_id = user.id if user else None
        await security_events.record(
            session, None, now, security_events.SIGNIN_LOCKED, user_id=user_id, ip=ip
        )
        return
    if user is None:
        await security_events.record(session, None, now, security_events.SIGNIN_FAILED, ip=ip)
        return
    row = await _count(session, now, settings, _account_key(user))
    await security_events.record(
        session,
        None,
        now,
        security_events.SIGNIN_FAILED,
        user_id=user.id,
        ip=ip,
        details={"failures": row.failures},
    )
    if row.failures >= settings.lockout_threshold and row.locked_until is None:
        row.locked_until = now + timedelta(seconds=settings.lockout_seconds)
        await session.flush()
        await security_events.record(
            session,
            None,
            now,
            security_events.ACCOUNT_LOCKED,
            user_id=user.id,
            ip=ip,
            details={"failures": row.failures, "lockedUntil": row.locked_until.isoformat()},
        )


async def reset(session: AsyncSession, user: User) -> None:
    """A successful sign-in clears the account's failures (not the address's)."""
    await session.execute(delete(SignInThrottle).where(SignInThrottle.key == _account_key(user)))


async def purge_sign_in_throttles(session: AsyncSession, now: datetime, settings: Settings) -> int:
    """Delete rows whose window has ended and whose lock, if any, has expired."""
    window_start = now - timedelta(seconds=settings.lockout_window)
    result = await session.execute(
        delete(SignInThrottle).where(
            SignInThrottle.window_started_at <= window_start,
            or_(SignInThrottle.locked_until.is_(None), SignInThrottle.locked_until <= now),
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
