"""The chat relay: neighbouring text deltas travel as one, and known events skip execution.

Coalescing is driven by a clock the test advances and a source the test feeds, so
"never held past its window" is shown without measuring time. The fast path for
subscription events is compared, frame for frame, with graphql-core's own execution of
the same events for each selection a client may send.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import strawberry
from aiohttp import web
from graphql import ExecutionResult, map_source_to_response_event, parse, validate
from graphql.execution import Executor
from strawberry.scalars import JSON
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from kindrobots.chat import providers
from kindrobots.chat.coalesce import READ_AHEAD, coalesce
from kindrobots.chat.providers import TextDelta
from kindrobots.schema import build_schema
from kindrobots.schema.chat import (
    ChatCompleted,
    ChatDelta,
    ChatError,
    ChatStarted,
    ChatToolCall,
    TokenUsage,
)
from kindrobots.schema.events import EventExecutor
from tests.chat_helpers import CHAT, widget_socket
from tests.conftest import Account, Client, RunningServer, backend_server, sign_up
from tests.fake_llm import (
    FakeLLM,
    deploy_on_fake,
    next_event,
    openai_text,
    stream,
    streamed_text,
    subscribe_chat,
    wait_for_partial,
)
from tests.servers import serving

WINDOW = 0.010


class ManualClock:
    """Time that moves only when the test says so; due callbacks run on ``advance``."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None], /) -> Timer:
        timer = Timer(when, callback)
        self.timers.append(timer)
        return timer

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in [t for t in self.timers if t.when <= self.now and not t.cancelled]:
            self.timers.remove(timer)
            timer.callback()
        await settle()


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


async def settle() -> None:
    """Let every ready task run until none has anything left to do (bounded)."""
    for _ in range(50):
        await asyncio.sleep(0)


class Source:
    """A source of events the test feeds one by one; records whether it was closed."""

    END = object()

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.closed = False

    async def events(self) -> AsyncGenerator[object, None]:
        try:
            for _ in range(10_000):
                item = await self.queue.get()
                if item is Source.END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed = True

    async def send(self, *items: object) -> None:
        for item in items:
            self.queue.put_nowait(item)
        await settle()


class Reader:
    """Consumes a coalesced stream in a task, so the test can look at what arrived when."""

    def __init__(self, stream: AsyncGenerator[object, None]) -> None:
        self.stream = stream
        self.received: list[object] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with aclosing(self.stream):
            async for event in self.stream:
                self.received.append(event)

    def texts(self) -> list[object]:
        return [e.text if isinstance(e, TextDelta) else e for e in self.received]


def coalesced(source: Source, clock: ManualClock, max_chars: int = 2048) -> Reader:
    return Reader(coalesce(source.events(), window=WINDOW, max_chars=max_chars, clock=clock))


async def test_deltas_within_the_window_become_one_with_text_and_order_kept() -> None:
    clock, source = ManualClock(), Source()
    reader = coalesced(source, clock)
    await source.send(TextDelta("Hel"), TextDelta("lo, "), TextDelta("wörld"))
    assert reader.received == []  # held: the window has not ended
    await clock.advance(WINDOW / 2)
    await source.send(TextDelta(' "x"\n'))
    assert reader.received == []
    await clock.advance(WINDOW / 2)
    assert reader.texts() == ['Hello, wörld "x"\n']
    await source.send(Source.END)
    await reader.task
    assert reader.texts() == ['Hello, wörld "x"\n']


async def test_a_lone_delta_leaves_when_its_window_ends_while_the_source_is_quiet() -> None:
    clock, source = ManualClock(), Source()
    reader = coalesced(source, clock)
    await source.send(TextDelta("Hi"))
    await clock.advance(WINDOW * 0.9)
    assert reader.received == []
    await clock.advance(WINDOW * 0.1)
    assert reader.texts() == ["Hi"]  # the source has sent nothing more, and is still open
    await source.send(TextDelta("again"))
    assert reader.texts() == ["Hi"]  # a new window starts with the next delta
    await clock.advance(WINDOW)
    assert reader.texts() == ["Hi", "again"]
    await source.send(Source.END)
    await reader.task
    assert not reader.task.cancelled() and source.closed


async def test_other_events_flush_the_held_text_first_and_keep_their_place() -> None:
    clock, source = ManualClock(), Source()
    reader = coalesced(source, clock)
    tool, done = ("tool", 1), ("done", 2)
    await source.send(TextDelta("a"), TextDelta("b"), tool, TextDelta("c"), done)
    assert reader.texts() == ["ab", tool, "c", done]  # no window waited for
    await source.send(TextDelta("d"), Source.END)
    await reader.task
    assert reader.texts() == ["ab", tool, "c", done, "d"]  # the end flushes at once


async def test_size_caps_a_batch_without_splitting_a_delta() -> None:
    clock, source = ManualClock(), Source()
    reader = coalesced(source, clock, max_chars=5)
    await source.send(TextDelta("abc"), TextDelta("de"), TextDelta("f"), TextDelta("0123456789"))
    await source.send(TextDelta("g"), Source.END)
    await reader.task
    assert reader.texts() == ["abcde", "f", "0123456789", "g"]


