"""Open connections do not outlive the access that opened them."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.chat_helpers import CHAT, closed, deploy, widget_socket
from tests.conftest import Client, RunningServer, sign_up
from tests.org_helpers import build_team, remove
from tests.test_live_feed import LiveFeed, error_codes, in_process

ROTATE = "mutation($id: ID!) { rotateProjectKey(id: $id) { publishableKey } }"
UPDATE = """
mutation($input: UpdateProjectInput!) { updateProject(input: $input) { allowedOrigins } }
"""


async def _next_answer_codes(ws: aiohttp.ClientWebSocketResponse, message: str) -> list[str]:
    variables = {"input": {"message": message}}
    await ws.send_json(
        {"type": "subscribe", "id": message, "payload": {"query": CHAT, "variables": variables}}
    )
    while True:
        frame = await ws.receive_json(timeout=20)
        if frame["type"] == "complete":
            return []
        if frame["type"] == "error" or frame["payload"].get("errors"):
            return error_codes(frame)


async def _open_widget_then_change(
    client: Client,
    server: RunningServer,
    http: aiohttp.ClientSession,
    change: str,
    variables: dict[str, Any],
) -> list[str]:
    """Chat once on an open widget socket, apply ``change``, and chat again on it."""
    account = await sign_up(client)
    deployed = await deploy(client, account)
    async with widget_socket(http, server, deployed.project_key) as ws:
        assert await _next_answer_codes(ws, "before") == []
        variables = {**variables, "id": deployed.project_id}
        changed = await client.execute(
            change,
            variables if change is ROTATE else {"input": variables},
            token=account.access_token,
        )
        assert changed.errors == []
        return await _next_answer_codes(ws, "after")


async def test_a_rotated_key_closes_an_open_widget(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    deployed = await deploy(client, account)
    async with widget_socket(http, server, deployed.project_key) as ws:
        assert await _next_answer_codes(ws, "before") == []
        rotated = await client.execute(
            ROTATE, {"id": deployed.project_id}, token=account.access_token
        )
        assert rotated.errors == []
        assert await closed(ws) == (4403, "This project key is no longer valid.")


async def test_a_removed_origin_stops_an_open_widget(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    codes = await _open_widget_then_change(
        client, server, http, UPDATE, {"allowedOrigins": ["https://other.example.org"]}
    )
    assert codes == ["FORBIDDEN"]


async def test_a_removed_editor_stops_receiving_the_live_feed(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    team = await build_team(client, server)
    deployed = await deploy(client, team.owner)
    async with LiveFeed.open(
        http, server.ws_url, team.editor.access_token, deployed.project_id, in_process(server)
    ) as feed:
        removed = await remove(
            client, team.owner.access_token, team.organization_id, team.editor.user_id
        )
        assert removed.errors == []
        assert await closed(feed.ws) == (
            4403,
            "Your membership of this organization was removed.",
        )
