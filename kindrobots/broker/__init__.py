"""Publish/subscribe between server instances: Redis when configured, else in-process.

Subscribers get JSON-able dicts. A slow subscriber loses its oldest messages
rather than stalling the publisher or growing without bound: each subscription
buffers at most :data:`QUEUE_SIZE` messages and drops the oldest beyond that.

``publish`` is best effort, like pub/sub itself (at most once): when the
backend cannot be reached the message is dropped, counted and the outage
logged once, so callers never handle broker errors. A subscription never ends
silently: when the backend stays away past the broker's deadline, iterating it
raises :class:`BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from kindrobots.errors import ServiceUnavailable

Message = dict[str, Any]

QUEUE_SIZE = 1000


class BrokerUnavailable(ServiceUnavailable):
    """The broker lost its backend for longer than it may wait; the feed has ended."""

    default_message = "The live feed lost its message broker; subscribe again later."


class Broker(Protocol):
    async def publish(self, channel: str, message: Message) -> None:
        """Send ``message`` to every subscriber of ``channel``; never raises for an outage."""
        ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[Message]]:
        """Messages published on ``channel`` from the moment the context is entered."""
        ...

    async def close(self) -> None: ...


class Subscription:
    """One subscriber's bounded buffer: drops its oldest message when full, can be ended."""

    def __init__(self, channel: str, size: int = QUEUE_SIZE) -> None:
        self.channel = channel
        self._buffer: deque[Message] = deque(maxlen=size)
        self._changed = asyncio.Event()
        self.live = False
        self.error: BaseException | None = None

    def put(self, message: Message) -> bool:
        """Buffer ``message``; True when the oldest buffered message was dropped for it."""
        dropped = len(self._buffer) == self._buffer.maxlen
        self._buffer.append(message)
        self._changed.set()
        return dropped

    def mark_live(self) -> None:
        self.live = True
        self._changed.set()

    def end(self, error: BaseException) -> None:
        """End the subscription: buffered messages are still delivered, then ``error``."""
        if self.error is None:
            self.error = error
        self._changed.set()

    async def wait_live(self) -> None:
        while not self.live:
            if self.error is not None:
                raise self.error
            self._changed.clear()
            await self._changed.wait()

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            while not self._buffer:
                if self.error is not None:
                    raise self.error
                self._changed.clear()
                await self._changed.wait()
            yield self._buffer.popleft()