async def test_a_failing_source_delivers_what_came_before_then_the_failure() -> None:
    clock, source = ManualClock(), Source()
    reader = coalesced(source, clock)
    await source.send(TextDelta("partial "), TextDelta("text"), RuntimeError("upstream broke"))
    with pytest.raises(RuntimeError, match="upstream broke"):
        await reader.task
    assert reader.texts() == ["partial text"]


async def test_the_consumer_leaving_closes_the_source_and_waits_for_its_clean_up() -> None:
    clock, source = ManualClock(), Source()
    reader = coalesced(source, clock)
    await source.send(TextDelta("held"))
    reader.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader.task
    assert source.closed  # its finally ran before the consumer's cancellation completed
    assert clock.timers == [] or all(t.cancelled for t in clock.timers)


async def test_a_slow_consumer_holds_the_source_back() -> None:
    clock, source = ManualClock(), Source()
    stream = coalesce(source.events(), window=WINDOW, max_chars=10, clock=clock)
    for index in range(READ_AHEAD + 50):
        source.queue.put_nowait(("event", index))
    first = await anext(stream)  # the reader has read ahead, but only so far
    await settle()
    assert first == ("event", 0)
    assert source.queue.qsize() >= 49
    await stream.aclose()
    assert source.closed


async def test_window_zero_passes_every_event_through() -> None:
    source = Source()
    stream = coalesce(source.events(), window=0, max_chars=10)
    await source.send(TextDelta("a"), TextDelta("b"), Source.END)
    assert [event async for event in stream] == [TextDelta("a"), TextDelta("b")]


# --- The provider's stream, split from whatever each read brings ----------------------

SSE = (
    'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
    "data: first line\ndata:second line\n\n"
    ": a comment\n\n"
    'data: {"text": "w\u00f6rld \u2028 \U0001f600"}\n\n'
    "event: tail\ndata: no blank line at the end"
).encode()


@pytest.mark.parametrize("size", [1, 3, 7, 64, len(SSE)])
async def test_server_sent_events_parse_the_same_however_the_bytes_arrive(size: int) -> None:
    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(SSE), size):
            await response.write(SSE[start : start + size])
            await asyncio.sleep(0)  # separate reads, splitting lines and characters
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", events)
    async with (
        serving(app) as port,
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/") as response,
    ):
        received = [pair async for pair in providers._sse_data(response)]
    assert received == [
        ("message_start", '{"a": 1}'),
        ("", "first line\nsecond line"),
        ("", '{"text": "w\u00f6rld \u2028 \U0001f600"}'),
        ("tail", "no blank line at the end"),
    ]


# --- The fast path: frames equal to normal execution ---------------------------------

SCHEMA = build_schema()

EVENTS: list[Any] = [
    ChatStarted(conversation_id=strawberry.ID("Q29udmVyc2F0aW9uOjE=")),
    ChatDelta(text="Hel"),
    ChatDelta(text='lo "wörld" </script>\n\u2028 😀'),
    ChatDelta(text=""),
    ChatToolCall(name="lookup", arguments=JSON({"id": 1}), result=JSON(None)),
    ChatDelta(text=5),  # type: ignore[arg-type]  # not plain: must go the normal way
    ChatCompleted(
        message_id=strawberry.ID("TWVzc2FnZTox"), usage=TokenUsage(input_tokens=3, output_tokens=4)
    ),
    ChatError(message="The LLM provider failed.", retry_after=None),
    ChatError(message="Slow down.", retry_after=30),
    ChatError(message="Huge.", retry_after=2**31),  # not an Int: the normal way's error
]

ALIASED = """
subscription($input: ChatInput!) {
  reply: chat(input: $input) {
    kind: __typename
    ... on ChatDelta { t: text text }
    ... on ChatError { why: message retryAfter }
  }
}
"""
NAMED = """
fragment Kind on ChatEvent { __typename }
fragment Delta on ChatDelta { text ...Kind }
fragment Start on ChatStarted { conversationId }
subscription Chat($input: ChatInput!) {
  chat(input: $input) { ...Delta ...Start ...Kind ... on ChatEvent { ...Delta } }
}
"""
ROOT_FRAGMENT = """
subscription($input: ChatInput!) {
  ... on Subscription {
    chat(input: $input) { ... { kind: __typename } ... on ChatDelta { text: text } }
  }
}
"""
REPEATED_ROOT = """
subscription($input: ChatInput!) {
  chat(input: $input) { ... on ChatDelta { text } }
  chat(input: $input) { __typename }
}
"""
LITERAL_INPUT = """
subscription { c: chat(input: {message: "hi"}) { ... on ChatDelta { text __typename } } }
"""
DIRECTIVES = """
subscription($input: ChatInput!, $withText: Boolean!) {
  chat(input: $input) { __typename ... on ChatDelta @include(if: $withText) { text } }
}
"""
SKIPPED_FIELD = """
subscription($input: ChatInput!) {
  chat(input: $input) { __typename ... on ChatDelta { text @skip(if: true) } }
}
"""
VARIABLES = {"input": {"message": "hi"}}

