"""The agent loop: stream the model, run the tools it asks for, feed results back, repeat."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kindrobots.chat import tools
from kindrobots.chat.providers import (
    ChatRequest,
    Provider,
    TextDelta,
    ToolCall,
    ToolCallsRequested,
    Turn,
    Usage,
)

MAX_TOOL_ROUNDS = 3
CHARS_PER_TOKEN = 4
DEFAULT_HISTORY_TOKENS = 6000


@dataclass(frozen=True)
class ToolRun:
    call: ToolCall
    arguments: Any
    result: Any
    for_model: str  # what the model read back; stored so that later turns send it again


RuntimeEvent = TextDelta | ToolRun | Usage


def bound_history(turns: Sequence[Turn], budget_tokens: int = DEFAULT_HISTORY_TOKENS) -> list[Turn]:
    """The newest turns that fit the budget (about four characters a token).

    The last turn (the new user message) always stays. A tool result never
    starts the history: without the call it answers, providers reject it.
    """
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        chars = len(turn.content) + sum(len(c.arguments) for c in turn.tool_calls)
        cost = -(-chars // CHARS_PER_TOKEN)  # rounded up: the budget is a ceiling
        if kept and used + cost > budget_tokens:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return kept


def _arguments(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text


async def converse(
    provider: Provider,
    request: ChatRequest,
    specs: dict[str, tools.ToolSpec],
    allow: Sequence[str],
    max_rounds: int = MAX_TOOL_ROUNDS,
    *,
    https_only: bool = False,
) -> AsyncGenerator[RuntimeEvent, None]:
    """Stream one reply, running up to ``max_rounds`` rounds of tool calls on the way."""
    turns = list(request.turns)
    total_in = total_out = 0
    for round_number in range(max_rounds + 1):
        # On the last round no tools are offered: the model must answer in words.
        offered = request.tools if round_number < max_rounds else ()
        text: list[str] = []
        calls: list[ToolCall] = []
        stream = provider.stream(replace(request, turns=turns, tools=offered))
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    text.append(event.text)
                    yield event
                elif isinstance(event, Usage):
                    total_in += event.input_tokens
                    total_out += event.output_tokens
                elif isinstance(event, ToolCallsRequested):
                    calls.extend(event.calls)
        finally:
            # Closing this reply (the client left) closes the provider stream, and its connection.
            if isinstance(stream, AsyncGenerator):
                await stream.aclose()
        if not calls:
            break
        turns.append(Turn("assistant", "".join(text), tool_calls=calls))
        for call in calls:
            outcome = await tools.execute(
                specs.get(call.name), call.arguments, allow, https_only=https_only
            )
            yield ToolRun(call, _arguments(call.arguments), outcome.result, outcome.for_model)
            turns.append(Turn("tool", outcome.for_model, tool_call_id=call.id))
    yield Usage(total_in, total_out)
