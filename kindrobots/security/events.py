"""The structured line of a security event, and the throttle in front of refusal events.

Refusals (a permission denied, an SSRF target, a widget's origin or end-user token, a
Stripe signature) are mostly caused by callers who are not signed in: a row per refusal
would let anyone turn requests into database writes. :class:`Refusals` therefore writes
the *first* refusal of each kind from each source (an address, or a fixed key such as the
permission's field) in a window of ``KR_SECURITY_EVENT_THROTTLE_SECONDS``, and at most
``KR_SECURITY_EVENT_THROTTLE_ROWS`` rows of one event kind per window whatever the
sources; later identical refusals in the window are only counted, and the next row
written for that source carries ``repeated``: how many were not written since. Every
refusal still gets its log line (``suppressed: true`` when no row was written) and still
counts towards metrics and alerts. Rows are written by background tasks (at most
``MAX_PENDING`` at once, beyond that they are counted as suppressed), so a refusal never
waits on, or deadlocks with, the transaction of the request it refused. The throttle is
per instance; its memory is bounded by ``MAX_SOURCES``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("kindrobots.security")

MAX_SOURCES = 10_000
MAX_PENDING = 64

PERMISSION_DENIED = "permission.denied"
SSRF_REFUSED = "ssrf.refused"
WIDGET_ORIGIN_REFUSED = "widget.origin_refused"
WIDGET_TOKEN_REFUSED = "widget.token_refused"  # noqa: S105 (an event name)
WEBHOOK_SIGNATURE_FAILED = "stripe_webhook.signature_failed"


def log_event(
    event: str,
    *,
    user_id: object = None,
    organization_id: object = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
    suppressed: bool = False,
) -> None:
    """One line with a stable ``event`` field an operator can search and alert on."""
    logger.warning(
        "security event %s",
        event,
        extra={
            "event": event,
            "user_id": str(user_id) if user_id else None,
            "organization_id": str(organization_id) if organization_id else None,
            "ip": ip,
            "details": details or {},
            **({"suppressed": True} if suppressed else {}),
        },
    )


@dataclass
class _Source:
    window_start: float
    repeated: int = 0


# Writes one row: (event, ip, user_id, details).
Store = Callable[[str, str | None, uuid.UUID | None, dict[str, Any]], Awaitable[None]]
# Counts an occurrence that no row carries (metrics and alerts still see it).
Observe = Callable[[str, str | None], None]


class Refusals:
    """Throttled recording of refusal events (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        observe: Observe,
        *,
        window: float,
        rows_per_window: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._observe = observe
        self._window = window
        self._rows_per_window = rows_per_window
        self._clock = clock
        self._sources: OrderedDict[tuple[str, str], _Source] = OrderedDict()
        self._rows: dict[str, tuple[float, int]] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def refused(
        self,
        event: str,
        *,
        source: str,
        ip: str | None,
        details: dict[str, Any],
        user_id: uuid.UUID | None = None,
    ) -> None:
        """A refusal of ``event`` caused by ``source`` (never an ID the caller chose)."""
        now = self._clock()
        key = (event, source)
        entry = self._sources.get(key)
        if entry is not None and now - entry.window_start < self._window:
            entry.repeated += 1
            self._suppress(event, ip, user_id, details)
            return
        started, rows = self._rows.get(event, (now, 0))
        if now - started >= self._window:
            started, rows = now, 0
        if rows >= self._rows_per_window or len(self._pending) >= MAX_PENDING:
            self._rows[event] = (started, rows)
            if entry is not None:
                entry.repeated += 1
            self._suppress(event, ip, user_id, details)
            return
        self._rows[event] = (started, rows + 1)
        repeated = entry.repeated if entry is not None else 0
        self._sources[key] = _Source(now)
        self._sources.move_to_end(key)
        while len(self._sources) > MAX_SOURCES:
            self._sources.popitem(last=False)
        row = {**details, "repeated": repeated} if repeated else details
        task = asyncio.get_running_loop().create_task(self._write(event, ip, user_id, row))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _suppress(
        self, event: str, ip: str | None, user_id: uuid.UUID | None, details: dict[str, Any]
    ) -> None:
        log_event(event, user_id=user_id, ip=ip, details=details, suppressed=True)
        self._observe(event, None)

    async def _write(
        self, event: str, ip: str | None, user_id: uuid.UUID | None, details: dict[str, Any]
    ) -> None:
        try:
            await self._store(event, ip, user_id, details)
        except Exception:
            # The row is lost, the refusal was not: log it, and still count it.
            logger.exception("security event %s could not be stored", event)
            self._suppress(event, ip, user_id, details)

    async def drain(self) -> None:
        """Wait for the rows being written (shutdown, and tests)."""
        await asyncio.gather(*self._pending, return_exceptions=True)
