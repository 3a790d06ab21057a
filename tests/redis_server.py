"""A redis-server of a test's own, on a free port, that the test may kill and restart.

Fault tests never touch the shared Redis on 6379: they start this one, SIGKILL
it (the same process id they started) and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import REQUIRE_SERVICES
from tests.processes import free_port


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert self.process is None
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        admin = Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            async with asyncio.timeout(10):
                while True:
                    assert self.process.returncode is None, "redis-server exited"
                    try:
                        await admin.ping()
                        return
                    except Exception:  # refused while it starts
                        await asyncio.sleep(0.05)
        finally:
            await admin.aclose()

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as in a crash."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            await self.process.wait()
        self.process = None

    async def restart(self) -> None:
        await self.kill()
        await self.start()

    async def stop(self) -> None:
        if self.process is not None:
            await self.kill()


@asynccontextmanager
async def own_redis(directory: Path) -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is required (KR_TEST_REQUIRE_SERVICES=1) but not on PATH")
        pytest.skip("redis-server not on PATH")
    server = RedisServer(directory)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
