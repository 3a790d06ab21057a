"""WebSocket connection limits: per address (HTTP 429), per project (close 4429), per connection.

Each test starts a server with small limits (KR_WS_MAX_PER_IP, KR_WS_MAX_PER_PROJECT,
KR_WS_MAX_SUBSCRIPTIONS) that believes X-Forwarded-For from loopback, so every
connection can say which address it comes from.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.chat_helpers import ORIGIN, deploy
from tests.conftest import RunningServer, make_settings, sign_up, start_server
from tests.test_rate_limits import ForwardedClient, fresh_ip

TRANSPORT_WS = ["graphql-transport-ws"]
FEED = """
subscription($projectId: ID!) { conversationEvents(projectId: $projectId) { conversationId } }
"""
PLANS = "{ plans { tier } }"


@asynccontextmanager
async def ws_server(tmp: Path, **limits: int) -> AsyncIterator[RunningServer]:
    runner, running = await start_server(
        make_settings(tmp, "sqlite", trusted_proxies="127.0.0.1", **limits)
    )
    try:
        yield running
    finally:
        await runner.cleanup()


async def connect(
    http: aiohttp.ClientSession, server: RunningServer, ip: str, origin: str | None = None
) -> aiohttp.ClientWebSocketResponse:
    headers = {"X-Forwarded-For": ip, **({"Origin": origin} if origin else {})}
    return await http.ws_connect(server.ws_url, protocols=TRANSPORT_WS, headers=headers)


async def eventually_connects(
    http: aiohttp.ClientSession, server: RunningServer, ip: str
) -> aiohttp.ClientWebSocketResponse:
    """The server releases a closed connection's slot just after the close handshake."""
    async with asyncio.timeout(10):
        while True:
            try:
                return await connect(http, server, ip)
            except aiohttp.WSServerHandshakeError as refused:
                assert refused.status == 429
                await asyncio.sleep(0.02)


async def test_more_connections_than_allowed_from_one_address_get_429(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with ws_server(tmp_path, ws_max_per_ip=2) as server, AsyncExitStack() as stack:
        ip = fresh_ip()
        first = await connect(http, server, ip)
        stack.push_async_callback(first.close)
        # Another address of the same IPv6 /64 is the same caller.
        second = await connect(http, server, ip.replace("::1", "::2"))
        stack.push_async_callback(second.close)

        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(http, server, ip)
        assert refused.value.status == 429
        assert refused.value.headers is not None
        assert int(refused.value.headers["Retry-After"]) > 0

        # The limit is per address: another one connects, and a plain request still works.
        other = await connect(http, server, fresh_ip())
        stack.push_async_callback(other.close)
        async with http.get(f"{server.base_url}/healthz") as health:
            assert health.status == 200

        # The connections still open work normally.
        await first.send_json({"type": "connection_init", "payload": {}})
        assert (await first.receive_json(timeout=10))["type"] == "connection_ack"

        # Closing one frees exactly one place (a refused handshake took none).
        await second.close()
        third = await eventually_connects(http, server, ip)
        stack.push_async_callback(third.close)
        with pytest.raises(aiohttp.WSServerHandshakeError) as again:
            await connect(http, server, ip)
        assert again.value.status == 429


async def init_widget(ws: aiohttp.ClientWebSocketResponse, project_key: str) -> dict[str, Any]:
    """connection_init as a widget: the ack, or ``{"close": code}`` when the server closes."""
    await ws.send_json({"type": "connection_init", "payload": {"projectKey": project_key}})
    message = await ws.receive(timeout=10)
    if message.type == aiohttp.WSMsgType.TEXT:
        frame: dict[str, Any] = message.json()
        return frame
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
    return {"close": ws.close_code}


async def test_more_widget_connections_than_a_project_allows_are_closed_with_4429(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with ws_server(tmp_path, ws_max_per_project=2) as server, AsyncExitStack() as stack:
        client = ForwardedClient(http, server.base_url, fresh_ip())
        account = await sign_up(client)
        shop = await deploy(client, account)
        other_shop = await deploy(client, account)

        async def widget(project_key: str) -> tuple[aiohttp.ClientWebSocketResponse, Any]:
            # Every widget from an address of its own: this is the project's limit, not the IP's.
            ws = await connect(http, server, fresh_ip(), ORIGIN)
            stack.push_async_callback(ws.close)
            return ws, await init_widget(ws, project_key)

        first, first_ack = await widget(shop.project_key)
        second, second_ack = await widget(shop.project_key)
        assert first_ack["type"] == second_ack["type"] == "connection_ack"

        _, refusal = await widget(shop.project_key)
        assert refusal == {"close": 4429}

        # Another project of the same organization, and the dashboard, are not affected.
        _, other_ack = await widget(other_shop.project_key)
        assert other_ack["type"] == "connection_ack"
        dashboard = await connect(http, server, fresh_ip())
        stack.push_async_callback(dashboard.close)
        await dashboard.send_json(
            {
                "type": "connection_init",
                "payload": {"authorization": f"Bearer {account.access_token}"},
            }
        )
        assert (await dashboard.receive_json(timeout=10))["type"] == "connection_ack"

        # The connections that were let in keep working.
        await first.send_json({"type": "ping"})
        assert (await first.receive_json(timeout=10))["type"] == "pong"

        # When one closes, the project has room for one more.
        await second.close()
        async with asyncio.timeout(10):
            while True:
                _, answer = await widget(shop.project_key)
                if answer.get("type") == "connection_ack":
                    break
                assert answer == {"close": 4429}
                await asyncio.sleep(0.02)
        _, full_again = await widget(shop.project_key)
        assert full_again == {"close": 4429}


async def operation(
    ws: aiohttp.ClientWebSocketResponse, operation_id: str, query: str, variables: dict[str, Any]
) -> None:
    await ws.send_json(
        {
            "type": "subscribe",
            "id": operation_id,
            "payload": {"query": query, "variables": variables},
        }
    )


async def test_subscriptions_per_connection_are_capped(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with ws_server(tmp_path, ws_max_subscriptions=2) as server:
        client = ForwardedClient(http, server.base_url, fresh_ip())
        account = await sign_up(client)
        shop = await deploy(client, account)
        feed = {"projectId": shop.project_id}
        ws = await connect(http, server, fresh_ip())
        try:
            await ws.send_json(
                {
                    "type": "connection_init",
                    "payload": {"authorization": f"Bearer {account.access_token}"},
                }
            )
            assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
            await operation(ws, "feed-1", FEED, feed)
            await operation(ws, "feed-2", FEED, feed)

            # A third operation while two are in flight is refused, on this operation only.
            await operation(ws, "feed-3", FEED, feed)
            refused = await ws.receive_json(timeout=10)
            assert refused["type"] == "error" and refused["id"] == "feed-3", refused
            assert "limit" in refused["payload"][0]["message"].lower()
            await operation(ws, "query", PLANS, {})
            refused = await ws.receive_json(timeout=10)
            assert refused["type"] == "error" and refused["id"] == "query", refused

            # The connection stays open; once the client ends one subscription there is room.
            await ws.send_json({"type": "complete", "id": "feed-1"})
            await operation(ws, "query-2", PLANS, {})
            answer = await ws.receive_json(timeout=10)
            assert answer["type"] == "next" and answer["id"] == "query-2", answer
            assert answer["payload"]["data"]["plans"][0]["tier"] == "STARTER"
            assert (await ws.receive_json(timeout=10)) == {"type": "complete", "id": "query-2"}
            assert not ws.closed
        finally:
            await ws.close()
