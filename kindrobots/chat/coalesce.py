"""Text deltas that arrive close together travel as one.

A fast model sends thousands of deltas of a few characters each; one WebSocket frame
(and one GraphQL result) per delta costs more than the text. Deltas that arrive within
``window`` seconds of the first one held, up to ``max_chars`` characters, become one
:class:`TextDelta`: the text and its order are kept exactly, nothing else is merged, and
a held delta leaves when its window ends, when another kind of event comes, when the
stream ends or fails, and when the consumer leaves.

The source is read by a task of its own so that a held delta can leave on time while the
source has nothing new; the clock is injectable so that tests drive time themselves.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Protocol, TypeVar

from kindrobots.chat.providers import TextDelta

E = TypeVar("E")

# Events read ahead of the consumer before the reader waits for it: a slow socket holds
# back the upstream instead of filling memory.
READ_AHEAD = 1024


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What coalescing needs of time; the running event loop is one."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None], /) -> Cancellable: ...


async def coalesce(
    source: AsyncGenerator[E, None],
    *,
    window: float,
    max_chars: int,
    clock: Clock | None = None,
) -> AsyncGenerator[E | TextDelta, None]:
    """``source``'s events, with neighbouring text deltas merged (``window`` 0: unchanged)."""
    if window <= 0:
        async with aclosing(source):
            async for event in source:
                yield event
        return
    loop = asyncio.get_running_loop()
    timer: Clock = clock if clock is not None else loop
    pending: deque[E] = deque()
    failure: list[BaseException] = []
    ended = False
    wake: asyncio.Future[None] | None = None
    room: asyncio.Future[None] | None = None

    def notify() -> None:
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def read() -> None:
        nonlocal ended, room
        try:
            async with aclosing(source):
                async for event in source:
                    pending.append(event)
                    notify()
                    if len(pending) >= READ_AHEAD:
                        room = loop.create_future()
                        await room
        except Exception as error:  # handed to the consumer, after what came before it
            failure.append(error)
        finally:
            ended = True
            notify()

    reader = loop.create_task(read())
    held: list[str] = []
    size = 0
    deadline = 0.0
    try:
        while True:
            while pending:
                event = pending.popleft()
                if room is not None and not room.done():
                    room.set_result(None)
                if isinstance(event, TextDelta):
                    if held and size + len(event.text) > max_chars:
                        yield TextDelta("".join(held))
                        held, size = [], 0
                    if not held:
                        deadline = timer.time() + window
                    held.append(event.text)
                    size += len(event.text)
                    continue
                if held:
                    yield TextDelta("".join(held))
                    held, size = [], 0
                yield event
            if ended and not pending:
                break
            if held and timer.time() >= deadline:
                yield TextDelta("".join(held))
                held, size = [], 0
                continue
            wake = loop.create_future()
            handle = timer.call_at(deadline, notify) if held else None
            try:
                await wake
            finally:
                wake = None
                if handle is not None:
                    handle.cancel()
        if held:
            yield TextDelta("".join(held))
        if failure:
            raise failure[0]
    finally:
        # The consumer left (or the stream ended): the source ends with it, its own clean-up
        # (keeping what was said) included, before this generator is closed.
        if not reader.done():
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
