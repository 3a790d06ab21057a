"""Local fake LLM providers that speak the OpenAI and Anthropic streaming wire formats.

One :class:`FakeLLM` process-local server answers both APIs. Each test takes its
own :class:`Scenario` (a URL prefix of its own), queues the replies the
provider should give, and afterwards reads back every request the provider
received and whether the caller closed the connection while a reply was held
open.

    fake = await FakeLLM.start()
    scenario = fake.scenario()
    scenario.queue(stream(openai_text(["Hel", "lo"], usage=(12, 5))))
    # addLlmCredential(provider: OPENAI, baseUrl: scenario.openai_base)

:func:`deploy_on_fake` gives a test an agent whose credential points at a
scenario of its own; tests/llm_fixtures.py has the servers that may call the fake.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web
from sqlalchemy import select

from kindrobots.db.models import Message
from kindrobots.ids import from_global_id
from tests.chat_helpers import CHAT, Deployed, deploy
from tests.conftest import (
    Account,
    Client,
    RunningServer,
)
from tests.servers import start_app

Ending = Literal["finish", "cut", "hold"]
HOLD_LIMIT = 30.0  # a held reply gives up after this long, so no handler outlives a test


# --- Wire formats -----------------------------------------------------------------------


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event; ``data`` is JSON-encoded unless it is already text."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def _openai_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    return sse(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


def openai_usage(prompt_tokens: int, completion_tokens: int) -> bytes:
    """The final chunk of ``stream_options.include_usage``: no choices, only usage."""
    return sse(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-fake",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


OPENAI_DONE = sse("[DONE]")


def openai_text(
    parts: Sequence[str], usage: tuple[int, int] | None = None, *, done: bool = True
) -> list[bytes]:
    """A streamed text answer: a role chunk, one chunk per part, finish, usage, [DONE]."""
    frames = [_openai_chunk({"role": "assistant", "content": ""})]
    frames += [_openai_chunk({"content": part}) for part in parts]
    if not done:
        return frames
    frames.append(_openai_chunk({}, "stop"))
    if usage is not None:
        frames.append(openai_usage(*usage))
    frames.append(OPENAI_DONE)
    return frames


@dataclass(frozen=True)
class FakeToolCall:
    id: str
    name: str
    argument_parts: Sequence[str]  # the arguments JSON text, split into fragments

    @property
    def arguments(self) -> str:
        return "".join(self.argument_parts)


def openai_tool_calls(
    calls: Sequence[FakeToolCall], usage: tuple[int, int] | None = None
) -> list[bytes]:
    """Tool calls as OpenAI streams them: id and name first, the arguments in fragments.

    Several calls are interleaved fragment by fragment, as parallel tool calls are.
    """
    frames = [_openai_chunk({"role": "assistant", "content": None})]
    for index, call in enumerate(calls):
        start = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        frames.append(_openai_chunk({"tool_calls": [start]}))
    longest = max((len(call.argument_parts) for call in calls), default=0)
    for step in range(longest):
        for index, call in enumerate(calls):
            if step < len(call.argument_parts):
                fragment = {"index": index, "function": {"arguments": call.argument_parts[step]}}
                frames.append(_openai_chunk({"tool_calls": [fragment]}))
    frames.append(_openai_chunk({}, "tool_calls"))
    if usage is not None:
        frames.append(openai_usage(*usage))
    frames.append(OPENAI_DONE)
    return frames


def _anthropic(event: str, data: dict[str, Any]) -> bytes:
    return sse({"type": event, **data}, event)


def _anthropic_start(input_tokens: int) -> list[bytes]:
    return [
        _anthropic(
            "message_start",
            {
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-fake",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                }
            },
        ),
        _anthropic("ping", {}),
    ]


def _anthropic_stop(stop_reason: str, output_tokens: int) -> list[bytes]:
    return [
        _anthropic(
            "message_delta",
            {
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        _anthropic("message_stop", {}),
    ]


def _anthropic_text_block(index: int, parts: Sequence[str]) -> list[bytes]:
    frames = [
        _anthropic(
            "content_block_start",
            {"index": index, "content_block": {"type": "text", "text": ""}},
        )
    ]
    frames += [
        _anthropic(
            "content_block_delta",
            {"index": index, "delta": {"type": "text_delta", "text": part}},
        )
        for part in parts
    ]
    frames.append(_anthropic("content_block_stop", {"index": index}))
    return frames


def anthropic_text(
    parts: Sequence[str], usage: tuple[int, int] = (25, 15), *, done: bool = True
) -> list[bytes]:
    """A streamed Messages answer; ``usage`` is (input_tokens, final output_tokens)."""
    frames = _anthropic_start(usage[0]) + _anthropic_text_block(0, parts)
    if not done:
        return frames[:-1]  # cut before the block even stops
    return frames + _anthropic_stop("end_turn", usage[1])


def anthropic_tool_use(
    calls: Sequence[FakeToolCall],
    usage: tuple[int, int] = (40, 20),
    preamble: Sequence[str] = (),
) -> list[bytes]:
    """Optional text, then one tool_use block per call with input_json_delta fragments."""
    frames = _anthropic_start(usage[0])
    index = 0
    if preamble:
        frames += _anthropic_text_block(0, preamble)
        index = 1
    for call in calls:
        frames.append(
            _anthropic(
                "content_block_start",
                {
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": {},
                    },
                },
            )
        )
        frames += [
            _anthropic(
                "content_block_delta",
                {"index": index, "delta": {"type": "input_json_delta", "partial_json": part}},
            )
            for part in call.argument_parts
        ]
        frames.append(_anthropic("content_block_stop", {"index": index}))
        index += 1
    return frames + _anthropic_stop("tool_use", usage[1])


# --- Replies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the fake provider answers to one request.

    With ``frames`` it streams them as ``text/event-stream``, then finishes the
    response, cuts the connection (``cut``) or holds it open, sending nothing,
    until the caller goes away (``hold``). Without, it answers ``status`` and
    ``body`` at once.
    """

    status: int = 200
    frames: Sequence[bytes] | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    ending: Ending = "finish"


