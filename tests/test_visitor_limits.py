"""Per-visitor chat limits on top of the project's (issue 13, item 6), in memory and on Redis.

A visitor is the holder of a conversation token (or, on AUTHENTICATED projects, the end
user). Their limit is checked before the project's, so a visitor who is refused spends
nothing of the project's allowance and a second visitor chats on. Starting conversations
without a token (minting visitors) is limited per address and project.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.chat_helpers import deploy, widget_socket
from tests.conftest import Client, set_tier, sign_up
from tests.test_rate_limits import (
    ForwardedClient,
    backend_overrides,
    frame_codes,
    fresh_ip,
    limited_server,
    limiter_backend,
    retry_after,
    ws_operation,
)
from tests.test_widget_conversations import CHAT_ONLY, SEND

__all__ = ["limiter_backend"]  # the fixture, for this module's tests

VISITOR_LIMIT = 10  # Subscription.chat / Mutation.sendMessage @rateLimit(per: VISITOR)
NEW_VISITOR_LIMIT = 30  # @rateLimit(per: NEW_VISITOR), an hour


async def send(client: Client, project_key: str, message: str, token: str | None = None) -> Any:
    return await client.execute(
        SEND,
        {"input": {"message": message, "conversationToken": token}},
        headers={"X-Project-Key": project_key},
    )


async def test_a_visitor_at_their_limit_does_not_stop_another_visitor(
    limiter_backend: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with limited_server(tmp_path, **backend_overrides(limiter_backend)) as server:
        client = ForwardedClient(http, server.base_url, fresh_ip())
        shop = await deploy(client, await sign_up(client))
        first = await send(client, shop.project_key, "hello")
        assert first.errors == [], first.errors
        token = first.data["sendMessage"]["conversationToken"]
        for number in range(VISITOR_LIMIT):
            sent = await send(client, shop.project_key, f"again {number}", token)
            assert sent.errors == [], (number, sent.errors)
        # Hammering on: every refusal is the visitor's, none spends the project's 20 a minute.
        for _ in range(VISITOR_LIMIT):
            refused = await send(client, shop.project_key, "one more", token)
            assert refused.status == 429 and refused.codes == ["RATE_LIMITED"]
            assert 0 < retry_after(refused) <= 60
        async with widget_socket(http, server, shop.project_key) as ws:
            frame = await ws_operation(
                ws, "c", CHAT_ONLY, {"input": {"message": "hi", "conversationToken": token}}
            )
            assert frame_codes(frame) == ["RATE_LIMITED"]

            # Another visitor, from the same address: a conversation of their own, going on.
            other = await ws_operation(ws, "d", CHAT_ONLY, {"input": {"message": "hi"}})
            assert frame_codes(other) == [], other
        second = await send(client, shop.project_key, "me too")
        assert second.errors == [], second.errors
        going_on = await send(
            client, shop.project_key, "and on", second.data["sendMessage"]["conversationToken"]
        )
        assert going_on.errors == [], going_on.errors


async def test_starting_conversations_is_limited_per_address(
    limiter_backend: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with limited_server(tmp_path, **backend_overrides(limiter_backend)) as server:
        owner_client = Client(http, server.base_url)
        account = await sign_up(owner_client)
        await set_tier(server, account.organization_id, "ENTERPRISE")  # 600 a minute
        shop = await deploy(owner_client, account)
        minting = ForwardedClient(http, server.base_url, fresh_ip())
        tokens = []
        for number in range(NEW_VISITOR_LIMIT):
            sent = await send(minting, shop.project_key, f"new {number}")
            assert sent.errors == [], (number, sent.errors)
            tokens.append(sent.data["sendMessage"]["conversationToken"])
        refused = await send(minting, shop.project_key, "yet another")
        assert refused.status == 429 and refused.codes == ["RATE_LIMITED"]
        assert 0 < retry_after(refused) <= 3600

        # The visitors it made go on; another address may start conversations.
        going_on = await send(minting, shop.project_key, "still me", tokens[0])
        assert going_on.errors == [], going_on.errors
        elsewhere = ForwardedClient(http, server.base_url, fresh_ip())
        assert (await send(elsewhere, shop.project_key, "hello")).errors == []
        # Another project counts on its own, for the same address.
        sister = await deploy(owner_client, account)
        assert (await send(minting, sister.project_key, "hello")).errors == []
