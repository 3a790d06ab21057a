"""LLM providers behind one streaming interface: OpenAI-compatible, Anthropic, and demo.

Each provider turns a :class:`ChatRequest` into a stream of :data:`Event`s:
text as it is produced, tool calls once their arguments are complete, and the
token usage. Upstream failures become :class:`ProviderError` with a message
fit for the end user; the customer's key never appears in one.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp

from kindrobots import metrics
from kindrobots.security.ssrf import OutboundFailed, OutboundRefused, stream_request

OPENAI_BASE = "https://api.openai.com/v1"
ANTHROPIC_BASE = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
MAX_OUTPUT_TOKENS = 1024
MAX_STREAM_BYTES = 4 * 1024 * 1024
STREAM_DEADLINE = 300.0
DEFAULT_RETRY_AFTER = 5  # seconds, when a 429 does not say
MAX_RETRY_AFTER = 24 * 3600


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text as the model produced it


@dataclass
class Turn:
    """One message of the conversation, in a provider-neutral shape."""

    role: str  # "user", "assistant" or "tool"
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    model: str
    system: str
    turns: Sequence[Turn]
    tools: Sequence[Tool]
    temperature: float


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallsRequested:
    calls: list[ToolCall]


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int


Event = TextDelta | ToolCallsRequested | Usage


class ProviderError(Exception):
    """The upstream call failed; ``message`` is safe to show, ``retry_after`` set on 429."""

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Provider(Protocol):
    def stream(self, request: ChatRequest) -> AsyncIterator[Event]: ...


def _retry_after(headers: Any) -> int:
    """Seconds to wait after a 429: Retry-After in seconds or as an HTTP date, else a default.

    Always a value, so that every 429 reaches the client as RATE_LIMITED with
    ``retryAfter``, and always within [1, MAX_RETRY_AFTER] (GraphQL's Int is 32-bit).
    """
    value = str(headers.get("Retry-After") or "").strip()
    seconds: float | None = None
    try:
        seconds = float(value)
    except ValueError:
        with suppress(TypeError, ValueError):
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    if seconds is None or math.isnan(seconds):
        return DEFAULT_RETRY_AFTER
    return int(min(max(1.0, math.ceil(min(seconds, MAX_RETRY_AFTER))), MAX_RETRY_AFTER))


async def _check_status(response: aiohttp.ClientResponse) -> None:
    if response.status == 200:
        return
    if response.status in (401, 403):
        raise ProviderError("The LLM provider rejected the API key.")
    if response.status == 429:
        raise ProviderError(
            "The LLM provider is rate limiting this agent.",
            retry_after=_retry_after(response.headers),
        )
    if response.status >= 500:
        raise ProviderError(f"The LLM provider failed (status {response.status}).")
    raise ProviderError(f"The LLM provider refused the request (status {response.status}).")


async def _sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream, within size and time caps.

    The per-read timeout alone would let a provider that trickles a byte a minute
    hold a chat open forever, so the whole stream also has a deadline. Lines are split
    from whatever each read brings: a fast model's reply is thousands of short lines, and
    reading them one by one costs more than relaying them.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_DEADLINE
    received = 0
    parser = _SseParser()
    rest = b""
    async for chunk in response.content.iter_any():
        received += len(chunk)
        if received > MAX_STREAM_BYTES:
            raise ProviderError("The LLM provider's reply is too large.")
        if loop.time() > deadline:
            raise ProviderError("The LLM provider took too long to answer.")
        *lines, rest = (rest + chunk if rest else chunk).split(b"\n")
        for item in parser.feed(lines):
            yield item
    for item in parser.feed([rest] if rest else []):
        yield item
    if parser.data:
        yield parser.event, "\n".join(parser.data)


class _SseParser:
    """The field lines of server-sent events, gathered into (event, data) pairs."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def feed(self, lines: list[bytes]) -> list[tuple[str, str]]:
        complete: list[tuple[str, str]] = []
        for raw in lines:
            line = raw.decode("utf-8").rstrip("\r")
            if not line:
                if self.data:
                    complete.append((self.event, "\n".join(self.data)))
                self.event, self.data = "", []
            elif line.startswith("data:"):
                self.data.append(line[5:].removeprefix(" "))
            elif line.startswith("event:"):
                self.event = line[6:].strip()
        return complete


class _Streaming:
    """Shared transport: SSRF-guarded, streamed, every failure a ProviderError."""

    def __init__(
        self, base_url: str, api_key: str, allow: Sequence[str], *, https_only: bool = False
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.allow = allow
        self.https_only = https_only

    async def _events(
        self, path: str, headers: dict[str, str], body: dict[str, Any]
    ) -> AsyncGenerator[tuple[str, dict[str, Any] | None], None]:
        try:
            async with stream_request(
                self.base_url + path,
                allow=self.allow,
                headers=headers,
                json=body,
                https_only=self.https_only,
            ) as response:
                await _check_status(response)
                async for event, data in _sse_data(response):
                    if data == "[DONE]":
                        yield event, None
                        return
                    try:
                        yield event, json.loads(data)
                    except ValueError:
                        raise ProviderError("The LLM provider sent a malformed stream.") from None
        except (OutboundRefused, OutboundFailed) as exc:
            raise ProviderError(f"The LLM provider could not be reached: {exc.message}") from None
        except TimeoutError:
            raise ProviderError("The LLM provider did not answer in time.") from None
        except aiohttp.ClientError:
            raise ProviderError("The connection to the LLM provider broke.") from None
        except ValueError:  # undecodable bytes, or a line longer than the reader accepts
            raise ProviderError("The LLM provider sent a malformed stream.") from None


class OpenAIProvider(_Streaming):
    """Any Chat Completions endpoint with ``stream: true`` (OpenAI and compatibles)."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": "system", "content": request.system}] if request.system else [],
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        body["messages"].extend(_openai_message(turn) for turn in request.turns)
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                }
                for tool in request.tools
            ]
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "text/event-stream"}
        calls: dict[int, dict[str, str]] = {}
        finished = False
        # Closed on every way out, so that the upstream connection closes with it.
        async with aclosing(self._events("/chat/completions", headers, body)) as events:
            async for _event, chunk in events:
                if chunk is None:
                    finished = True
                    break
                if chunk.get("error"):
                    raise ProviderError("The LLM provider reported an error mid-stream.")
                usage = chunk.get("usage")
                if usage:
                    yield Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        yield TextDelta(delta["content"])
                    for fragment in delta.get("tool_calls") or []:
                        slot = calls.setdefault(
                            fragment.get("index", 0), {"id": "", "name": "", "arguments": ""}
                        )
                        function = fragment.get("function") or {}
                        slot["id"] = fragment.get("id") or slot["id"]
                        slot["name"] += function.get("name") or ""
                        slot["arguments"] += function.get("arguments") or ""
        if not finished:
            raise ProviderError("The LLM provider's stream ended early.")
        if calls:
            yield ToolCallsRequested(
                [
                    ToolCall(slot["id"] or f"call_{index}", slot["name"], slot["arguments"] or "{}")
                    for index, slot in sorted(calls.items())
                ]
            )


def _openai_message(turn: Turn) -> dict[str, Any]:
    if turn.role == "tool":
        return {"role": "tool", "tool_call_id": turn.tool_call_id, "content": turn.content}
    message: dict[str, Any] = {"role": turn.role, "content": turn.content or None}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in turn.tool_calls
        ]
    return message


class AnthropicProvider(_Streaming):
    """Anthropic Messages with ``stream: true``."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": MAX_OUTPUT_TOKENS,
            "temperature": min(request.temperature, 1.0),
            "stream": True,
            "messages": _anthropic_messages(request.turns),
        }
        if request.system:
            body["system"] = request.system
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
        headers = {
            "x-api-key": self.api_key,
            "anthropic-version": ANTHROPIC_VERSION,
            "Accept": "text/event-stream",
        }
        input_tokens = output_tokens = 0
        blocks: dict[int, dict[str, str]] = {}
        stopped = False
        async with aclosing(self._events("/v1/messages", headers, body)) as events:
            async for event, data in events:
                kind = (data or {}).get("type", event)
                if kind == "message_start":
                    usage = data["message"].get("usage", {}) if data else {}
                    input_tokens = usage.get("input_tokens", 0)
                    output_tokens = usage.get("output_tokens", 0)
                elif kind == "content_block_start" and data:
                    block = data.get("content_block", {})
                    if block.get("type") == "tool_use":
                        blocks[data.get("index", 0)] = {
                            "id": block.get("id", ""),
                            "name": block.get("name", ""),
                            "arguments": "",
                        }
                elif kind == "content_block_delta" and data:
                    delta = data.get("delta", {})
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield TextDelta(delta["text"])
                    elif delta.get("type") == "input_json_delta":
                        slot = blocks.get(data.get("index", 0))
                        if slot is not None:
                            slot["arguments"] += delta.get("partial_json", "")
                elif kind == "message_delta" and data:
                    output_tokens = data.get("usage", {}).get("output_tokens", output_tokens)
                elif kind == "message_stop":
                    stopped = True
                    break
                elif kind == "error":
                    raise ProviderError("The LLM provider reported an error mid-stream.")
        if not stopped:
            raise ProviderError("The LLM provider's stream ended early.")
        yield Usage(input_tokens, output_tokens)
        if blocks:
            yield ToolCallsRequested(
                [
                    ToolCall(slot["id"], slot["name"], slot["arguments"] or "{}")
                    for _index, slot in sorted(blocks.items())
                ]
            )


def _anthropic_messages(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": turn.tool_call_id,
                "content": turn.content,
            }
            # Consecutive tool results travel together in one user message.
            if (
                messages
                and messages[-1]["role"] == "user"
                and isinstance(messages[-1]["content"], list)
            ):
                messages[-1]["content"].append(block)
            else:
                messages.append({"role": "user", "content": [block]})
        elif turn.tool_calls:
            content: list[dict[str, Any]] = (
                [{"type": "text", "text": turn.content}] if turn.content else []
            )
            content.extend(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": _json_object(call.arguments),
                }
                for call in turn.tool_calls
            )
            messages.append({"role": "assistant", "content": content})
        else:
            messages.append({"role": turn.role, "content": turn.content})
    return messages


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Measured:
    """A provider whose every upstream request is timed and counted by provider name
    (for the metrics and the upstream error-rate alert). Nothing is done per event: a
    request a client abandoned is neither a success nor an upstream failure."""

    def __init__(self, provider: Provider, name: str) -> None:
        self._provider = provider
        self.name = name

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        started = time.perf_counter()
        events = self._provider.stream(request)
        try:
            async for event in events:
                yield event
        except Exception:
            metrics.current().upstream(self.name, time.perf_counter() - started, ok=False)
            raise
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()
        metrics.current().upstream(self.name, time.perf_counter() - started, ok=True)


class DemoProvider:
    """Local and deterministic: no key, no network. Exercises a tool call when tools exist."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        last = request.turns[-1] if request.turns else Turn("user", "")
        if last.role == "tool":
            text = f"The tool answered: {last.content[:200]}"
        elif request.tools and not any(turn.role == "tool" for turn in request.turns[-3:]):
            tool = request.tools[0]
            arguments = _demo_arguments(tool.parameters)
            yield Usage(_count(request), 0)
            yield ToolCallsRequested([ToolCall("demo_call_1", tool.name, json.dumps(arguments))])
            return
        else:
            text = f"You said: {last.content}" if last.content else "Hello from the demo agent."
        for word in re.findall(r"\S+\s*", text):
            yield TextDelta(word)
        yield Usage(_count(request), len(text.split()))


def _count(request: ChatRequest) -> int:
    return sum(len(turn.content.split()) for turn in request.turns) + len(request.system.split())


def _demo_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """Placeholder values for the required arguments, by type."""
    samples = {"integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}
    properties = schema.get("properties") or {}
    return {
        name: samples.get((properties.get(name) or {}).get("type", "string"), "demo")
        for name in schema.get("required") or []
    }
