"""The external chat API: sendMessage over HTTP with X-Project-Key, against a fake OpenAI."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest

from kindrobots.chat import providers
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.security import ssrf
from tests.chat_helpers import deploy, widget_chat
from tests.conftest import Account, Client, Response, RunningServer, sign_up
from tests.fake_llm import (
    FakeLLM,
    Reply,
    Setup,
    deploy_on_fake,
    error,
    openai_text,
    stored_messages,
    stream,
)

API_KEY = "fakekey-send-Jw3nT6yQ"
SEND = """
mutation($input: ChatInput!) {
  sendMessage(input: $input) {
    conversationId conversationToken messageId content usage { inputTokens outputTokens }
  }
}
"""


async def set_up(
    server: RunningServer, http: aiohttp.ClientSession, fake: FakeLLM, account: Account
) -> Setup:
    return await deploy_on_fake(
        server, http, fake, account, provider="OPENAI", model="gpt-4o-mini", api_key=API_KEY
    )


async def send(
    client: Client,
    project_key: str,
    message: str,
    conversation_id: str | None = None,
    conversation_token: str | None = None,
) -> Response:
    """sendMessage as a server-to-server caller: the project key header, no Authorization."""
    return await client.execute(
        SEND,
        {
            "input": {
                "message": message,
                "conversationId": conversation_id,
                "conversationToken": conversation_token,
            }
        },
        headers={"X-Project-Key": project_key},
    )


async def test_send_message_returns_the_whole_reply_and_stores_it(
    llm_server: RunningServer, account: Account, http: aiohttp.ClientSession, fake: FakeLLM
) -> None:
    setup = await set_up(llm_server, http, fake, account)
    parts = ["Returns are ", "free within ", "30 days."]
    setup.scenario.queue(stream(openai_text(parts, usage=(42, 7))))

    response = await send(setup.client, setup.deployed.project_key, "Can I return it?")

    assert response.status == 200
    assert response.errors == [], response.errors
    reply = response.data["sendMessage"]
    assert reply["content"] == "Returns are free within 30 days."
    assert reply["usage"] == {"inputTokens": 42, "outputTokens": 7}
    user, assistant = await stored_messages(llm_server, reply["conversationId"])
    assert (user.role, user.content) == ("user", "Can I return it?")
    assert (assistant.role, assistant.content, assistant.partial) == (
        "assistant",
        reply["content"],
        False,
    )
    assert (assistant.input_tokens, assistant.output_tokens) == (42, 7)
    assert reply["messageId"] == to_global_id("Message", assistant.id)
    (received,) = setup.scenario.requests
    assert received.headers["Authorization"] == f"Bearer {API_KEY}"
    assert received.body["messages"][-1] == {"role": "user", "content": "Can I return it?"}

    # The dashboard reads the same conversation as the widget would have stored it.
    conversation = await setup.client.execute(
        """query($id: ID!) { node(id: $id) { ... on Conversation {
            messages { edges { node { role content } } } } } }""",
        {"id": reply["conversationId"]},
        token=setup.account.access_token,
    )
    assert [edge["node"] for edge in conversation.data["node"]["messages"]["edges"]] == [
        {"role": "user", "content": "Can I return it?"},
        {"role": "assistant", "content": "Returns are free within 30 days."},
    ]


@pytest.mark.parametrize(
    "key",
    [
        "pk_0000000000000000000000000000000000000000",
        "not-a-project-key",
        "",
    ],
    ids=["unknown", "malformed", "empty"],
)
async def test_send_message_with_a_wrong_project_key_is_refused(
    key: str,
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
) -> None:
    setup = await set_up(llm_server, http, fake, account)
    response = await send(setup.client, key, "Hello?")
    assert response.data is None or response.data.get("sendMessage") is None
    assert response.codes == ["FORBIDDEN"], response.body
    assert setup.scenario.requests == []


async def test_send_message_with_a_key_of_a_deleted_project_is_refused(
    llm_server: RunningServer, account: Account, http: aiohttp.ClientSession, fake: FakeLLM
) -> None:
    setup = await set_up(llm_server, http, fake, account)
    deleted = await setup.client.execute(
        "mutation($id: ID!) { deleteProject(id: $id) }",
        {"id": setup.deployed.project_id},
        token=setup.account.access_token,
    )
    assert deleted.errors == [], deleted.errors
    response = await send(setup.client, setup.deployed.project_key, "Hello?")
    assert response.codes == ["FORBIDDEN"], response.body
    assert setup.scenario.requests == []


async def test_a_conversation_continues_with_its_history(
    llm_server: RunningServer, account: Account, http: aiohttp.ClientSession, fake: FakeLLM
) -> None:
    setup = await set_up(llm_server, http, fake, account)
    setup.scenario.queue(
        stream(openai_text(["Hi Ada, ", "nice to meet you."], usage=(20, 6))),
        stream(openai_text(["Your name ", "is Ada."], usage=(35, 4))),
    )
    key = setup.deployed.project_key
    first = await send(setup.client, key, "My name is Ada.")
    assert first.errors == [], first.errors
    conversation_id = first.data["sendMessage"]["conversationId"]

    token = first.data["sendMessage"]["conversationToken"]
    second = await send(setup.client, key, "What is my name?", conversation_id, token)

    assert second.errors == [], second.errors
    assert second.data["sendMessage"]["conversationId"] == conversation_id
    assert second.data["sendMessage"]["content"] == "Your name is Ada."
    _, continued = setup.scenario.requests
    assert continued.body["messages"] == [
        {"role": "system", "content": "You help shoppers."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hi Ada, nice to meet you."},
        {"role": "user", "content": "What is my name?"},
    ]
    stored = await stored_messages(llm_server, conversation_id)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "My name is Ada."),
        ("assistant", "Hi Ada, nice to meet you."),
        ("user", "What is my name?"),
        ("assistant", "Your name is Ada."),
    ]


async def test_a_conversation_of_another_project_is_not_found(
    llm_server: RunningServer, account: Account, http: aiohttp.ClientSession, fake: FakeLLM
) -> None:
    owner = await set_up(llm_server, http, fake, account)
    owner.scenario.queue(stream(openai_text(["Your card ends in 4242."], usage=(10, 5))))
    first = await send(owner.client, owner.deployed.project_key, "Which card did I use?")
    assert first.errors == [], first.errors
    conversation_id = first.data["sendMessage"]["conversationId"]

    # Another organization's project, and another project of the same organization.
    stranger = await set_up(llm_server, http, fake, await sign_up(owner.client))
    sibling = await deploy(owner.client, owner.account)
    for project_key in (stranger.deployed.project_key, sibling.project_key):
        token = first.data["sendMessage"]["conversationToken"]
        response = await send(owner.client, project_key, "Repeat that", conversation_id, token)
        assert response.codes == ["NOT_FOUND"], response.body
        assert "4242" not in json.dumps(response.body)
        # Over the widget WebSocket too (the subscription fails; nothing is streamed).
        async with http.ws_connect(
            llm_server.ws_url,
            protocols=["graphql-transport-ws"],
            headers={"Origin": "https://shop.example.com"},
        ) as ws:
            await ws.send_json({"type": "connection_init", "payload": {"projectKey": project_key}})
            assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
            await ws.send_json(
                {
                    "type": "subscribe",
                    "id": "1",
                    "payload": {
                        "query": CHAT_STARTED,
                        "variables": {
                            "input": {"message": "Repeat that", "conversationId": conversation_id}
                        },
                    },
                }
            )
            frame = await ws.receive_json(timeout=10)
            assert frame["type"] in ("error", "next"), frame
            errors = frame["payload"] if frame["type"] == "error" else frame["payload"]["errors"]
            assert [e["extensions"]["code"] for e in errors] == ["NOT_FOUND"], frame
    # Only the owner's first message went upstream.
    assert len(owner.scenario.requests) == 1
    assert stranger.scenario.requests == []

    stored = await stored_messages(llm_server, conversation_id)
    assert [m.content for m in stored] == ["Which card did I use?", "Your card ends in 4242."]
    raw = from_global_id(conversation_id, "Conversation")
    assert all(m.conversation_id == raw for m in stored)


CHAT_STARTED = """
subscription($input: ChatInput!) {
  chat(input: $input) { __typename ... on ChatStarted { conversationId } }
}
"""


@dataclass(frozen=True)
class Upstream:
    reply: Reply
    code: str
    says: str
    retry_after: int | None = None


UPSTREAM = {
    "unauthorized": Upstream(
        error(401, {"error": {"message": f"Incorrect API key provided: {API_KEY}"}}),
        "UPSTREAM_ERROR",
        "rejected the API key",
    ),
    "rate-limited": Upstream(
        error(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "12"}),
        "RATE_LIMITED",
        "rate limiting",
        retry_after=12,
    ),
    "server-error": Upstream(
        error(500, {"error": {"message": "boom"}}), "UPSTREAM_ERROR", "status 500"
    ),
    "cut-mid-stream": Upstream(
        stream(openai_text(["Your refund "], done=False), "cut"), "UPSTREAM_ERROR", "broke"
    ),
    "timeout": Upstream(
        stream(openai_text(["Your refund "], done=False), "hold"),
        "UPSTREAM_ERROR",
        "did not answer in time",
    ),
}


@pytest.mark.parametrize("case", list(UPSTREAM))
async def test_upstream_failures_are_public_errors_without_the_key(
    case: str,
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream = UPSTREAM[case]
    if case == "timeout":
        monkeypatch.setattr(
            providers, "stream_request", functools.partial(ssrf.stream_request, read_timeout=0.5)
        )
    setup = await set_up(llm_server, http, fake, account)
    setup.scenario.queue(upstream.reply)

    response = await send(setup.client, setup.deployed.project_key, "Where is my refund?")

    (failure,) = response.errors
    assert failure["extensions"]["code"] == upstream.code, failure
    assert upstream.says in failure["message"]
    assert failure["extensions"].get("retryAfter") == upstream.retry_after
    if upstream.retry_after is not None:
        # API.md: RATE_LIMITED over HTTP is also status 429 with a Retry-After header.
        assert response.status == 429
        assert response.headers["Retry-After"] == str(upstream.retry_after)
    assert len(setup.scenario.requests) == 1
    assert API_KEY not in json.dumps(response.body)
    assert caplog.records
    assert API_KEY not in caplog.text
    assert not [r for r in caplog.records if API_KEY in r.getMessage()]


async def test_widget_and_api_replies_share_one_conversation(
    llm_server: RunningServer, account: Account, http: aiohttp.ClientSession, fake: FakeLLM
) -> None:
    """A conversation the widget started can be continued over the API, and the other way."""
    setup = await set_up(llm_server, http, fake, account)
    setup.scenario.queue(
        stream(openai_text(["Hello from the stream."], usage=(5, 4))),
        stream(openai_text(["Hello from the API."], usage=(9, 4))),
    )
    events = await widget_chat(http, llm_server, setup.deployed.project_key, "Hi")
    conversation_id: Any = events[0]["conversationId"]
    response = await send(
        setup.client,
        setup.deployed.project_key,
        "Again",
        conversation_id,
        events[0]["conversationToken"],
    )
    assert response.errors == [], response.errors
    stored = await stored_messages(llm_server, conversation_id)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Hi"),
        ("assistant", "Hello from the stream."),
        ("user", "Again"),
        ("assistant", "Hello from the API."),
    ]


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({}, 1, 60),
        ({"Retry-After": "HTTP-DATE+120"}, 60, 121),
        ({"Retry-After": "soon"}, 1, 60),
        ({"Retry-After": "99999999999999"}, 1, 2**31 - 1),
        ({"Retry-After": "inf"}, 1, 2**31 - 1),
    ],
    ids=["no-header", "http-date", "garbage", "huge", "infinite"],
)
async def test_every_429_is_rate_limited_with_a_usable_retry_after(
    headers: dict[str, str],
    low: int,
    high: int,
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
) -> None:
    """Providers send Retry-After as seconds, as an HTTP date, or not at all."""
    if headers.get("Retry-After") == "HTTP-DATE+120":
        when = datetime.now(UTC) + timedelta(seconds=120)
        headers = {"Retry-After": format_datetime(when, usegmt=True)}
    setup = await set_up(llm_server, http, fake, account)
    setup.scenario.queue(error(429, {"error": {"message": "slow down"}}, headers))
    setup.scenario.queue(error(429, {"error": {"message": "slow down"}}, headers))

    response = await send(setup.client, setup.deployed.project_key, "Hello?")
    events = await widget_chat(http, llm_server, setup.deployed.project_key, "Hello?")

    (failure,) = response.errors
    assert failure["extensions"]["code"] == "RATE_LIMITED", failure
    assert low <= failure["extensions"]["retryAfter"] <= high, failure
    assert response.status == 429
    assert response.headers["Retry-After"] == str(failure["extensions"]["retryAfter"])
    assert events[-1]["__typename"] == "ChatError", events
    assert low <= events[-1]["retryAfter"] <= high, events
