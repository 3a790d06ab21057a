"""Conversations with their messages cost the same statements for 2 or 8 conversations."""

from __future__ import annotations

import aiohttp

from tests.chat_helpers import deploy, widget_chat
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