def stream(frames: Sequence[bytes], ending: Ending = "finish") -> Reply:
    return Reply(frames=frames, ending=ending)


def error(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, body=body, headers=headers or {})


@dataclass(frozen=True)
class Received:
    """One request the fake provider received."""

    path: str
    headers: dict[str, str]
    body: Any


class Scenario:
    """One test's view of the fake: its base URLs, its queued replies, what it received."""

    def __init__(self, fake: FakeLLM, name: str) -> None:
        self.fake = fake
        self.name = name
        self.replies: list[Reply] = []
        self.requests: list[Received] = []
        # Set when the caller closed the connection while a reply was being written or held.
        self.closed = asyncio.Event()
        # Set when a held reply has started holding (its frames are all written).
        self.holding = asyncio.Event()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.fake.port}/s/{self.name}"

    @property
    def openai_base(self) -> str:
        """The baseUrl of an OPENAI credential: the provider posts to base + /chat/completions."""
        return self.root + "/v1"

    @property
    def anthropic_base(self) -> str:
        """The baseUrl of an ANTHROPIC credential: the provider posts to base + /v1/messages."""
        return self.root

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)


class FakeLLM:
    """The fake provider server; both APIs, every scenario, one port."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.scenarios: dict[str, Scenario] = {}

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    async def start(cls) -> FakeLLM:
        app = web.Application()
        fake = cls()
        app.router.add_post("/s/{scenario}/v1/chat/completions", fake._handle)
        app.router.add_post("/s/{scenario}/v1/messages", fake._handle)
        fake.runner, fake.port = await start_app(app, shutdown_timeout=1.0, access_log=None)
        return fake

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def scenario(self) -> Scenario:
        scenario = Scenario(self, uuid.uuid4().hex[:12])
        self.scenarios[scenario.name] = scenario
        return scenario

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        scenario = self.scenarios.get(request.match_info["scenario"])
        if scenario is None:
            return web.json_response({"error": "unknown scenario"}, status=404)
        try:
            body: Any = await request.json()
        except ValueError:
            body = await request.text()
        scenario.requests.append(Received(request.path, dict(request.headers), body))
        if not scenario.replies:
            return web.json_response({"error": {"message": "no reply queued"}}, status=500)
        reply = scenario.replies.pop(0)
        if reply.frames is None:
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        response = web.StreamResponse(
            status=reply.status,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        try:
            for frame in reply.frames:
                await response.write(frame)
        except ConnectionError:
            scenario.closed.set()
            return response
        if reply.ending == "cut":
            # A mid-stream disconnect: the chunked body never terminates.
            if request.transport is not None:
                request.transport.close()
            return response
        if reply.ending == "hold":
            scenario.holding.set()
            await _until_closed(request)
            scenario.closed.set()
            return response
        with suppress(ConnectionError):
            await response.write_eof()
        return response


async def _until_closed(request: web.Request) -> None:
    """Wait, sending nothing, until the caller closes the connection (or the hold limit)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOLD_LIMIT
    while loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.01)


