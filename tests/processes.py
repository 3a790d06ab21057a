"""Real ``python -m kindrobots`` processes, for tests that need more than one server.

:func:`instances` migrates a scratch PostgreSQL database and starts ``serve``
processes on it that share one Redis and one set of keys; each stops with
SIGTERM on the way out. :func:`free_port`, :func:`clean_env` and
:func:`terminate` serve every test that runs processes of its own.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from kindrobots.config import Settings, format_keys, generate_audit_key, generate_key
from tests.conftest import REDIS_URL, scratch_database

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any KR_* variable, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KR_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One ``kindrobots`` command to its end: exit code, stdout and stderr."""
    return subprocess.run(  # noqa: S603 - our own command line
        [sys.executable, "-m", "kindrobots", *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def audit_verify(settings: Settings, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``kindrobots audit verify`` on the database and audit key of ``settings``."""
    env = clean_env(
        KR_DATABASE_URL=settings.database_url,
        KR_DATA_DIR=str(cwd),
        KR_AUDIT_KEY=base64.b64encode(settings.audit_key).decode(),
    )
    return run_cli("audit", "verify", env=env, cwd=cwd)


def kindrobots_env(settings: Mapping[str, str], *, port: int, data_dir: Path) -> dict[str, str]:
    """The environment of one ``kindrobots`` process: development, text logs, ``settings``
    (which may override any of them)."""
    defaults = {
        "KR_ENV": "development",
        "KR_HOST": "127.0.0.1",
        "KR_PORT": str(port),
        "KR_DATA_DIR": str(data_dir),
        "KR_LOG_FORMAT": "text",
    }
    return clean_env(**{**defaults, **settings})


async def terminate(process: asyncio.subprocess.Process, grace: float) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; whether it stopped without the kill."""
    if process.returncode is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        return False
    return True


@dataclass
class Instance:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log: Path
    # The process's KR_* environment: a command line run with it acts on the same service.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


async def run_kindrobots(args: Sequence[str], env: dict[str, str], cwd: Path) -> None:
    """``python -m kindrobots *args`` to the end; it must exit 0 within two minutes."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kindrobots",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(120):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")


async def wait_ready(http: aiohttp.ClientSession, instance: Instance) -> None:
    """Until ``/readyz`` answers 200; fails if the process exits first or after 60 s."""
    async with asyncio.timeout(60):
        while True:
            assert instance.process.returncode is None, (
                f"{instance.name} exited with {instance.process.returncode}:\n{instance.log_tail()}"
            )
            try:
                async with http.get(f"{instance.base_url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


@asynccontextmanager
async def serve(
    name: str,
    tmp: Path,
    settings: Mapping[str, str],
    *,
    cwd: Path | None = None,
    args: Sequence[str] = (),
) -> AsyncIterator[Instance]:
    """A ``kindrobots serve`` process (not yet ready), stopped with SIGTERM on the way out.

    ``args`` follow ``serve`` on its command line. It must stop within 30 s of SIGTERM; one
    that has to be killed fails the test.
    """
    port = free_port()
    data_dir = tmp / name
    data_dir.mkdir()
    log = tmp / f"{name}.log"
    env = kindrobots_env(settings, port=port, data_dir=data_dir)
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kindrobots",
            "serve",
            *args,
            env=env,
            cwd=cwd or tmp,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
    instance = Instance(name, process, port, log, env)
    try:
        yield instance
    finally:
        if not await terminate(process, 30):
            raise AssertionError(f"{name} ignored SIGTERM:\n{instance.log_tail()}")


def new_keys() -> dict[str, str]:
    """Fresh signing, encryption and audit keys, as the environment of every instance
    gives them (without a shared audit key each would seal the chains with its own)."""
    return {
        "KR_SIGNING_KEYS": format_keys((generate_key("sig"),)),
        "KR_ENCRYPTION_KEYS": format_keys((generate_key("enc"),)),
        "KR_AUDIT_KEY": generate_audit_key(),
    }


@asynccontextmanager
async def instances(
    http: aiohttp.ClientSession,
    tmp: Path,
    settings: Mapping[str, str],
    *,
    names: Sequence[str] = ("a", "b"),
    cwd: Path | None = None,
) -> AsyncIterator[list[Instance]]:
    """Ready ``serve`` processes on one migrated scratch PostgreSQL database and one Redis.

    They share the same keys; ``settings`` (KR_* variables) apply to all of them. The
    caller checks that PostgreSQL and Redis are there (``require_service``).
    """
    async with AsyncExitStack() as stack:
        database_url = await stack.enter_async_context(scratch_database())
        shared = {"KR_DATABASE_URL": database_url, "KR_REDIS_URL": REDIS_URL, **new_keys()}
        shared.update(settings)
        await run_kindrobots(
            ["migrate"], kindrobots_env(shared, port=free_port(), data_dir=tmp), cwd or tmp
        )
        started = [
            await stack.enter_async_context(serve(name, tmp, shared, cwd=cwd)) for name in names
        ]
        await asyncio.gather(*(wait_ready(http, instance) for instance in started))
        yield started


def cli_env(settings: Settings, cwd: Path) -> dict[str, str]:
    """The environment of a ``kindrobots`` command on the database and keys of ``settings``
    (an in-process server's), so that it acts on what the server serves."""
    return clean_env(
        KR_ENV="development",
        KR_DATABASE_URL=settings.database_url,
        KR_DATA_DIR=str(cwd),
        KR_PUBLIC_URL=settings.public_url,
        KR_AUDIT_KEY=base64.b64encode(settings.audit_key).decode(),
        KR_ENCRYPTION_KEYS=format_keys(settings.encryption_keys),
        KR_SIGNING_KEYS=format_keys(settings.signing_keys),
        KR_LOG_FORMAT="text",
        **({"KR_REDIS_URL": settings.redis_url} if settings.redis_url else {}),
    )
