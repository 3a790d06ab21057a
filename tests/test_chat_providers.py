"""OpenAI and Anthropic streaming, end to end: fake providers, a real server, a real WebSocket.

The fakes (tests/fake_llm.py) speak each provider's exact SSE format. The widget
sees the deltas in order, the messages table holds what was streamed and the
token usage, upstream failures become ChatError events (never a hang, never the
key), and a client that leaves makes the server close the upstream request.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from strawberry.types import ExecutionResult

from kindrobots.auth.widgets import authenticate_widget
from kindrobots.chat import providers
from kindrobots.context import RequestContext
from kindrobots.ids import to_global_id
from kindrobots.schema import build_schema
from kindrobots.security import ssrf
from tests.chat_helpers import CHAT, ORIGIN, widget_chat, widget_socket
from tests.conftest import Account, RunningServer
from tests.fake_llm import (
    FakeLLM,
    Reply,
    Setup,
    anthropic_text,
    deploy_on_fake,
    error,
    next_event,
    openai_text,
    sse,
    stored_messages,
    stream,
    streamed_text,
    subscribe_chat,
    wait_for_partial,
)

# No recognisable shape (sk-…), so log redaction by pattern would not hide a leak.
API_KEY = "fakekey-Q7mZr9tLxW4vB2nH"
SYSTEM_PROMPT = "You help shoppers."  # what tests.chat_helpers.deploy sets


@dataclass(frozen=True)
class Dialect:
    provider: str
    model: str
    frames: Callable[..., list[bytes]]
    usage: tuple[int, int]

    def text(self, parts: Sequence[str], *, done: bool = True) -> list[bytes]:
        return self.frames(parts, self.usage, done=done)

    def conversation(self, body: dict[str, Any]) -> list[tuple[str, Any]]:
        """(role, content) of every message the provider was sent, the system prompt first."""
        messages = [(message["role"], message["content"]) for message in body["messages"]]
        if self.provider == "ANTHROPIC":
            return [("system", body["system"]), *messages]
        return messages

    def error_event(self) -> bytes:
        if self.provider == "ANTHROPIC":
            return sse(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                "error",
            )
        return sse({"error": {"message": "The server had an error", "type": "server_error"}})


OPENAI = Dialect("OPENAI", "gpt-4o-mini", openai_text, (12, 5))
COMPATIBLE = Dialect("OPENAI_COMPATIBLE", "llama-3.1-8b", openai_text, (31, 9))
ANTHROPIC = Dialect("ANTHROPIC", "claude-3-5-haiku-latest", anthropic_text, (25, 15))
DIALECTS = [
    pytest.param(OPENAI, id="openai"),
    pytest.param(COMPATIBLE, id="compatible"),
    pytest.param(ANTHROPIC, id="anthropic"),
]


async def set_up(
    server: RunningServer,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    account: Account,
    dialect: Dialect,
) -> Setup:
    return await deploy_on_fake(
        server, http, fake, account, provider=dialect.provider, model=dialect.model, api_key=API_KEY
    )


def assert_key_sent(dialect: Dialect, headers: dict[str, str]) -> None:
    if dialect.provider == "ANTHROPIC":
        assert headers["x-api-key"] == API_KEY
        assert headers["anthropic-version"]
    else:
        assert headers["Authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_streamed_reply_reaches_the_widget_in_order_and_is_stored_with_usage(
    dialect: Dialect,
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
) -> None:
    setup = await set_up(llm_server, http, fake, account, dialect)
    parts = ["Your order ", "A-1001 ", "shipped ", "on Monday", "."]
    setup.scenario.queue(stream(dialect.text(parts)))

    events = await widget_chat(http, llm_server, setup.deployed.project_key, "Where is my order?")

    kinds = [event["__typename"] for event in events]
    assert kinds[0] == "ChatStarted" and kinds[-1] == "ChatCompleted", kinds
    assert set(kinds[1:-1]) == {"ChatDelta"}, kinds
    assert all(event["text"] for event in events[1:-1])
    assert streamed_text(events) == "".join(parts)
    completed = events[-1]
    assert completed["usage"] == {"inputTokens": dialect.usage[0], "outputTokens": dialect.usage[1]}

    (received,) = setup.scenario.requests
    assert received.body["model"] == dialect.model
    assert received.body["stream"] is True
    assert dialect.conversation(received.body) == [
        ("system", SYSTEM_PROMPT),
        ("user", "Where is my order?"),
    ]
    if dialect.provider != "ANTHROPIC":
        assert received.body["stream_options"] == {"include_usage": True}
    assert_key_sent(dialect, received.headers)

    user, assistant = await stored_messages(llm_server, events[0]["conversationId"])
    assert (user.role, user.content, user.partial) == ("user", "Where is my order?", False)
    assert (assistant.role, assistant.content, assistant.partial) == (
        "assistant",
        "".join(parts),
        False,
    )
    assert (assistant.input_tokens, assistant.output_tokens) == dialect.usage
    assert completed["messageId"] == to_global_id("Message", assistant.id)


@dataclass(frozen=True)
class Failure:
    """An upstream failure, what the widget is told, and what is kept of the reply."""

    replies: Callable[[Dialect], Reply]
    says: str
    retry_after: int | None = None
    streamed: str = ""  # text streamed before the failure, kept as a partial message


FAILURES = {
    "unauthorized": Failure(
        lambda d: error(
            401,
            {"error": {"message": f"Incorrect API key provided: {API_KEY}.", "type": "auth"}},
        ),
        "rejected the API key",
    ),
    "rate-limited": Failure(
        lambda d: error(
            429,
            {"error": {"message": f"Rate limit reached for key {API_KEY}", "type": "rate"}},
            {"Retry-After": "7"},
        ),
        "rate limiting",
        retry_after=7,
    ),
    "server-error": Failure(
        lambda d: error(503, {"error": {"message": "Service unavailable"}}), "status 503"
    ),
    "cut-mid-stream": Failure(
        lambda d: stream(d.text(["Your order ", "is on"], done=False), "cut"),
        "broke",
        streamed="Your order is on",
    ),
    "ended-early": Failure(
        lambda d: stream(d.text(["Your order ", "is"], done=False)),
        "ended early",
        streamed="Your order is",
    ),
    "error-event": Failure(
        lambda d: stream([*d.text(["Let me check"], done=False), d.error_event()]),
        "error mid-stream",
        streamed="Let me check",
    ),
    "timeout": Failure(
        lambda d: stream(d.text(["Hmm, "], done=False), "hold"),
        "did not answer in time",
        streamed="Hmm, ",
    ),
}


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("dialect", [DIALECTS[0], DIALECTS[2]])
async def test_upstream_failure_becomes_a_chat_error_without_the_key(
    dialect: Dialect,
    failure: str,
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    case = FAILURES[failure]
    if failure == "timeout":
        # The provider read timeout is 60 s; the test shortens it rather than wait.
        monkeypatch.setattr(
            providers, "stream_request", functools.partial(ssrf.stream_request, read_timeout=0.5)
        )
    setup = await set_up(llm_server, http, fake, account, dialect)
    setup.scenario.queue(case.replies(dialect))

    events = await widget_chat(http, llm_server, setup.deployed.project_key, "Where is it?")

    kinds = [event["__typename"] for event in events]
    assert kinds[0] == "ChatStarted" and kinds[-1] == "ChatError", kinds
    assert set(kinds[1:-1]) <= {"ChatDelta"}, kinds
    assert streamed_text(events) == case.streamed
    assert case.says in events[-1]["message"]
    assert events[-1]["retryAfter"] == case.retry_after
    assert len(setup.scenario.requests) == 1

    stored = await stored_messages(llm_server, events[0]["conversationId"])
    assert [(m.role, m.content, m.partial) for m in stored] == [
        ("user", "Where is it?", False),
        *([("assistant", case.streamed, True)] if case.streamed else []),
    ]
    assert API_KEY not in json.dumps(events)
    assert caplog.records, "the server logs nothing at all: the log check would prove nothing"
    assert API_KEY not in caplog.text
    assert not [r for r in caplog.records if API_KEY in r.getMessage()]


async def read_text(ws: aiohttp.ClientWebSocketResponse, expected: str) -> list[dict[str, Any]]:
    """Chat events up to and including the delta that completes ``expected``."""
    events = [await next_event(ws)]
    assert events[0]["__typename"] == "ChatStarted", events
    while streamed_text(events) != expected:
        assert expected.startswith(streamed_text(events)), events
        events.append(await next_event(ws))
        assert events[-1]["__typename"] == "ChatDelta", events
    return events


@pytest.mark.parametrize("dialect", [DIALECTS[0], DIALECTS[2]])
async def test_complete_from_the_client_cancels_the_upstream_request_and_keeps_the_partial(
    dialect: Dialect,
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
) -> None:
    setup = await set_up(llm_server, http, fake, account, dialect)
    scenario = setup.scenario
    scenario.queue(
        stream(dialect.text(["Once upon ", "a time"], done=False), "hold"),
        stream(dialect.text(["Still here."])),
    )
    async with widget_socket(http, llm_server, setup.deployed.project_key) as ws:
        await subscribe_chat(ws, "Tell me a story")
        events = await read_text(ws, "Once upon a time")
        assert not scenario.closed.is_set()
        await ws.send_json({"type": "complete", "id": "1"})
        # The provider sees its connection close: the server stopped the upstream request.
        async with asyncio.timeout(5):
            await scenario.closed.wait()
        conversation_id = events[0]["conversationId"]
        partial = await wait_for_partial(llm_server, conversation_id)
        assert partial.content == "Once upon a time"

        # The socket is still good for the next message of the same conversation.
        await subscribe_chat(
            ws,
            "Go on",
            conversation_id,
            operation_id="2",
            conversation_token=events[0]["conversationToken"],
        )
        follow_up = await read_text(ws, "Still here.")
        assert follow_up[0]["conversationId"] == conversation_id
        assert (await next_event(ws))["__typename"] == "ChatCompleted"

    stored = await stored_messages(llm_server, conversation_id)
    assert [(m.role, m.content, m.partial) for m in stored] == [
        ("user", "Tell me a story", False),
        ("assistant", "Once upon a time", True),
        ("user", "Go on", False),
        ("assistant", "Still here.", False),
    ]


@pytest.mark.parametrize("dialect", [DIALECTS[0], DIALECTS[2]])
async def test_a_client_that_disconnects_cancels_the_upstream_request_and_keeps_the_partial(
    dialect: Dialect,
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
) -> None:
    setup = await set_up(llm_server, http, fake, account, dialect)
    scenario = setup.scenario
    scenario.queue(stream(dialect.text(["It was ", "a dark ", "night"], done=False), "hold"))
    async with widget_socket(http, llm_server, setup.deployed.project_key) as ws:
        await subscribe_chat(ws, "Tell me a story")
        events = await read_text(ws, "It was a dark night")
    # The socket is closed here, without a `complete`.
    async with asyncio.timeout(5):
        await scenario.closed.wait()
    partial = await wait_for_partial(llm_server, events[0]["conversationId"])
    assert partial.content == "It was a dark night"
    assert len(scenario.requests) == 1


@pytest.mark.parametrize("dialect", [DIALECTS[0], DIALECTS[2]])
async def test_closing_the_event_stream_between_events_cancels_upstream_and_keeps_partial(
    dialect: Dialect,
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
) -> None:
    """`complete` that arrives while an event is being sent closes the stream at a yield.

    Strawberry's graphql-transport-ws handler then cancels the task inside its own send
    and closes the result stream (``aclosing``): the reply must end the same way as a
    cancellation while waiting for the provider. The test drives that path directly, the
    way the transport does, because a socket cannot pin the moment deterministically.
    """
    setup = await set_up(llm_server, http, fake, account, dialect)
    scenario = setup.scenario
    scenario.queue(stream(dialect.text(["Once upon ", "a time"], done=False), "hold"))
    services = llm_server.services
    caller = await authenticate_widget(
        services.read,
        services.jwks,
        project_key=setup.deployed.project_key,
        origin=ORIGIN,
        token=None,
        browser_only=True,
    )
    context = RequestContext(services=services, ip="127.0.0.1", user_agent=None, caller=caller)
    results = await build_schema().stream(
        CHAT, variable_values={"input": {"message": "Tell me a story"}}, context_value=context
    )
    events: list[dict[str, Any]] = []
    async with aclosing(results):
        async for result in results:
            assert isinstance(result, ExecutionResult) and not result.errors, result
            assert result.data is not None
            events.append(result.data["chat"])
            if streamed_text(events) == "Once upon a time":
                break
    async with asyncio.timeout(5):
        await scenario.closed.wait()
    partial = await wait_for_partial(llm_server, events[0]["conversationId"])
    assert partial.content == "Once upon a time"
