"""Rate-limit backends: a sliding-window log in Redis (shared by every instance) or in memory.

A sliding log is exact: ``limit`` calls in any ``window`` seconds, never more,
which is what ``@rateLimit(limit: 5, window: 60)`` promises. (GCRA would be
cheaper but lets a burst plus a steady trickle exceed the limit inside one
window.) Redis does the whole check in one Lua round trip using its own clock,
so instances with skewed clocks still agree; keys expire by themselves.
"""

from __future__ import annotations

import asyncio
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
REFUSED = Counter("kindrobots_rate_limited_total", "Calls refused by a rate limit.", ["field"])

FailurePolicy = Literal["open", "closed"]


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
        now = time.monotonic()
        entry = self._logs.get(key)
        if entry is None:
            if len(self._logs) >= self._max_keys:
                self._sweep(now)
            entry = self._logs[key] = (window, deque())
        log = entry[1]
        while log and log[0] <= now - window:
            log.popleft()
        if len(log) < limit:
            log.append(now)
            return Decision(True, limit - len(log), 0)
        return Decision(False, 0, max(1, math.ceil(log[0] + window - now)))

    def _sweep(self, now: float) -> None:
        """Forget keys with no call inside their own window (what Redis expiry does)."""
        stale = [
            key for key, (window, log) in self._logs.items() if not log or log[-1] <= now - window
        ]
        for key in stale:
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
    """Limits shared by every instance on one Redis; the failure policy decides when it is down."""

    def __init__(self, redis: Redis, policy: FailurePolicy, timeout: float = 0.5) -> None:
        self._script = redis.register_script(_SLIDING_LOG)
        self._policy = policy
        self._timeout = timeout

    async def hit(self, key: str, limit: int, window: int) -> Decision:
        try:
            async with asyncio.timeout(self._timeout):
                allowed, remaining, retry_ms = await self._script(
                    keys=[key], args=[window * 1000, limit, uuid.uuid4().hex]
                )
        except Exception:
            BACKEND_FAILURES.labels(policy=self._policy).inc()
            logger.warning(
                "rate limit backend unreachable; failing %s for %s",
                self._policy,
                key.split(":", 2)[1] if key.count(":") >= 2 else "limit",
                exc_info=True,
            )
            if self._policy == "open":
                return Decision(True, limit, 0)
            return Decision(False, 0, 1)
        return Decision(bool(allowed), int(remaining), max(0, math.ceil(int(retry_ms) / 1000)))
