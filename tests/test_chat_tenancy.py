"""Conversations and messages belong to their organization like every other row."""

from __future__ import annotations

import uuid

import aiohttp

from kindrobots.ids import to_global_id
from tests.chat_helpers import deploy, widget_chat
from tests.conftest import Client, RunningServer, sign_up

NODE = "query($id: ID!) { node(id: $id) { id } }"
CONVERSATIONS = """
query($id: ID!) { organization(id: $id) { conversations { edges { node { id } } } } }
"""


async def test_another_organizations_conversations_look_like_missing_ones(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    owner = await sign_up(client)
    outsider = await sign_up(client)
    deployed = await deploy(client, owner)
    events = await widget_chat(http, server, deployed.project_key, "mine")
    conversation_id = events[0]["conversationId"]
    message_id = events[-1]["messageId"]

    mine = await client.execute(NODE, {"id": message_id}, token=owner.access_token)
    assert mine.data == {"node": {"id": message_id}}
    for own_id, kind in ((conversation_id, "Conversation"), (message_id, "Message")):
        theirs = await client.execute(NODE, {"id": own_id}, token=outsider.access_token)
        missing = await client.execute(
            NODE, {"id": to_global_id(kind, uuid.uuid4())}, token=outsider.access_token
        )
        assert (theirs.errors, theirs.data) == ([], {"node": None})  # API.md: null, no error
        assert theirs.body == missing.body
    listed = await client.execute(
        CONVERSATIONS, {"id": outsider.organization_id}, token=outsider.access_token
    )
    assert listed.data == {"organization": {"conversations": {"edges": []}}}
