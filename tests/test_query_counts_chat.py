"""Conversations with their messages cost the same statements for 2 or 8 conversations."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.chat_helpers import CHAT, ORIGIN, deploy, widget_chat
from tests.conftest import Client, RunningServer, count_statements, sign_up

CONVERSATIONS = """
query($id: ID!, $first: Int!) {
  organization(id: $id) {
    conversations(first: $first) {
      edges { node { id project { name } messages(first: 10) { edges { node { role content } } } } }
    }
  }
}
"""


async def test_conversation_messages_are_batched(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    deployed = await deploy(client, account)
    for index in range(8):
        await widget_chat(http, server, deployed.project_key, f"question {index}")
    counts = []
    for first in (2, 8):
        with count_statements(server) as counter:
            response = await client.execute(
                CONVERSATIONS,
                {"id": account.organization_id, "first": first},
                token=account.access_token,
            )
        assert response.errors == []
        edges = response.data["organization"]["conversations"]["edges"]
        assert len(edges) == first
        assert all(len(edge["node"]["messages"]["edges"]) == 2 for edge in edges)
        counts.append(counter.count)
    assert counts[0] == counts[1], counts


async def chat_counted(
    http: aiohttp.ClientSession, server: RunningServer, project_key: str, conversation: str | None
) -> tuple[str | None, int, int]:
    """One widget message on an open connection, continuing the conversation of the token
    ``conversation``: (a new conversation's token, statements, transactions)."""
    async with http.ws_connect(
        server.ws_url, protocols=["graphql-transport-ws"], headers={"Origin": ORIGIN}
    ) as ws:
        await ws.send_json({"type": "connection_init", "payload": {"projectKey": project_key}})
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
        variables = {"input": {"message": "Where is my order?", "conversationToken": conversation}}
        events: list[dict[str, Any]] = []
        with count_statements(server) as counter:
            await ws.send_json(
                {"type": "subscribe", "id": "1", "payload": {"query": CHAT, "variables": variables}}
            )
            while (frame := await ws.receive_json(timeout=20))["type"] != "complete":
                assert "errors" not in frame["payload"], frame
                events.append(frame["payload"]["data"]["chat"])
    assert events[-1]["__typename"] == "ChatCompleted", events
    return events[0]["conversationToken"], counter.count, counter.transactions


async def test_a_widget_message_costs_six_statements_in_three_transactions(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """DESIGN.md, performance: the project and agent read (with the day's and month's usage
    for the budgets), the conversation and its first message stored together (a continued
    conversation: its history read by token), the reply stored with the conversation's
    spend and the day's usage (an upsert) — for a new conversation and a continued one."""
    account = await sign_up(client)
    deployed = await deploy(client, account)
    conversation, statements, transactions = await chat_counted(
        http, server, deployed.project_key, None
    )
    assert statements <= 6 and transactions <= 3, (statements, transactions)
    _, statements, transactions = await chat_counted(
        http, server, deployed.project_key, conversation
    )
    assert statements <= 6 and transactions <= 3, (statements, transactions)
