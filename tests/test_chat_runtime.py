"""The agent loop's pure parts: history bounds and the tool-round cap."""

from __future__ import annotations

from collections.abc import AsyncIterator

from kindrobots.chat import runtime
from kindrobots.chat.providers import (
    ChatRequest,
    Event,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallsRequested,
    Turn,
    Usage,
)


def test_history_keeps_the_newest_turns_that_fit() -> None:
    turns = [Turn("user" if i % 2 == 0 else "assistant", f"{i}:" + "x" * 400) for i in range(40)]
    kept = runtime.bound_history(turns, budget_tokens=1000)
    assert kept[-1] is turns[-1]
    assert kept == turns[-len(kept) :]
    assert sum(len(t.content) for t in kept) // runtime.CHARS_PER_TOKEN <= 1000
    assert len(kept) < len(turns)
    assert kept[0].role == "user"


def test_history_always_keeps_the_new_message_even_when_it_alone_is_too_long() -> None:
    turns = [Turn("user", "old"), Turn("assistant", "reply"), Turn("user", "y" * 100_000)]
    assert runtime.bound_history(turns, budget_tokens=10) == [turns[-1]]


def test_history_never_starts_with_a_tool_result() -> None:
    call = ToolCall("c1", "lookup", "{}")
    turns = [
        Turn("user", "a" * 4000),
        Turn("assistant", "", tool_calls=[call]),
        Turn("tool", "b" * 40, tool_call_id="c1"),
        Turn("assistant", "done"),
        Turn("user", "next"),
    ]
    kept = runtime.bound_history(turns, budget_tokens=50)
    assert kept[0].role == "user"
    assert all(turn.role != "tool" for turn in kept[:1])


class LoopingModel:
    """A model that asks for a tool every time it is offered one."""

    def __init__(self) -> None:
        self.offered: list[int] = []

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        self.offered.append(len(request.tools))
        yield Usage(10, 1)
        if request.tools:
            yield ToolCallsRequested([ToolCall(f"c{len(self.offered)}", "missing", "{}")])
        else:
            yield TextDelta("final answer")


async def test_tool_rounds_are_capped_and_the_last_round_must_answer() -> None:
    model = LoopingModel()
    request = ChatRequest(
        model="m",
        system="",
        turns=[Turn("user", "hi")],
        tools=[Tool("missing", "", {"type": "object"})],
        temperature=0.0,
    )
    events = [event async for event in runtime.converse(model, request, {}, (), max_rounds=2)]
    assert model.offered == [1, 1, 0]
    runs = [e for e in events if isinstance(e, runtime.ToolRun)]
    assert [run.result for run in runs] == [{"error": "There is no such tool."}] * 2
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["final answer"]
    assert events[-1] == Usage(30, 3)
