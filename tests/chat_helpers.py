"""Helpers for chat tests: an agent with a project, and a widget WebSocket client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from tests.conftest import Account, Client

CREATE_AGENT = """
mutation($input: CreateAgentInput!) { createAgent(input: $input) { id } }
"""
CREATE_PROJECT = """
mutation($input: CreateProjectInput!) { createProject(input: $input) { id publishableKey } }
"""
CHAT = """
subscription($input: ChatInput!) {
  chat(input: $input) {
    __typename
    ... on ChatStarted { conversationId conversationToken }
    ... on ChatDelta { text }
    ... on ChatToolCall { name arguments result }
    ... on ChatCompleted { messageId usage { inputTokens outputTokens } }
    ... on ChatError { message retryAfter }
  }
}
"""
ORIGIN = "https://shop.example.com"


@dataclass
class Deployed:
    agent_id: str
    project_id: str
    project_key: str


async def deploy(
    client: Client,
    account: Account,
    *,
    credential_id: str | None = None,
    manifest_ids: list[str] | None = None,
    origins: list[str] | None = None,
    project: dict[str, Any] | None = None,
    model: str = "demo-model",
) -> Deployed:
    agent = await client.execute(
        CREATE_AGENT,
        {
            "input": {
                "organizationId": account.organization_id,
                "name": "Helper",
                "model": model,
                "systemPrompt": "You help shoppers.",
                "llmCredentialId": credential_id,
                "manifestIds": manifest_ids or [],
            }
        },
        token=account.access_token,
    )
    assert agent.errors == [], agent.errors
    agent_id = agent.data["createAgent"]["id"]
    created = await client.execute(
        CREATE_PROJECT,
        {
            "input": {
                "organizationId": account.organization_id,
                "name": "Shop",
                "agentId": agent_id,
                "allowedOrigins": origins if origins is not None else [ORIGIN],
                **(project or {}),
            }
        },
        token=account.access_token,
    )
    assert created.errors == [], created.errors
    data = created.data["createProject"]
    return Deployed(agent_id, data["id"], data["publishableKey"])


class Served(Protocol):
    """A Kind Robots server, in this process or another: where its WebSocket is."""

    @property
    def ws_url(self) -> str: ...


@asynccontextmanager
async def widget_socket(
    http: aiohttp.ClientSession,
    server: Served,
    project_key: str,
    *,
    origin: str | None = ORIGIN,
    token: str | None = None,
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A widget WebSocket past ``connection_ack``, for tests that drive it frame by frame."""
    headers = {"Origin": origin} if origin else {}
    payload: dict[str, Any] = {"projectKey": project_key}
    if token:
        payload["token"] = token
    async with http.ws_connect(
        server.ws_url, protocols=["graphql-transport-ws"], headers=headers
    ) as ws:
        await ws.send_json({"type": "connection_init", "payload": payload})
        ack = await ws.receive_json(timeout=10)
        assert ack["type"] == "connection_ack", ack
        yield ws


async def widget_chat(
    http: aiohttp.ClientSession,
    server: Served,
    project_key: str,
    message: str,
    *,
    origin: str | None = ORIGIN,
    token: str | None = None,
    conversation_id: str | None = None,
    conversation_token: str | None = None,
) -> list[dict[str, Any]]:
    """Connect as a widget, send one message, return every chat event until complete."""
    events: list[dict[str, Any]] = []
    async with widget_socket(http, server, project_key, origin=origin, token=token) as ws:
        variables = {
            "input": {
                "message": message,
                "conversationId": conversation_id,
                "conversationToken": conversation_token,
            }
        }
        await ws.send_json(
            {"type": "subscribe", "id": "1", "payload": {"query": CHAT, "variables": variables}}
        )
        while True:
            frame = await ws.receive_json(timeout=20)
            if frame["type"] == "complete":
                return events
            assert frame["type"] == "next", frame
            assert "errors" not in frame["payload"], frame
            events.append(frame["payload"]["data"]["chat"])


# DESIGN.md, "Live connections": containment closes open sockets within a second.
CLOSE_WITHIN = 1.0


async def closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    """How the server closed ``ws`` (close code, reason), skipping frames still in flight;
    fails unless the close arrives within :data:`CLOSE_WITHIN` seconds."""
    async with asyncio.timeout(CLOSE_WITHIN):
        while True:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.CLOSE:
                # The frame's own code: the client's close_code may say how its answer fared.
                return int(message.data), str(message.extra or "")
            if message.type is aiohttp.WSMsgType.CLOSED:
                return ws.close_code, ""


async def widget_refused(
    http: aiohttp.ClientSession, server: Served, project_key: str, *, origin: str | None = ORIGIN
) -> tuple[int | None, str]:
    """A widget connection the server refuses at ``connection_init``: how it was closed."""
    headers = {"Origin": origin} if origin else {}
    async with http.ws_connect(
        server.ws_url, protocols=["graphql-transport-ws"], headers=headers
    ) as ws:
        await ws.send_json({"type": "connection_init", "payload": {"projectKey": project_key}})
        message = await ws.receive(timeout=10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        return ws.close_code, str(message.extra or "")
