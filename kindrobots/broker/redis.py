"""The Redis broker: pub/sub, so any instance can serve a subscription for any other.

One pub/sub connection per broker carries every channel. A reader task owns it:
it sends SUBSCRIBE/UNSUBSCRIBE as local subscribers come and go (one Redis
subscription per channel, however many local subscribers) and hands each
message to the bounded buffer of every local subscriber of that channel. A
subscriber that falls behind loses its oldest messages (counted in
``kindrobots_broker_dropped_messages_total``); it is not ended, and neither
memory nor the other subscribers suffer for it.

When the connection fails the reader reconnects with jittered exponential
backoff and subscribes every channel that is still open again; open feeds
carry on, missing only what was published while Redis was away. If Redis stays
away for longer than ``reconnect_deadline`` seconds, every open subscription
ends with :class:`~kindrobots.broker.BrokerUnavailable` (and new ones fail at
once) until the reader gets through again.

The pub/sub connection comes from a pool of its own (one connection, no
redis-py retries: reconnecting is this module's job), so it never takes a slot
of the client's bounded pool.

Outages are logged once: one WARNING (a single line) at the first failure, of
a publish or of the reader, and one INFO line when Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from redis.asyncio import ConnectionPool
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from kindrobots.broker import QUEUE_SIZE, BrokerUnavailable, Message, Subscription

if TYPE_CHECKING:
    from redis.asyncio import Redis

PREFIX = "kr:broker:"
# Always subscribed, so the connection stays in pub/sub mode with no feed open.
CONTROL = PREFIX + "_reader"

logger = logging.getLogger("kindrobots.broker")

PUBLISH_FAILURES = Counter(
    "kindrobots_broker_publish_failures_total",
    "Broker messages dropped because Redis could not be reached.",
)
RECONNECTS = Counter(
    "kindrobots_broker_reconnects_total",
    "Times the broker's pub/sub connection was re-established after a failure.",
)
DROPPED = Counter(
    "kindrobots_broker_dropped_messages_total",
    "Messages a slow subscriber lost because its buffer was full.",
)

UNREACHABLE = (RedisError, OSError, TimeoutError)


class RedisBroker:
    def __init__(
        self,
        redis: Redis,
        *,
        reconnect_deadline: float = 60.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        heartbeat: float = 15.0,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self._redis = redis
        self._deadline = reconnect_deadline
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._heartbeat = heartbeat
        self._queue_size = queue_size
        pool = redis.connection_pool
        kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        self._pubsub_pool = ConnectionPool(
            connection_class=pool.connection_class, max_connections=1, **kwargs
        )
        self._subscribers: dict[str, set[Subscription]] = {}
        # Channels Redis has confirmed on the current pub/sub connection.
        self._confirmed: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        # Shared outage bookkeeping, for logging once per outage.
        self._outage_since: float | None = None
        self._dropped_publishes = 0
        # True once the reader has been away past the deadline, until it gets through.
        self._gave_up = False

    # -- publishing --------------------------------------------------------------

    async def publish(self, channel: str, message: Message) -> None:
        """Best effort: during an outage the message is dropped, counted, logged once."""
        payload = json.dumps(message, separators=(",", ":"))
        try:
            try:
                await self._redis.publish(PREFIX + channel, payload)
            except RedisConnectionError:
                # A pooled connection may predate a Redis restart: it fails once and is
                # dropped; the second try connects afresh (or fails at once if Redis is down).
                await self._redis.publish(PREFIX + channel, payload)
        except UNREACHABLE as error:
            PUBLISH_FAILURES.inc()
            self._dropped_publishes += 1
            self._unreachable(error)
            return
        self._reachable()

    # -- subscribing -------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[Message]]:
        if self._closed:
            raise BrokerUnavailable("The broker is closed.")
        if self._gave_up:
            raise BrokerUnavailable()
        subscription = Subscription(PREFIX + channel, self._queue_size)
        self._subscribers.setdefault(subscription.channel, set()).add(subscription)
        if subscription.channel in self._confirmed:
            subscription.mark_live()
        try:
            self._start_reader()
            self._wake.set()
            await subscription.wait_live()
            yield subscription.messages()
        finally:
            self._forget(subscription)

    def _forget(self, subscription: Subscription) -> None:
        others = self._subscribers.get(subscription.channel)
        if others is None:
            return
        others.discard(subscription)
        if not others:
            del self._subscribers[subscription.channel]
            self._wake.set()

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._run(), name="kindrobots-broker-reader")

    # -- the reader --------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        down_since: float | None = None
        while not self._closed:
            connected = False

            def on_connected() -> None:
                nonlocal connected, failures, down_since
                connected = True
                if down_since is not None:
                    RECONNECTS.inc()
                failures, down_since = 0, None
                self._gave_up = False
                self._reachable()

            try:
                await self._session(on_connected)
            except UNREACHABLE as error:
                self._unreachable(error)
            except Exception:
                # Never die silently: anything unforeseen is logged and the loop goes on.
                logger.exception("broker reader failed; reconnecting")
            now = time.monotonic()
            if connected or down_since is None:
                down_since = now
            failures += 1
            if now - down_since >= self._deadline:
                self._give_up(now - down_since)
            delay = min(self._backoff_cap, self._backoff_base * 2 ** min(failures - 1, 16))
            delay = random.uniform(delay / 2, delay)  # noqa: S311  # jitter, not secrets
            if not self._gave_up:  # try once more right at the deadline, not after it
                delay = min(delay, max(0.0, down_since + self._deadline - time.monotonic()))
            await asyncio.sleep(delay)

    async def _session(self, on_connected: Callable[[], None]) -> None:
        """One pub/sub connection, from connect to the first error."""
        pubsub = PubSub(self._pubsub_pool)
        sent: set[str] = set()  # channels SUBSCRIBE was sent for on this connection
        pending: dict[str, int] = {}  # SUBSCRIBE replies still to come, per channel
        read: asyncio.Task[Any] | None = None
        self._confirmed.clear()
        try:
            await pubsub.subscribe(CONTROL)
            ping_sent: float | None = None
            last_heard = time.monotonic()
            while True:
                # redis-py can swallow a cancellation that lands inside one of its calls;
                # a cancelled or closed reader must stop all the same.
                task = asyncio.current_task()
                if self._closed or (task is not None and task.cancelling()):
                    raise asyncio.CancelledError
                self._wake.clear()
                for channel in self._subscribers.keys() - sent:
                    sent.add(channel)
                    pending[channel] = pending.get(channel, 0) + 1
                    await pubsub.subscribe(channel)
                for channel in sent - self._subscribers.keys():
                    sent.discard(channel)
                    self._confirmed.discard(channel)
                    await pubsub.unsubscribe(channel)
                if read is None:
                    read = asyncio.create_task(pubsub.get_message(timeout=None))
                wake = asyncio.create_task(self._wake.wait())
                quiet = self._heartbeat - (time.monotonic() - last_heard)
                done, _ = await asyncio.wait(
                    {read, wake}, timeout=max(quiet, 0), return_when=asyncio.FIRST_COMPLETED
                )
                wake.cancel()
                if read in done:
                    raw, read = read.result(), None
                    last_heard, ping_sent = time.monotonic(), None
                    if raw is not None:
                        self._handle(raw, sent, pending, on_connected)
                elif not done:
                    if ping_sent is not None:
                        raise RedisConnectionError("no answer to PING on the pub/sub connection")
                    ping_sent = time.monotonic()
                    last_heard = ping_sent
                    await pubsub.ping()
        finally:
            self._confirmed.clear()
            if read is not None:
                read.cancel()
                with contextlib.suppress(BaseException):
                    await read
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    def _handle(
        self,
        raw: dict[str, Any],
        sent: set[str],
        pending: dict[str, int],
        on_connected: Callable[[], None],
    ) -> None:
        kind = raw.get("type")
        name = _text(raw.get("channel"))
        if kind == "message":
            try:
                message = json.loads(raw["data"])
            except ValueError:
                logger.warning("broker message on %s is not JSON; skipped", name)
                return
            for subscription in list(self._subscribers.get(name, ())):
                if subscription.put(message):
                    DROPPED.inc()
        elif kind == "subscribe":
            if name == CONTROL:
                on_connected()
                return
            left = pending.get(name, 1) - 1
            if left > 0:
                pending[name] = left
                return
            pending.pop(name, None)
            if name in sent:
                self._confirmed.add(name)
                for subscription in self._subscribers.get(name, ()):
                    subscription.mark_live()

    def _give_up(self, away: float) -> None:
        if not self._gave_up:
            logger.error(
                "redis broker unreachable for %.0f s; ending %d open subscriptions",
                away,
                sum(len(subs) for subs in self._subscribers.values()),
            )
        self._gave_up = True
        for channel, subscriptions in list(self._subscribers.items()):
            for subscription in subscriptions:
                subscription.end(
                    BrokerUnavailable(
                        f"The live feed lost its message broker for more than "
                        f"{self._deadline:g} s; subscribe again later."
                    )
                )
            del self._subscribers[channel]

    # -- outage logging ----------------------------------------------------------

    def _unreachable(self, error: BaseException) -> None:
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        detail = str(error).splitlines()[0] if str(error) else ""
        logger.warning(
            "redis broker unreachable (%s: %s); retrying with backoff, "
            "publishes are dropped until it answers",
            type(error).__name__,
            detail,
        )

    def _reachable(self) -> None:
        if self._outage_since is None:
            return
        away = time.monotonic() - self._outage_since
        logger.info(
            "redis broker reachable again after %.1f s (%d publishes dropped)",
            away,
            self._dropped_publishes,
        )
        self._outage_since = None
        self._dropped_publishes = 0

    # -- shutdown ----------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            self._wake.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._reader, 5)
            self._reader = None
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.end(BrokerUnavailable("The broker is closed."))
        self._subscribers.clear()
        await self._pubsub_pool.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
