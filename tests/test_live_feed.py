"""The dashboard's live feed: conversationEvents(projectId) over graphql-transport-ws.

A subscription is active only once the server has joined the project's broker
channel, which the protocol does not announce. ``LiveFeed.open`` therefore
publishes a probe event on that channel until the subscriber reports it, so a
chat started afterwards is certainly seen (or certainly missed, a failure).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from kindrobots.broker import Message
from kindrobots.ids import from_global_id
from kindrobots.resolvers.chat import channel
from tests.chat_helpers import deploy, widget_chat
from tests.conftest import Client, RunningServer, make_settings, sign_up, start_server
from tests.org_helpers import Team, build_team, missing_id

CONVERSATION_EVENTS = """
subscription($projectId: ID!) {
  conversationEvents(projectId: $projectId) {
    conversationId
    message { id role content createdAt }
  }
}
"""
SEND_MESSAGE = """
mutation($input: ChatInput!) { sendMessage(input: $input) { conversationId content } }
"""
MESSAGES = """
query($id: ID!) { node(id: $id) { ... on Conversation {
  messages { edges { node { id role content createdAt } } } } } }
"""

Publish = Callable[[str, Message], Awaitable[None]]


def probe_event() -> Message:
    return {
        "conversationId": str(uuid.uuid4()),
        "message": {
            "id": str(uuid.uuid4()),
            "role": "probe",
            "content": "probe",
            "createdAt": datetime.now(UTC).isoformat(),
        },
    }


class LiveFeed:
    """One dashboard subscription; ``events`` skips the probes that proved it live."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def frame(self, wait: float = 20) -> dict[str, Any]:
        message = await self.ws.receive(timeout=wait)
        assert message.type == aiohttp.WSMsgType.TEXT, (message, self.ws.close_code)
        frame: dict[str, Any] = json.loads(message.data)
        return frame

    def _is_probe(self, event: dict[str, Any]) -> bool:
        return bool(event["message"]["role"] == "probe")

    async def wait_live(self, project_id: str, publish: Publish) -> list[str]:
        """Probe the project's channel until this subscriber receives a probe.

        Returns the error codes instead when the server refuses the subscription.
        """
        name = channel(from_global_id(project_id, "Project"))
        async with asyncio.timeout(20):
            while True:
                await publish(name, probe_event())
                try:
                    frame = await self.frame(wait=0.25)
                except TimeoutError:
                    continue
                if frame["type"] == "error" or frame["payload"].get("errors"):
                    return error_codes(frame)
                assert frame["type"] == "next", frame
                event = frame["payload"]["data"]["conversationEvents"]
                assert self._is_probe(event), event
                return []

    async def events(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` real events (probes still in flight are skipped)."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            frame = await self.frame()
            assert frame["type"] == "next" and "errors" not in frame["payload"], frame
            event = frame["payload"]["data"]["conversationEvents"]
            if not self._is_probe(event):
                found.append(event)
        return found

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        http: aiohttp.ClientSession,
        ws_url: str,
        token: str,
        project_id: str,
        publish: Publish,
    ) -> AsyncIterator[tuple[LiveFeed, list[str]]]:
        """Subscribe as the dashboard; the feed, live, and the codes of any refusal."""
        async with http.ws_connect(ws_url, protocols=["graphql-transport-ws"]) as ws:
            await ws.send_json(
                {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
            )
            ack = await ws.receive_json(timeout=10)
            assert ack["type"] == "connection_ack", ack
            await ws.send_json(subscribe_frame(project_id))
            feed = cls(ws)
            yield feed, await feed.wait_live(project_id, publish)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        http: aiohttp.ClientSession,
        ws_url: str,
        token: str,
        project_id: str,
        publish: Publish,
    ) -> AsyncIterator[LiveFeed]:
        async with cls.connect(http, ws_url, token, project_id, publish) as (feed, refusal):
            assert refusal == [], refusal
            yield feed


def subscribe_frame(project_id: str) -> dict[str, Any]:
    return {
        "type": "subscribe",
        "id": "feed",
        "payload": {"query": CONVERSATION_EVENTS, "variables": {"projectId": project_id}},
    }


async def first_answer(
    http: aiohttp.ClientSession, ws_url: str, token: str | None, project_id: str
) -> dict[str, Any]:
    """The first frame the server sends for a conversationEvents subscription."""
    payload = {"authorization": f"Bearer {token}"} if token else {}
    async with http.ws_connect(ws_url, protocols=["graphql-transport-ws"]) as ws:
        await ws.send_json({"type": "connection_init", "payload": payload})
        ack = await ws.receive_json(timeout=10)
        assert ack["type"] == "connection_ack", ack
        await ws.send_json(subscribe_frame(project_id))
        frame: dict[str, Any] = await ws.receive_json(timeout=10)
        return frame


def error_codes(frame: dict[str, Any]) -> list[str]:
    """The error codes of an ``error`` frame (or of a ``next`` frame that carries errors)."""
    errors = frame["payload"] if frame["type"] == "error" else frame["payload"].get("errors", [])
    return [error.get("extensions", {}).get("code") for error in errors]


def reply_text(events: list[dict[str, Any]]) -> str:
    return "".join(event["text"] for event in events if event["__typename"] == "ChatDelta")


def in_process(server: RunningServer) -> Publish:
    return server.services.broker.publish


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (event["conversationId"], event["message"]["role"], event["message"]["content"])
        for event in events
    ]


@pytest_asyncio.fixture(scope="module")
async def team(server: RunningServer, http: aiohttp.ClientSession) -> Team:
    """An organization with a member of each role, and an outsider; nobody's role changes."""
    return await build_team(Client(http, server.base_url), server)


async def test_editors_see_every_message_of_their_project_and_no_other(
    client: Client, server: RunningServer, http: aiohttp.ClientSession, team: Team
) -> None:
    shop = await deploy(client, team.owner)
    other = await deploy(client, team.owner)  # same organization, another project

    async with (
        LiveFeed.open(
            http, server.ws_url, team.editor.access_token, shop.project_id, in_process(server)
        ) as editor_feed,
        LiveFeed.open(
            http, server.ws_url, team.owner.access_token, shop.project_id, in_process(server)
        ) as owner_feed,
    ):
        first = await widget_chat(http, server, shop.project_key, "Where is my order?")
        await widget_chat(http, server, other.project_key, "Not for this feed")
        conversation = first[0]["conversationId"]
        second = await widget_chat(
            http,
            server,
            shop.project_key,
            "And my refund?",
            conversation_id=conversation,
            conversation_token=first[0]["conversationToken"],
        )
        expected = [
            (conversation, "user", "Where is my order?"),
            (conversation, "assistant", reply_text(first)),
            (conversation, "user", "And my refund?"),
            (conversation, "assistant", reply_text(second)),
        ]
        assert reply_text(second) == "You said: And my refund?"
        # The external HTTP API's chats are the project's chats too.
        api = await client.execute(
            SEND_MESSAGE,
            {"input": {"message": "Sent by the API"}},
            headers={"X-Project-Key": shop.project_key},
        )
        assert api.errors == [], api.errors
        api_conversation = api.data["sendMessage"]["conversationId"]
        expected += [
            (api_conversation, "user", "Sent by the API"),
            (api_conversation, "assistant", "You said: Sent by the API"),
        ]
        seen = await editor_feed.events(6)
        assert summary(seen) == expected
        assert summary(await owner_feed.events(6)) == expected

    # The events carry the stored messages themselves: same IDs, same timestamps.
    stored = await client.execute(MESSAGES, {"id": conversation}, token=team.editor.access_token)
    assert stored.errors == [], stored.errors
    messages = [edge["node"] for edge in stored.data["node"]["messages"]["edges"]]
    widget_events = seen[:4]
    assert [event["message"]["id"] for event in widget_events] == [
        message["id"] for message in messages
    ]
    assert [datetime.fromisoformat(event["message"]["createdAt"]) for event in widget_events] == [
        datetime.fromisoformat(message["createdAt"]) for message in messages
    ]
    assert seen[3]["message"]["id"] == second[-1]["messageId"]


async def test_who_may_watch_a_projects_feed(
    client: Client, server: RunningServer, http: aiohttp.ClientSession, team: Team
) -> None:
    shop = await deploy(client, team.owner)
    outcomes: dict[str, list[str]] = {}
    for role in ("OWNER", "ADMIN", "EDITOR", "VIEWER", "OUTSIDER"):
        token = team.by_role(role).access_token
        async with LiveFeed.connect(
            http, server.ws_url, token, shop.project_id, in_process(server)
        ) as (_feed, refusal):
            outcomes[role] = refusal
    assert outcomes == {
        "OWNER": [],
        "ADMIN": [],
        "EDITOR": [],
        "VIEWER": ["FORBIDDEN"],
        "OUTSIDER": ["NOT_FOUND"],
    }


async def test_feed_errors_for_strangers_and_missing_projects(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    owner = await sign_up(client)
    shop = await deploy(client, owner)
    anonymous = await first_answer(http, server.ws_url, None, shop.project_id)
    assert error_codes(anonymous) == ["UNAUTHENTICATED"], anonymous
    missing = await first_answer(http, server.ws_url, owner.access_token, missing_id("Project"))
    assert error_codes(missing) == ["NOT_FOUND"], missing
    # An ID of another type names no project.
    agent_id = await first_answer(http, server.ws_url, owner.access_token, shop.agent_id)
    assert error_codes(agent_id) == ["NOT_FOUND"], agent_id


async def test_a_viewer_receives_nothing_of_the_chats_that_follow(
    client: Client, server: RunningServer, http: aiohttp.ClientSession, team: Team
) -> None:
    """The refusal is final: the operation ends, and later messages are not sent to it."""
    shop = await deploy(client, team.owner)
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        await ws.send_json(
            {
                "type": "connection_init",
                "payload": {"authorization": f"Bearer {team.viewer.access_token}"},
            }
        )
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
        await ws.send_json(subscribe_frame(shop.project_id))
        refusal = await ws.receive_json(timeout=10)
        assert error_codes(refusal) == ["FORBIDDEN"], refusal
        await widget_chat(http, server, shop.project_key, "Private question")
        # A ping is answered after anything queued before it: no event may precede the pong.
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=10))["type"] == "pong"


async def test_live_feeds_are_capped_per_user_and_per_organization(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """One signed-up user must not hold a feed for everything (robustness issue, item 3):
    over the cap a feed is refused with RATE_LIMITED, and closing one makes room."""
    settings = make_settings(tmp_path, "sqlite", max_feeds_per_user=2, max_feeds_per_organization=3)
    runner, server = await start_server(settings)
    try:
        client = Client(http, server.base_url)
        team = await build_team(client, server)
        shop = await deploy(client, team.owner)
        publish = in_process(server)

        def feed(token: str) -> Any:
            return LiveFeed.connect(http, server.ws_url, token, shop.project_id, publish)

        async with AsyncExitStack() as stack:
            for _ in range(2):
                _, refusal = await stack.enter_async_context(feed(team.owner.access_token))
                assert refusal == []
            async with feed(team.owner.access_token) as (_, refusal):
                assert refusal == ["RATE_LIMITED"]
            # The editor has feeds of their own to spare, but the organization has one left.
            _, refusal = await stack.enter_async_context(feed(team.editor.access_token))
            assert refusal == []
            async with feed(team.editor.access_token) as (_, refusal):
                assert refusal == ["RATE_LIMITED"]
        # All closed: the owner may watch again.
        async with feed(team.owner.access_token) as (_, refusal):
            assert refusal == []
    finally:
        await runner.cleanup()
