"""Persistent widget conversations and feedback (issue 13, items 3 and 5).

A widget's new conversation comes with a conversation token; with it a reload reads the
history back (``widgetConversation``) and goes on. Nobody else's token or conversation
ID gives anything: not another visitor's, not another project's or organization's, and
on AUTHENTICATED projects not another end user's — over the widget WebSocket and over
HTTP alike. Visitors rate the assistant's replies of their own conversation only; the
dashboard sees the rating on the message and the counts on the agent.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import select

from kindrobots.db.models import Conversation, Message
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.security import redaction
from tests.chat_helpers import ORIGIN, Deployed, deploy, widget_chat, widget_socket
from tests.conftest import Client, RunningServer, backend_server, count_statements, sign_up
from tests.jwks_server import AUDIENCE, ISSUER, JwksServer, SigningKey, claims
from tests.test_rate_limits import frame_codes, ws_operation

HISTORY = """
query($token: String) {
  widgetConversation(conversationToken: $token) {
    id messages { id role content rating createdAt }
  }
}
"""
SEND = """
mutation($input: ChatInput!) {
  sendMessage(input: $input) { conversationId conversationToken messageId content }
}
"""
RATE = """
mutation($input: RateMessageInput!) { rateMessage(input: $input) { id role rating } }
"""
MESSAGE = "query($id: ID!) { node(id: $id) { ... on Message { id rating } } }"
FEEDBACK = "query($id: ID!) { node(id: $id) { ... on Agent { feedback { up down } } } }"
AGENTS_FEEDBACK = """
query($id: ID!, $first: Int!) {
  organization(id: $id) {
    agents(first: $first) { edges { node { id name feedback { up down } } } }
  }
}
"""


def widget_headers(project_key: str, token: str | None = None) -> dict[str, str]:
    headers = {"X-Project-Key": project_key, "Origin": ORIGIN}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def history(
    client: Client, project_key: str, token: str | None, end_user: str | None = None
) -> Any:
    """``widgetConversation`` over HTTP, as the widget's fallback and the API call it."""
    response = await client.execute(
        HISTORY, {"token": token}, headers=widget_headers(project_key, end_user)
    )
    assert response.errors == [], response.errors
    return response.data["widgetConversation"]


async def send(
    client: Client,
    project_key: str,
    message: str,
    *,
    conversation_token: str | None = None,
    conversation_id: str | None = None,
    end_user: str | None = None,
) -> Any:
    return await client.execute(
        SEND,
        {
            "input": {
                "message": message,
                "conversationToken": conversation_token,
                "conversationId": conversation_id,
            }
        },
        headers=widget_headers(project_key, end_user),
    )


