"""Small local servers for tests: an aiohttp app on a free port, a TCP port that records.

Both listen on 127.0.0.1 only, on a port the system picks, and are gone when the
``async with`` block ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


async def start_app(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """``app`` served on 127.0.0.1; its runner (for ``cleanup()``) and its port."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


@asynccontextmanager
async def serving(app: web.Application, **runner_options: Any) -> AsyncIterator[int]:
    """``app`` served on 127.0.0.1 for the block; its port."""
    runner, port = await start_app(app, **runner_options)
    try:
        yield port
    finally:
        await runner.cleanup()


@dataclass
class Listener:
    """A TCP port that records every connection made to it."""

    port: int = 0
    connections: list[Any] = field(default_factory=list)


@asynccontextmanager
async def listening() -> AsyncIterator[Listener]:
    """A :class:`Listener` that accepts, records the peer and closes at once."""
    record = Listener()

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record.connections.append(writer.get_extra_info("peername"))
        writer.close()

    tcp = await asyncio.start_server(accept, "127.0.0.1", 0)
    record.port = tcp.sockets[0].getsockname()[1]
    try:
        yield record
    finally:
        tcp.close()
        await tcp.wait_closed()
