"""End to end: a dashboard feed stays open across a Redis restart.

A server of its own on a real port with a redis-server of its own; the
dashboard's conversationEvents WebSocket is open while Redis is SIGKILLed and
started again, and a chat afterwards still reaches that same feed.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from kindrobots.broker.redis import RedisBroker
from tests.chat_helpers import deploy, widget_chat
from tests.conftest import Client, make_settings, sign_up, start_server
from tests.redis_server import own_redis
from tests.test_live_feed import LiveFeed, summary


async def test_a_dashboard_feed_survives_a_redis_restart(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with own_redis(tmp_path) as redis_server:
        settings = make_settings(tmp_path, "sqlite", redis_url=redis_server.url)
        runner, server = await start_server(settings)
        try:
            assert isinstance(server.services.broker, RedisBroker)
            publish = server.services.broker.publish
            client = Client(http, server.base_url)
            owner = await sign_up(client)
            shop = await deploy(client, owner)
            async with LiveFeed.open(
                http, server.ws_url, owner.access_token, shop.project_id, publish
            ) as feed:
                await redis_server.restart()
                # Probes on the channel until the same open feed receives one again:
                # the broker reconnected and subscribed the feed's channel anew.
                assert await feed.wait_live(shop.project_id, publish) == []
                events = await widget_chat(http, server, shop.project_key, "After the restart")
                conversation = events[0]["conversationId"]
                assert summary(await feed.events(2)) == [
                    (conversation, "user", "After the restart"),
                    (conversation, "assistant", "You said: After the restart"),
                ]
        finally:
            await runner.cleanup()
