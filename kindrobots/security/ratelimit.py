"""Rate-limit backends: a sliding-window log in Redis (shared by every instance) or in memory.

A sliding log is exact: ``limit`` calls in any ``window`` seconds, never more,
which is what ``@rateLimit(limit: 5, window: 60)`` promises. (GCRA would be
cheaper but lets a burst plus a steady trickle exceed the limit inside one
window.) Redis does the whole check in one Lua round trip using its own clock,
so instances with skewed clocks still agree; keys expire by themselves.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from prometheus_client import Counter

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("kindrobots.ratelimit")

BACKEND_FAILURES = Counter(
    "kindrobots_rate_limit_backend_failures_total",
    "Rate-limit checks that could not reach their backend, by the policy applied.",
    ["policy"],
)

FailurePolicy = Literal["open", "closed"]


def address_key(ip: str | None) -> str:
    """The unit a per-address limit counts: an IPv4 address, or an IPv6 /64.

    One IPv6 subscriber is routinely given a /64 (or more), so counting single
    addresses would let a caller rotate through 2**64 fresh allowances.
    """
    if not ip:
        return "unknown"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after: int  # whole seconds until a call would be allowed; 0 when allowed


class Limiter(Protocol):
    async def hit(self, key: str, limit: int, window: int) -> Decision: ...


class MemoryLimiter:
    """One process's limits (the embedded default): the same sliding log, in a dict."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._logs: dict[str, tuple[int, deque[float]]] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, limit: int, window: int) -> Decision:
        if limit <= 0:
            return Decision(False, 0, max(1, window))
        now = time.monotonic()
        entry = self._logs.get(key)
        if entry is None:
            if len(self._logs) >= self._max_keys:
                self._make_room(now)
            entry = self._logs[key] = (window, deque())
        log = entry[1]
        while log and log[0] <= now - window:
            log.popleft()
        if len(log) < limit:
            log.append(now)
            return Decision(True, limit - len(log), 0)
        return Decision(False, 0, max(1, math.ceil(log[0] + window - now)))

    def _make_room(self, now: float) -> None:
        """Forget keys with no call inside their own window (what Redis expiry does).

        When every key is still live (a flood of fresh addresses), the longest-known
        tenth goes too: memory stays bounded, and the next sweep is that many new keys
        away instead of on every call.
        """
        stale = [
            key for key, (window, log) in self._logs.items() if not log or log[-1] <= now - window
        ]
        for key in stale:
            del self._logs[key]
        excess = len(self._logs) - self._max_keys * 9 // 10
        if excess > 0:
            logger.warning("in-process rate limiter full; forgetting %d live keys", excess)
            for key in list(itertools.islice(self._logs, excess)):
                del self._logs[key]


_SLIDING_LOG = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""


class RedisLimiter:
    """Limits shared by every instance on one Redis; the failure policy decides when it is down.

    An outage is logged when it starts, then at most every ``warn_every`` seconds with the
    number of checks since (each one is counted in ``BACKEND_FAILURES``), and again when
    Redis answers: under load a traceback per request would bury everything else.
    """

    def __init__(
        self,
        redis: Redis,
        policy: FailurePolicy,
        timeout: float = 0.5,
        warn_every: float = 30.0,
    ) -> None:
        self._script = redis.register_script(_SLIDING_LOG)
        self._policy = policy
        self._timeout = timeout
        self._warn_every = warn_every
        self._failures = 0  # failed checks in the current outage
        self._warned_at: float | None = None
        self._unlogged = 0

    async def hit(self, key: str, limit: int, window: int) -> Decision:
        if limit <= 0:
            # Nothing to count, and the script would find no oldest call to wait for.
            return Decision(False, 0, max(1, window))
        try:
            async with asyncio.timeout(self._timeout):
                allowed, remaining, retry_ms = await self._script(
                    keys=[key], args=[window * 1000, limit, uuid.uuid4().hex]
                )
        except Exception:
            BACKEND_FAILURES.labels(policy=self._policy).inc()
            self._log_failure(key)
            if self._policy == "open":
                return Decision(True, limit, 0)
            return Decision(False, 0, 1)
        if self._failures:
            logger.warning(
                "rate limit backend reachable again after %d failed checks; limits apply",
                self._failures,
            )
            self._failures, self._warned_at, self._unlogged = 0, None, 0
        return Decision(bool(allowed), int(remaining), max(0, math.ceil(int(retry_ms) / 1000)))

    def _log_failure(self, key: str) -> None:
        self._failures += 1
        self._unlogged += 1
        now = time.monotonic()
        if self._warned_at is None:
            logger.warning(
                "rate limit backend unreachable; failing %s for %s",
                self._policy,
                key.split(":", 2)[1] if key.count(":") >= 2 else "limit",
                exc_info=True,  # the cause, once per outage
            )
        elif now - self._warned_at >= self._warn_every:
            logger.warning(
                "rate limit backend still unreachable; failing %s (%d checks since the last "
                "warning)",
                self._policy,
                self._unlogged,
            )
        else:
            return
        self._warned_at, self._unlogged = now, 0
