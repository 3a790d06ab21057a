"""A PostgreSQL server of a test's own, on a free port, that the test may crash and restart.

Fault tests never touch the shared PostgreSQL on 5432: they ``initdb`` a temporary data
directory, run ``postgres`` on it (as the ``postgres`` user when the tests run as root,
which PostgreSQL refuses), stop it with SIGQUIT — an immediate shutdown, as in a crash:
no checkpoint, every backend gone at once — and start it again on the same port and
data directory, where it recovers from its write-ahead log.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.processes import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    postgres = shutil.which("postgres")
    return Path(postgres).parent if postgres else None


class PostgresServer:
    def __init__(self, bin_dir: Path, directory: Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.directory = directory  # owned by ``user``; the data directory is inside it
        self.user = user
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    async def _run(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *args,
            user=self.user,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(60):
            output, _ = await process.communicate()
        assert process.returncode == 0, output.decode(errors="replace")

    async def init(self) -> None:
        await self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    async def start(self) -> None:
        assert self.process is None
        log = (self.directory / "postgres.log").open("ab")
        with log:
            self.process = await asyncio.create_subprocess_exec(
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.directory),  # its socket stays out of /var/run/postgresql
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                user=self.user,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        async with asyncio.timeout(30):
            while True:  # until it accepts connections (it refuses them while recovering)
                assert self.process.returncode is None, self.log_tail()
                probe = await asyncio.create_subprocess_exec(
                    str(self.bin_dir / "pg_isready"),
                    *("-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"),
                )
                if await probe.wait() == 0:
                    return
                await asyncio.sleep(0.05)

    async def crash(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster, our own child): every backend is
        gone at once, nothing is checkpointed."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGQUIT)
        try:
            async with asyncio.timeout(20):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        self.process = None

    async def stop(self) -> None:
        if self.process is not None:
            await self.crash()

    def log_tail(self) -> str:
        path = self.directory / "postgres.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@asynccontextmanager
async def own_postgres() -> AsyncIterator[PostgresServer]:
    """A private PostgreSQL (trust auth, 127.0.0.1, a free port), removed afterwards."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        if REQUIRE_SERVICES:
            pytest.fail("PostgreSQL binaries are required (KR_TEST_REQUIRE_SERVICES=1)")
        pytest.skip("PostgreSQL binaries (initdb, postgres) not found")
    user = None
    directory = Path(tempfile.mkdtemp(prefix="kr-faults-pg-"))
    try:
        if os.geteuid() == 0:  # postgres refuses to run as root
            user = "postgres"
            entry = pwd.getpwnam(user)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        server = PostgresServer(bin_dir, directory, user)
        await server.init()
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