SELECTIONS = [
    pytest.param(CHAT, VARIABLES, True, id="widget"),
    pytest.param(ALIASED, VARIABLES, True, id="aliases"),
    pytest.param(NAMED, VARIABLES, True, id="named-fragments"),
    pytest.param(ROOT_FRAGMENT, VARIABLES, True, id="root-fragment"),
    pytest.param(REPEATED_ROOT, VARIABLES, True, id="repeated-root-field"),
    pytest.param(LITERAL_INPUT, None, True, id="root-aliased-literal-input"),
    pytest.param(DIRECTIVES, {**VARIABLES, "withText": True}, False, id="include-true"),
    pytest.param(DIRECTIVES, {**VARIABLES, "withText": False}, False, id="include-false"),
    pytest.param(SKIPPED_FIELD, VARIABLES, False, id="skip-literal"),
]


def frame(result: ExecutionResult) -> str:
    """The ``next`` message Strawberry's graphql-transport-ws handler sends for a result."""
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [error.formatted for error in result.errors]
    return json.dumps({"id": "1", "type": "next", "payload": payload})


async def frames(
    executor_class: type[Executor[Any]], document: str, variables: dict[str, Any] | None
) -> tuple[list[str], Executor[Any]]:
    graphql_schema = SCHEMA._schema
    parsed = parse(document)
    assert validate(graphql_schema, parsed) == []
    executor = executor_class.build(graphql_schema, parsed, raw_variable_values=variables)
    assert isinstance(executor, Executor), executor

    async def source() -> AsyncIterator[Any]:
        for event in EVENTS:
            yield event

    results = map_source_to_response_event(executor, source())
    return [frame(result) async for result in results], executor


@pytest.mark.parametrize(("document", "variables", "fast"), SELECTIONS)
async def test_fast_path_frames_equal_normal_execution(
    document: str, variables: dict[str, Any] | None, fast: bool
) -> None:
    normal, _ = await frames(StrawberryGraphQLCoreExecutionContext, document, variables)
    planned, executor = await frames(EventExecutor, document, variables)
    assert planned == normal
    assert isinstance(executor, EventExecutor)
    plans = executor._plans or {}
    # Not vacuous: deltas took the fast path where the selection allows it, and only there.
    assert (plans.get(ChatDelta) is not None) is fast
    if document == CHAT:
        assert plans.get(ChatCompleted) is None  # a nested selection: executed


def test_the_server_schema_runs_subscriptions_with_the_fast_path() -> None:
    assert issubclass(SCHEMA.execution_context_class, EventExecutor)


# --- End to end: a real server, a fake provider, a real WebSocket ---------------------


@pytest_asyncio.fixture(scope="module", params=["sqlite"])
async def llm_server(
    request: pytest.FixtureRequest, fake: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    """A window long enough that every delta of one burst falls in it, and a small cap."""
    tmp = tmp_path_factory.mktemp("relay")
    async with backend_server(
        tmp,
        str(request.param),
        outbound_allow=fake.host_port,
        chat_coalesce_ms=1000,
        chat_coalesce_chars=8,
    ) as server:
        yield server


@pytest_asyncio.fixture(scope="module")
async def account(llm_server: RunningServer, http: aiohttp.ClientSession) -> Account:
    return await sign_up(Client(http, llm_server.base_url))


async def test_held_deltas_reach_the_widget_while_the_provider_is_still_silent(
    llm_server: RunningServer, account: Account, http: aiohttp.ClientSession, fake: FakeLLM
) -> None:
    setup = await deploy_on_fake(
        llm_server,
        http,
        fake,
        account,
        provider="OPENAI",
        model="gpt-4o-mini",
        api_key="fakekey-relay-0001",
    )
    parts = ["Your ", "order ", "A-1001 ", "shipped", " on ", "Monday."]
    setup.scenario.queue(stream(openai_text(parts, (3, 4), done=False), "hold"))
    expected = "".join(parts)
    async with widget_socket(http, llm_server, setup.deployed.project_key) as ws:
        await subscribe_chat(ws, "Where is it?")
        events = [await next_event(ws)]
        assert events[0]["__typename"] == "ChatStarted"
        while streamed_text(events) != expected:
            assert expected.startswith(streamed_text(events)), events
            events.append(await next_event(ws))
            assert events[-1]["__typename"] == "ChatDelta", events
        # The provider sent everything and then nothing: the window's end sent the text.
        assert not setup.scenario.closed.is_set()
        # Merged up to the cap, a part never split.
        for event in events[1:]:
            assert len(event["text"]) <= 8 or event["text"] in parts, events
    partial = await wait_for_partial(llm_server, events[0]["conversationId"])
    assert partial.content == expected
