"""Alerts: thresholds over sliding windows of security events and upstream failures.

Rules (thresholds from ``KR_ALERT_*``): sign-in failures per minute platform-wide,
refresh-token reuse, Stripe webhook signature failures, the upstream LLM error rate, and
``budget.exhausted`` (any occurrence, per organization). Crossing one logs an ERROR line
with a stable ``alert`` field and, with ``KR_ALERT_WEBHOOK_URL``, POSTs JSON through the
outbound guard -- at most once per rule (and organization) per window.

Windows are six buckets each (a sliding window at a sixth of its length). With Redis the
counts and the once-per-window latch live there (``INCR`` per bucket, a compare-and-set
script for the latch), so every instance counts together and only one of them fires;
without Redis they live in this process. Times come from ``clock``, so the same rules
run under a test's clock as under the wall clock.

Nothing here blocks a request: callers only put an item on a bounded queue (dropped,
with a log line, when full) and one background task does the counting and posting.
Events reach :meth:`Alerts.observe` after their transaction commits (see
``resolvers.security_events``), never for rolled-back work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from kindrobots.config import Settings
from kindrobots.metrics import Metrics
from kindrobots.security.events import WEBHOOK_SIGNATURE_FAILED
from kindrobots.security.ssrf import Limits, OutboundFailed, OutboundRefused, outbound_request

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("kindrobots.alerts")

BUCKETS = 6
MAX_QUEUE = 1000
MAX_SCOPES = 10_000
UPSTREAM = "upstream"
POST_LIMITS = Limits(timeout=5.0, max_bytes=64 * 1024, max_redirects=0)
# Compare-and-set of the latch: fire when no alert of this key fired within the window.
LATCH_SCRIPT = """
local last = redis.call('GET', KEYS[1])
if last and tonumber(ARGV[1]) - tonumber(last) < tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Rule:
    name: str
    events: frozenset[str]
    threshold: int
    window: int
    per_organization: bool = False


def rules(settings: Settings) -> tuple[Rule, ...]:
    window = settings.alert_window
    return (
        Rule("signin_failures", frozenset({"signin.failed"}), settings.alert_signin_failures, 60),
        Rule(
            "refresh_token_reuse",
            frozenset({"refresh_token.reused"}),
            settings.alert_refresh_token_reuse,
            window,
        ),
        Rule(
            "webhook_signature_failures",
            frozenset({WEBHOOK_SIGNATURE_FAILED}),
            settings.alert_webhook_signature_failures,
            window,
        ),
        Rule("budget_exhausted", frozenset({"budget.exhausted"}), 1, window, per_organization=True),
    )


@dataclass(frozen=True)
class _Item:
    event: str
    organization_id: str | None
    at: float
    ok: bool = True


