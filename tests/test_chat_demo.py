"""The demo provider end to end over a real widget WebSocket."""

from __future__ import annotations

import aiohttp

from tests.chat_helpers import deploy, widget_chat
from tests.conftest import Client, RunningServer, sign_up


async def test_widget_chat_streams_and_stores_the_reply(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    deployed = await deploy(client, account)
    events = await widget_chat(http, server, deployed.project_key, "Where is my order?")
    kinds = [event["__typename"] for event in events]
    assert kinds[0] == "ChatStarted" and kinds[-1] == "ChatCompleted"
    assert set(kinds[1:-1]) == {"ChatDelta"}
    text = "".join(event["text"] for event in events if event["__typename"] == "ChatDelta")
    assert text == "You said: Where is my order?"

    conversation = await client.execute(
        """query($id: ID!) { node(id: $id) { ... on Conversation {
            messages { edges { node { role content } } } } } }""",
        {"id": events[0]["conversationId"]},
        token=account.access_token,
    )
    messages = [edge["node"] for edge in conversation.data["node"]["messages"]["edges"]]
    assert messages == [
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": text},
    ]