async def test_a_reload_resumes_the_conversation_by_its_token(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    shop = await deploy(client, account)
    first = await widget_chat(http, server, shop.project_key, "Where is my order?")
    started = first[0]
    token = started["conversationToken"]
    assert token.startswith("ct_") and len(token) >= 40
    second = await widget_chat(
        http, server, shop.project_key, "And my refund?", conversation_token=token
    )
    assert second[0] == {
        "__typename": "ChatStarted",
        "conversationId": started["conversationId"],
        "conversationToken": None,
    }

    # After a reload: the history, over the widget's own WebSocket (a query) and over HTTP.
    async with widget_socket(http, server, shop.project_key) as ws:
        frame = await ws_operation(ws, "history", HISTORY, {"token": token})
    over_ws = frame["payload"]["data"]["widgetConversation"]
    over_http = await history(client, shop.project_key, token)
    assert over_ws == over_http
    assert over_http["id"] == started["conversationId"]
    assert [(m["role"], m["content"]) for m in over_http["messages"]] == [
        ("user", "Where is my order?"),
        ("assistant", "You said: Where is my order?"),
        ("user", "And my refund?"),
        ("assistant", "You said: And my refund?"),
    ]
    assert all(m["rating"] is None for m in over_http["messages"])

    # Only the token's hash is stored.
    raw_id = from_global_id(started["conversationId"], "Conversation")
    async with server.services.read() as session:
        stored = await session.scalar(
            select(Conversation.token_hash).where(Conversation.id == raw_id)
        )
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    # And should one ever reach a log line, it is redacted there.
    assert token not in redaction.redact(f"continuing with {token}")

    # The HTTP API issues tokens too, and goes on with them.
    api = await send(client, shop.project_key, "Hello from the API")
    assert api.errors == [], api.errors
    api_token = api.data["sendMessage"]["conversationToken"]
    assert api_token.startswith("ct_") and api_token != token
    more = await send(client, shop.project_key, "Still there?", conversation_token=api_token)
    assert more.errors == [], more.errors
    assert more.data["sendMessage"]["conversationId"] == api.data["sendMessage"]["conversationId"]
    assert more.data["sendMessage"]["conversationToken"] is None


async def test_another_visitors_token_or_id_gives_nothing(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    owner = await sign_up(client)
    shop = await deploy(client, owner)
    sister = await deploy(client, owner)  # another project of the same organization
    stranger = await deploy(client, await sign_up(client))  # another organization's
    mine = (await widget_chat(http, server, shop.project_key, "my secret order"))[0]
    theirs = (await widget_chat(http, server, shop.project_key, "their order"))[0]

    # Reading: someone else's token, a made-up one, or mine on another project.
    assert (await history(client, shop.project_key, theirs["conversationToken"]))["id"] == (
        theirs["conversationId"]
    )
    made_up = "ct_" + "A" * 43
    for project_key, token in (
        (shop.project_key, made_up),
        (shop.project_key, mine["conversationId"]),
        (sister.project_key, mine["conversationToken"]),
        (stranger.project_key, mine["conversationToken"]),
        (shop.project_key, None),
    ):
        assert await history(client, project_key, token) is None
        async with widget_socket(http, server, project_key) as ws:
            frame = await ws_operation(ws, "h", HISTORY, {"token": token})
        assert frame["payload"] == {"data": {"widgetConversation": None}}

    # Continuing: the ID alone, the ID with another visitor's token, a token elsewhere.
    attempts: list[dict[str, Any]] = [
        {"conversationId": mine["conversationId"]},
        {
            "conversationId": mine["conversationId"],
            "conversationToken": theirs["conversationToken"],
        },
        {"conversationId": str(to_global_id("Conversation", uuid.uuid4()))},
        {"conversationToken": made_up},
    ]
    for attempt in attempts:
        over_http = await client.execute(
            SEND,
            {"input": {"message": "show me", **attempt}},
            headers=widget_headers(shop.project_key),
        )
        assert over_http.codes == ["NOT_FOUND"], over_http.body
        async with widget_socket(http, server, shop.project_key) as ws:
            frame = await ws_operation(
                ws, "c", CHAT_ONLY, {"input": {"message": "show me", **attempt}}
            )
        assert frame_codes(frame) == ["NOT_FOUND"], frame
    for project_key in (sister.project_key, stranger.project_key):
        refused = await send(
            client, project_key, "show me", conversation_token=mine["conversationToken"]
        )
        assert refused.codes == ["NOT_FOUND"], refused.body

    # Nothing of it reached my conversation.
    mine_now = await history(client, shop.project_key, mine["conversationToken"])
    assert [m["content"] for m in mine_now["messages"]] == [
        "my secret order",
        "You said: my secret order",
    ]


CHAT_ONLY = """
subscription($input: ChatInput!) { chat(input: $input) { __typename } }
"""


async def test_visitors_rate_their_own_replies_and_the_agent_counts_them(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    owner = await sign_up(client)
    shop = await deploy(client, owner)
    mine = await send(client, shop.project_key, "Hello")
    theirs = await send(client, shop.project_key, "Hi there")
    my_token = mine.data["sendMessage"]["conversationToken"]
    their_token = theirs.data["sendMessage"]["conversationToken"]
    my_reply = mine.data["sendMessage"]["messageId"]
    their_reply = theirs.data["sendMessage"]["messageId"]
    (my_question,) = [
        m["id"]
        for m in (await history(client, shop.project_key, my_token))["messages"]
        if m["role"] == "user"
    ]

    async def rate(message_id: str, rating: str | None, token: str | None) -> Any:
        return await client.execute(
            RATE,
            {"input": {"messageId": message_id, "rating": rating, "conversationToken": token}},
            headers=widget_headers(shop.project_key),
        )

    rated = await rate(my_reply, "UP", my_token)
    assert rated.errors == [], rated.errors
    assert rated.data["rateMessage"] == {"id": my_reply, "role": "assistant", "rating": "UP"}
    # Over the widget's WebSocket too.
    async with widget_socket(http, server, shop.project_key) as ws:
        frame = await ws_operation(
            ws,
            "rate",
            RATE,
            {
                "input": {
                    "messageId": their_reply,
                    "rating": "DOWN",
                    "conversationToken": their_token,
                }
            },
        )
    assert frame["payload"]["data"]["rateMessage"]["rating"] == "DOWN"

    # Someone else's reply, my own question, no token, another project: nothing.
    for message_id, token in (
        (their_reply, my_token),
        (my_question, my_token),
        (my_reply, None),
        (str(to_global_id("Message", uuid.uuid4())), my_token),
    ):
        refused = await rate(message_id, "DOWN", token)
        assert refused.codes == ["NOT_FOUND"], refused.body
    other = await deploy(client, owner)
    elsewhere = await client.execute(
        RATE,
        {"input": {"messageId": my_reply, "rating": "DOWN", "conversationToken": my_token}},
        headers=widget_headers(other.project_key),
    )
    assert elsewhere.codes == ["NOT_FOUND"]

    # The history shows my rating; the dashboard sees it on the message and the agent.
    rows = (await history(client, shop.project_key, my_token))["messages"]
    assert [m["rating"] for m in rows] == [None, "UP"]
    dashboard = await client.execute(MESSAGE, {"id": my_reply}, token=owner.access_token)
    assert dashboard.data == {"node": {"id": my_reply, "rating": "UP"}}
    counts = await client.execute(FEEDBACK, {"id": shop.agent_id}, token=owner.access_token)
    assert counts.data == {"node": {"feedback": {"up": 1, "down": 1}}}

    # Changing my mind, then clearing the rating.
    assert (await rate(my_reply, "DOWN", my_token)).errors == []
    counts = await client.execute(FEEDBACK, {"id": shop.agent_id}, token=owner.access_token)
    assert counts.data == {"node": {"feedback": {"up": 0, "down": 2}}}
    cleared = await rate(my_reply, None, my_token)
    assert cleared.data["rateMessage"]["rating"] is None
    counts = await client.execute(FEEDBACK, {"id": shop.agent_id}, token=owner.access_token)
    assert counts.data == {"node": {"feedback": {"up": 0, "down": 1}}}
    async with server.services.read() as session:
        ratings = (
            await session.scalars(
                select(Message.rating).where(
                    Message.id.in_([from_global_id(m, "Message") for m in (my_reply, their_reply)])
                )
            )
        ).all()
    assert sorted(ratings, key=str) == sorted([None, "DOWN"], key=str)


async def test_agents_with_feedback_cost_the_same_statements_for_2_or_8(
    client: Client, server: RunningServer
) -> None:
    owner = await sign_up(client)
    for index in range(8):
        shop = await deploy(client, owner)
        reply = await send(client, shop.project_key, f"question {index}")
        data = reply.data["sendMessage"]
        rated = await client.execute(
            RATE,
            {
                "input": {
                    "messageId": data["messageId"],
                    "rating": "UP" if index % 2 else "DOWN",
                    "conversationToken": data["conversationToken"],
                }
            },
            headers=widget_headers(shop.project_key),
        )
        assert rated.errors == [], rated.errors
    counts = []
    for first in (2, 8):
        with count_statements(server) as counter:
            response = await client.execute(
                AGENTS_FEEDBACK,
                {"id": owner.organization_id, "first": first},
                token=owner.access_token,
            )
        assert response.errors == []
        edges = response.data["organization"]["agents"]["edges"]
        assert len(edges) == first
        assert all(sum(edge["node"]["feedback"].values()) == 1 for edge in edges), edges
        counts.append(counter.count)
    assert counts[0] == counts[1], counts


# --- AUTHENTICATED projects: the end user's subject binds the conversation ---------------


@pytest_asyncio.fixture(scope="module")
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgresql"])
async def auth_server(
    request: pytest.FixtureRequest, jwks: JwksServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"conversations-{backend}")
    async with backend_server(tmp, backend, outbound_allow=jwks.host_port) as running:
        yield running


KEY = SigningKey.rsa()


async def authenticated_site(client: Client, jwks: JwksServer) -> Deployed:
    key_set = jwks.key_set([KEY])
    account = await sign_up(client)
    return await deploy(
        client,
        account,
        project={
            "accessMode": "AUTHENTICATED",
            "jwksUrl": key_set.url,
            "jwtIssuer": ISSUER,
            "jwtAudience": AUDIENCE,
        },
    )


async def test_an_end_users_conversation_is_theirs_alone(
    auth_server: RunningServer, jwks: JwksServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, auth_server.base_url)
    site = await authenticated_site(client, jwks)
    alice, bob = KEY.sign(claims("alice")), KEY.sign(claims("bob"))
    older = await widget_chat(http, auth_server, site.project_key, "first", token=alice)
    newer = await widget_chat(http, auth_server, site.project_key, "second", token=alice)
    bobs = await widget_chat(http, auth_server, site.project_key, "bob's", token=bob)
    assert newer[0]["conversationToken"].startswith("ct_")

    # Without a token the end user's most recent conversation; with one, that one.
    latest = await history(client, site.project_key, None, alice)
    assert latest["id"] == newer[0]["conversationId"]
    by_token = await history(client, site.project_key, older[0]["conversationToken"], alice)
    assert by_token["id"] == older[0]["conversationId"]
    async with widget_socket(http, auth_server, site.project_key, token=alice) as ws:
        frame = await ws_operation(ws, "h", HISTORY, {"token": None})
    assert frame["payload"]["data"]["widgetConversation"]["id"] == newer[0]["conversationId"]

    # The ID alone continues one's own conversation (the token is optional here).
    by_id = await widget_chat(
        http,
        auth_server,
        site.project_key,
        "again",
        token=alice,
        conversation_id=older[0]["conversationId"],
    )
    assert by_id[0]["conversationId"] == older[0]["conversationId"]

    # Bob gets nothing of Alice's: not by token, not by ID, not as "his latest".
    assert (await history(client, site.project_key, None, bob))["id"] == bobs[0]["conversationId"]
    assert await history(client, site.project_key, older[0]["conversationToken"], bob) is None
    for attempt in (
        {"conversationId": older[0]["conversationId"]},
        {"conversationToken": older[0]["conversationToken"]},
        {
            "conversationId": older[0]["conversationId"],
            "conversationToken": bobs[0]["conversationToken"],
        },
    ):
        over_http = await client.execute(
            SEND,
            {"input": {"message": "show me", **attempt}},
            headers=widget_headers(site.project_key, bob),
        )
        assert over_http.codes == ["NOT_FOUND"], over_http.body
        async with widget_socket(http, auth_server, site.project_key, token=bob) as ws:
            frame = await ws_operation(
                ws, "c", CHAT_ONLY, {"input": {"message": "show me", **attempt}}
            )
        assert frame_codes(frame) == ["NOT_FOUND"], frame
    reply = older[-1]["messageId"]
    refused = await client.execute(
        RATE,
        {"input": {"messageId": reply, "rating": "UP"}},
        headers=widget_headers(site.project_key, bob),
    )
    assert refused.codes == ["NOT_FOUND"]
    own = await client.execute(
        RATE,
        {"input": {"messageId": reply, "rating": "UP"}},
        headers=widget_headers(site.project_key, alice),
    )
    assert own.data["rateMessage"]["rating"] == "UP"