class Alerts:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        redis: Redis | None = None,
        *,
        clock: Callable[[], float] = time.time,
        prefix: str = "kr:alert",
    ) -> None:
        self._settings = settings
        self._prefix = prefix
        self._metrics = metrics
        self._redis = redis
        self._clock = clock
        self._rules = rules(settings)
        self._watched = frozenset(event for rule in self._rules for event in rule.events)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(MAX_QUEUE)
        self._worker: asyncio.Task[None] | None = None
        # In-process state (no Redis): bucket counts and the time each key last fired.
        self._counts: OrderedDict[str, dict[int, int]] = OrderedDict()
        self._fired: OrderedDict[str, float] = OrderedDict()
        self._latch = redis.register_script(LATCH_SCRIPT) if redis is not None else None

    # --- what callers see: never awaits, never raises -----------------------------------

    def observe(self, event: str, organization_id: str | None) -> None:
        """One security event, committed (or written nowhere but logged and counted)."""
        self._metrics.security_events.labels(event).inc()
        if event in self._watched:
            self._put(_Item(event, organization_id, self._clock()))

    def upstream(self, ok: bool) -> None:
        """One upstream LLM request that ended, successfully or not."""
        self._put(_Item(UPSTREAM, None, self._clock(), ok))

    def _put(self, item: _Item) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            logger.warning("alerts: queue full, %s not counted", item.event)

    async def drain(self) -> None:
        """Wait until every queued item is processed (tests, shutdown)."""
        if self._worker is not None and not self._worker.done():
            await self._queue.join()

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    # --- the background task ------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._process(item)
            except Exception:
                logger.exception("alerts: could not evaluate %s", item.event)
            finally:
                self._queue.task_done()

    async def _process(self, item: _Item) -> None:
        if item.event == UPSTREAM:
            await self._upstream(item)
            return
        for rule in self._rules:
            if item.event not in rule.events:
                continue
            scope = (item.organization_id or "") if rule.per_organization else ""
            count = await self._add(f"{rule.name}:{scope}", rule.window, item.at)
            if count >= rule.threshold:
                await self._fire(rule.name, scope, rule.window, item.at, count, rule.threshold)

    async def _upstream(self, item: _Item) -> None:
        settings = self._settings
        window = settings.alert_window
        requests = await self._add("upstream_errors:requests", window, item.at)
        if item.ok:
            return
        errors = await self._add("upstream_errors:errors", window, item.at)
        if requests >= settings.alert_upstream_min_requests and (
            errors / requests >= settings.alert_upstream_error_rate
        ):
            await self._fire(
                "upstream_errors",
                "",
                window,
                item.at,
                errors,
                settings.alert_upstream_error_rate,
                rate=round(errors / requests, 3),
                requests=requests,
            )

    async def _add(self, key: str, window: int, at: float) -> int:
        """Count one occurrence under ``key``; the total of the window ending at ``at``."""
        size = window / BUCKETS
        bucket = int(at // size)
        if self._redis is not None:
            name = f"{self._prefix}:count:{key}"
            pipe = self._redis.pipeline(transaction=False)
            pipe.incr(f"{name}:{bucket}")
            pipe.expire(f"{name}:{bucket}", window * 2)
            pipe.mget([f"{name}:{b}" for b in range(bucket - BUCKETS + 1, bucket + 1)])
            try:
                *_, values = await pipe.execute()
            except RedisError:
                # Redis away: this instance counts on its own until it is back.
                logger.warning("alerts: Redis unreachable, counting %s in this process", key)
            else:
                return sum(int(value) for value in values if value is not None)
        counts = self._counts.setdefault(key, {})
        self._counts.move_to_end(key)
        while len(self._counts) > MAX_SCOPES:
            self._counts.popitem(last=False)
        counts[bucket] = counts.get(bucket, 0) + 1
        for old in [b for b in counts if b <= bucket - BUCKETS]:
            del counts[old]
        return sum(counts.values())

    async def _claim(self, key: str, window: int, at: float) -> bool:
        """True for the one caller (on any instance) that fires ``key`` in this window."""
        if self._latch is not None:
            try:
                won = await self._latch(
                    keys=[f"{self._prefix}:fired:{key}"], args=[at, window, window * 2]
                )
            except RedisError:
                logger.warning("alerts: Redis unreachable, latching %s in this process", key)
            else:
                return bool(won)
        last = self._fired.get(key)
        if last is not None and at - last < window:
            return False
        self._fired[key] = at
        self._fired.move_to_end(key)
        while len(self._fired) > MAX_SCOPES:
            self._fired.popitem(last=False)
        return True

    async def _fire(
        self,
        name: str,
        scope: str,
        window: int,
        at: float,
        count: int,
        threshold: float,
        **extra: Any,
    ) -> None:
        if not await self._claim(f"{name}:{scope}", window, at):
            return
        payload: dict[str, Any] = {
            "alert": name,
            "count": count,
            "threshold": threshold,
            "windowSeconds": window,
            "at": datetime.fromtimestamp(at, UTC).isoformat(),
            **({"organizationId": scope} if scope else {}),
            **extra,
        }
        self._metrics.alerts.labels(name).inc()
        logger.error(
            # No colon after the name: "..._token_reuse: x" would read as a secret to redact.
            "alert %s raised, %s in %s s (threshold %s)",
            name,
            count,
            window,
            threshold,
            extra={"alert": name, "organization_id": scope or None, "details": payload},
        )
        url = self._settings.alert_webhook_url
        if url:
            await self._post(url, payload)

    async def _post(self, url: str, payload: dict[str, Any]) -> None:
        """POST the alert; a failure is logged by what went wrong, never with the URL."""
        try:
            response = await outbound_request(
                url,
                allow=self._settings.outbound_allow,
                method="POST",
                headers={"Content-Type": "application/json"},
                json=payload,
                limits=POST_LIMITS,
                https_only=self._settings.is_production,
            )
        except (OutboundRefused, OutboundFailed) as error:
            logger.error(
                "alert %s not delivered, POST failed (%s)", payload["alert"], error.message
            )
            return
        except Exception as error:
            logger.error(
                "alert %s not delivered, POST failed (%s)", payload["alert"], type(error).__name__
            )
            return
        if response.status >= 300:
            logger.error("alert %s: webhook answered HTTP %s", payload["alert"], response.status)