# --- Deploying against the fakes ------------------------------------------------------


ADD_CREDENTIAL = """
mutation($input: AddLlmCredentialInput!) { addLlmCredential(input: $input) { id keyHint } }
"""


async def add_credential(
    client: Client, account: Account, provider: str, base_url: str, api_key: str
) -> str:
    """An LLM credential of ``provider`` pointing at a fake; returns its id."""
    response = await client.execute(
        ADD_CREDENTIAL,
        {
            "input": {
                "organizationId": account.organization_id,
                "provider": provider,
                "apiKey": api_key,
                "label": f"Fake {provider.lower()}",
                "baseUrl": base_url,
            }
        },
        token=account.access_token,
    )
    assert response.errors == [], response.errors
    return str(response.data["addLlmCredential"]["id"])


@dataclass
class Setup:
    """An agent and a project of ``account`` whose credential points at a fresh scenario."""

    client: Client
    account: Account
    scenario: Scenario
    deployed: Deployed


async def deploy_on_fake(
    server: RunningServer,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    account: Account,
    *,
    provider: str,
    model: str,
    api_key: str,
    manifest_ids: list[str] | None = None,
) -> Setup:
    """A scenario of its own, a ``provider`` credential pointing at it, an agent using it."""
    client = Client(http, server.base_url)
    scenario = fake.scenario()
    base = scenario.anthropic_base if provider == "ANTHROPIC" else scenario.openai_base
    credential = await add_credential(client, account, provider, base, api_key)
    deployed = await deploy(
        client, account, credential_id=credential, manifest_ids=manifest_ids, model=model
    )
    return Setup(client, account, scenario, deployed)


# --- Reading back what the server did -------------------------------------------------


async def stored_messages(server: RunningServer, conversation_id: str) -> list[Message]:
    """The rows of the messages table of a conversation (global id), oldest first."""
    raw = from_global_id(conversation_id, "Conversation")
    async with server.services.read() as session:
        rows = await session.scalars(
            select(Message)
            .where(Message.conversation_id == raw)
            .order_by(Message.created_at, Message.id)
        )
        return list(rows.all())


async def wait_for_partial(server: RunningServer, conversation_id: str) -> Message:
    """The partial assistant message of a conversation, once stored; fails after 5 s."""
    async with asyncio.timeout(5):
        while True:
            for message in await stored_messages(server, conversation_id):
                if message.role == "assistant" and message.partial:
                    return message
            await asyncio.sleep(0.02)


async def subscribe_chat(
    ws: aiohttp.ClientWebSocketResponse,
    message: str,
    conversation_id: str | None = None,
    operation_id: str = "1",
    conversation_token: str | None = None,
) -> None:
    variables = {
        "input": {
            "message": message,
            "conversationId": conversation_id,
            "conversationToken": conversation_token,
        }
    }
    await ws.send_json(
        {
            "type": "subscribe",
            "id": operation_id,
            "payload": {"query": CHAT, "variables": variables},
        }
    )


async def next_event(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next chat event of the subscription; fails on errors, completion or a hang."""
    frame = await ws.receive_json(timeout=10)
    assert frame["type"] == "next", frame
    assert "errors" not in frame["payload"], frame
    event: dict[str, Any] = frame["payload"]["data"]["chat"]
    return event


def streamed_text(events: Sequence[dict[str, Any]]) -> str:
    return "".join(event["text"] for event in events if event["__typename"] == "ChatDelta")
