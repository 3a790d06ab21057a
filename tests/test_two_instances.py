"""Two server processes on one PostgreSQL and one Redis behave as one service.

Both are real ``python -m kindrobots serve`` processes with the same keys; the
dashboard's live feed on either instance sees chats that the other one handled,
because messages travel between them through Redis pub/sub.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from kindrobots.broker.redis import RedisBroker
from tests.chat_helpers import deploy, widget_chat
from tests.conftest import POSTGRES_URL, REDIS_URL, Client, require_service, sign_up
from tests.processes import instances
from tests.test_live_feed import LiveFeed, summary

# Every run signs up from 127.0.0.1 against the shared Redis; limits have their tests.
SETTINGS = {"KR_PUBLIC_URL": "http://localhost:8000", "KR_RATE_LIMITS": "false"}


async def test_a_dashboard_on_one_instance_sees_chats_handled_by_the_other(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    require_service("Redis", REDIS_URL, 6379)
    async with (
        instances(http, tmp_path, SETTINGS) as (a, b),
        AsyncExitStack() as stack,
    ):
        redis = Redis.from_url(REDIS_URL)
        stack.push_async_callback(redis.aclose)
        probe = RedisBroker(redis).publish

        # Everything the dashboard does goes to A; the widget talks to B only.
        client_a = Client(http, a.base_url)
        account = await sign_up(client_a)
        shop = await deploy(client_a, account)
        token = account.access_token
        async with (
            LiveFeed.open(http, a.ws_url, token, shop.project_id, probe) as feed_a,
            LiveFeed.open(http, b.ws_url, token, shop.project_id, probe) as feed_b,
        ):
            on_b = await widget_chat(http, b, shop.project_key, "Asked on B")
            on_a = await widget_chat(http, a, shop.project_key, "Asked on A")
            expected = [
                (on_b[0]["conversationId"], "user", "Asked on B"),
                (on_b[0]["conversationId"], "assistant", "You said: Asked on B"),
                (on_a[0]["conversationId"], "user", "Asked on A"),
                (on_a[0]["conversationId"], "assistant", "You said: Asked on A"),
            ]
            assert summary(await feed_a.events(4)) == expected
            assert summary(await feed_b.events(4)) == expected

        # B's conversation is in the one shared database: A reads it back.
        stored = await client_a.execute(
            """query($id: ID!) { node(id: $id) { ... on Conversation {
                messages { edges { node { role content } } } } } }""",
            {"id": on_b[0]["conversationId"]},
            token=token,
        )
        assert stored.errors == [], stored.errors
        assert [edge["node"]["content"] for edge in stored.data["node"]["messages"]["edges"]] == [
            "Asked on B",
            "You said: Asked on B",
        ]

        for instance in (a, b):
            instance.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            codes = await asyncio.gather(a.process.wait(), b.process.wait())
        assert list(codes) == [0, 0], (a.log_tail(), b.log_tail())
