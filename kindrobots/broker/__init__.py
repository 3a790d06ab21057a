"""Publish/subscribe between server instances: Redis when configured, else in-process.

Subscribers get JSON-able dicts. A slow subscriber loses its oldest messages
rather than stalling the publisher or growing without bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Message = dict[str, Any]


class Broker(Protocol):
    async def publish(self, channel: str, message: Message) -> None: ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[Message]]:
        """Messages published on ``channel`` from the moment the context is entered."""
        ...

    async def close(self) -> None: ...
