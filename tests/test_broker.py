"""The broker's contract (in-process and Redis) and the Redis broker under faults.

Fault tests run a redis-server of their own (tests/redis_server.py), kill it
with SIGKILL and start it again on the same port; the shared Redis is only used
by the contract tests, on channels of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from redis.asyncio import BlockingConnectionPool, Redis

from kindrobots.broker import QUEUE_SIZE, Broker, BrokerUnavailable, Message
from kindrobots.broker.memory import MemoryBroker
from kindrobots.broker.redis import RedisBroker
from kindrobots.server import create_services
from tests.conftest import REDIS_URL, make_settings, require_service
from tests.redis_server import RedisServer, own_redis


class Feed:
    """Consumes a subscription in a task of its own; the test looks at what arrived."""

    def __init__(self, messages: AsyncIterator[Message]) -> None:
        self.received: list[Message] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._consume(messages))

    async def _consume(self, messages: AsyncIterator[Message]) -> None:
        try:
            async for message in messages:
                self.received.append(message)
        except BrokerUnavailable as error:
            self.error = error

    async def until(self, condition: Callable[[list[Message]], bool], wait: float = 10) -> None:
        async with asyncio.timeout(wait):
            while not condition(self.received):
                assert not self.task.done(), self.error
                await asyncio.sleep(0.01)

    def stop(self) -> None:
        self.task.cancel()


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def fast_broker(redis: Redis, reconnect_deadline: float = 60.0) -> RedisBroker:
    return RedisBroker(
        redis, reconnect_deadline=reconnect_deadline, backoff_base=0.05, backoff_cap=0.3
    )


@pytest_asyncio.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "memory":
        memory = MemoryBroker()
        yield memory
        await memory.close()
        return
    require_service("Redis", REDIS_URL, 6379)
    redis = Redis.from_url(REDIS_URL)
    shared = RedisBroker(redis)
    yield shared
    await shared.close()
    await redis.aclose()


@pytest_asyncio.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with own_redis(tmp_path) as server:
        yield server


# -- the contract, for both brokers ------------------------------------------------


async def test_every_subscriber_of_a_channel_gets_its_messages_and_no_others(
    broker: Broker,
) -> None:
    shop, other = f"shop:{uuid.uuid4()}", f"other:{uuid.uuid4()}"
    async with (
        broker.subscribe(shop) as first,
        broker.subscribe(shop) as second,
        broker.subscribe(other) as third,
    ):
        feeds = [Feed(first), Feed(second), Feed(third)]
        await broker.publish(shop, {"n": 1})
        await broker.publish(other, {"n": 2})
        await broker.publish(shop, {"n": 3})
        await feeds[0].until(lambda got: len(got) == 2)
        await feeds[1].until(lambda got: len(got) == 2)
        await feeds[2].until(lambda got: len(got) == 1)
        assert feeds[0].received == feeds[1].received == [{"n": 1}, {"n": 3}]
        assert feeds[2].received == [{"n": 2}]
        for feed in feeds:
            feed.stop()
    # Nobody is left listening; publishing to the channels is harmless.
    await broker.publish(shop, {"n": 4})


async def test_a_slow_subscriber_loses_its_oldest_messages_only(broker: Broker) -> None:
    name = f"busy:{uuid.uuid4()}"
    total = QUEUE_SIZE + 5
    async with broker.subscribe(name) as slow, broker.subscribe(name) as fast:
        keeping_up = Feed(fast)
        for n in range(total):
            await broker.publish(name, {"n": n})
            await asyncio.sleep(0)  # the fast one reads as they come; the slow one never does
        await keeping_up.until(lambda got: len(got) == total)
        keeping_up.stop()
        # The slow one kept the newest QUEUE_SIZE and lost the first five.
        assert await anext(slow) == {"n": 5}
        rest = [await anext(slow) for _ in range(QUEUE_SIZE - 1)]
        assert rest[-1] == {"n": total - 1}


# -- Redis: one connection, bounded pool -------------------------------------------


async def test_a_hundred_subscriptions_share_one_redis_connection(
    redis_server: RedisServer,
) -> None:
    admin = Redis.from_url(redis_server.url)
    client = Redis.from_pool(
        BlockingConnectionPool.from_url(redis_server.url, max_connections=3, timeout=5)
    )
    broker = RedisBroker(client)
    try:
        before = len(await admin.client_list())
        channels = [f"load:{n % 60}" for n in range(100)]
        async with AsyncExitStack() as stack:
            feeds = [Feed(await stack.enter_async_context(broker.subscribe(c))) for c in channels]
            clients = await admin.client_list()
            assert len(clients) - before == 1, clients
            (subscriber,) = [c for c in clients if int(c.get("sub", 0)) > 0]
            assert int(subscriber["sub"]) == 60 + 1  # 60 channels and the reader's own

            # 60 publishes at once go through the three pooled connections.
            await asyncio.gather(*(broker.publish(f"load:{n}", {"n": n}) for n in range(60)))
            for feed, name in zip(feeds, channels, strict=True):
                expected: list[Message] = [{"n": int(name.removeprefix("load:"))}]
                await feed.until(expected.__eq__)
                feed.stop()
            assert len(await admin.client_list()) - before <= 1 + 3

        # The channels are given up once their last subscriber leaves.
        async with asyncio.timeout(5):
            while True:
                (subscriber,) = [c for c in await admin.client_list() if int(c["sub"]) > 0]
                if int(subscriber["sub"]) == 1:
                    break
                await asyncio.sleep(0.02)
    finally:
        await broker.close()
        await client.aclose()
        await admin.aclose()


async def test_services_use_a_bounded_redis_pool(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite", redis_url=REDIS_URL, redis_max_connections=7)
    services = create_services(settings)
    try:
        assert services.redis is not None
        pool = services.redis.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        assert pool.max_connections == 7
        assert isinstance(services.broker, RedisBroker)
    finally:
        await services.broker.close()
        if services.redis is not None:
            await services.redis.aclose()
        await services.engine.dispose()


# -- Redis: outages -----------------------------------------------------------------


async def test_an_open_subscription_carries_on_after_redis_restarts(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    broker = fast_broker(client)
    reconnects = sample("kindrobots_broker_reconnects_total")
    try:
        async with broker.subscribe("feed") as messages:
            feed = Feed(messages)
            await broker.publish("feed", {"n": "before"})
            await feed.until(lambda got: got == [{"n": "before"}])

            await redis_server.restart()  # SIGKILL, then a new server on the same port

            # Messages published after the restart reach the feed that stayed open.
            started = time.monotonic()
            async with asyncio.timeout(15):
                attempt = 0
                while not any("after" in message for message in feed.received):
                    await broker.publish("feed", {"after": attempt})
                    attempt += 1
                    await asyncio.sleep(0.05)
            assert time.monotonic() - started < 15
            assert feed.error is None and not feed.task.done()
            assert sample("kindrobots_broker_reconnects_total") == reconnects + 1
            feed.stop()
    finally:
        await broker.close()
        await client.aclose()


async def test_a_subscription_opened_during_an_outage_goes_live_when_redis_returns(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    broker = fast_broker(client)
    try:
        await redis_server.kill()
        entered = asyncio.Event()

        async def watch() -> list[Message]:
            async with broker.subscribe("late") as messages:
                entered.set()
                return [await anext(messages)]

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        assert not entered.is_set()  # it waits for Redis rather than pretending to be live
        await redis_server.start()
        async with asyncio.timeout(10):
            await entered.wait()
        await broker.publish("late", {"n": 1})
        async with asyncio.timeout(10):
            assert await watcher == [{"n": 1}]
    finally:
        await broker.close()
        await client.aclose()


async def test_an_outage_is_logged_once_and_counted(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kindrobots.broker")
    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    broker = fast_broker(client)
    failures = sample("kindrobots_broker_publish_failures_total")
    publishes = 30
    try:
        async with broker.subscribe("quiet") as messages:
            feed = Feed(messages)
            await redis_server.kill()
            # Publishing never raises: the reader fails over and over too meanwhile.
            for n in range(publishes):
                await broker.publish("quiet", {"n": n})
                await asyncio.sleep(0.02)
            assert sample("kindrobots_broker_publish_failures_total") == failures + publishes

            await redis_server.start()
            async with asyncio.timeout(15):
                while not feed.received:
                    await broker.publish("quiet", {"n": "back"})
                    await asyncio.sleep(0.05)
            feed.stop()
    finally:
        await broker.close()
        await client.aclose()

    records = [r for r in caplog.records if r.name == "kindrobots.broker"]
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    (warning,) = warnings
    assert warning.levelno == logging.WARNING
    assert warning.exc_info is None and not warning.exc_text
    assert "\n" not in warning.getMessage() and "unreachable" in warning.getMessage()
    recoveries = [r for r in records if r.levelno == logging.INFO]
    assert len(recoveries) == 1 and "reachable again" in recoveries[0].getMessage()


async def test_a_subscription_ends_with_an_error_when_redis_stays_away(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    broker = fast_broker(client, reconnect_deadline=1.0)
    try:
        async with broker.subscribe("doomed") as messages:
            feed = Feed(messages)
            await broker.publish("doomed", {"n": 1})
            await feed.until(lambda got: len(got) == 1)
            await redis_server.kill()
            started = time.monotonic()
            async with asyncio.timeout(10):
                await feed.task
            away = time.monotonic() - started
        assert isinstance(feed.error, BrokerUnavailable), feed.error
        assert feed.error.extensions == {"code": "SERVICE_UNAVAILABLE"}
        assert "more than 1 s" in str(feed.error)
        assert 1.0 <= away < 5, away

        # While Redis is still away, a new subscription fails at once instead of hanging.
        async with asyncio.timeout(2):
            with pytest.raises(BrokerUnavailable):
                async with broker.subscribe("doomed"):
                    pass

        # Once it is back, subscriptions work again.
        await redis_server.start()
        async with asyncio.timeout(15):
            while True:
                try:
                    async with broker.subscribe("doomed") as messages:
                        await broker.publish("doomed", {"n": 2})
                        assert await anext(messages) == {"n": 2}
                        break
                except BrokerUnavailable:
                    await asyncio.sleep(0.1)
    finally:
        await broker.close()
        await client.aclose()
