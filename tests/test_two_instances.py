"""Two server processes on one PostgreSQL and one Redis behave as one service.

Both are real ``python -m kindrobots serve`` processes with the same keys; the
dashboard's live feed on either instance sees chats that the other one handled,
because messages travel between them through Redis pub/sub.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from kindrobots.broker.redis import RedisBroker
from kindrobots.config import format_keys, generate_key
from tests.chat_helpers import CHAT, ORIGIN, deploy
from tests.conftest import (
    POSTGRES_URL,
    REDIS_URL,
    Client,
    require_service,
    scratch_database,
    sign_up,
)
from tests.test_live_feed import LiveFeed, summary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Instance:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def instance_env(
    database_url: str, data_dir: Path, port: int, keys: dict[str, str]
) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("KR_")}
    env.update(
        {
            "KR_ENV": "development",
            "KR_DATABASE_URL": database_url,
            "KR_REDIS_URL": REDIS_URL,
            "KR_HOST": "127.0.0.1",
            "KR_PORT": str(port),
            "KR_DATA_DIR": str(data_dir),
            "KR_PUBLIC_URL": "http://localhost:8000",
            "KR_LOG_FORMAT": "text",
            # Every run signs up from 127.0.0.1 against the shared Redis; limits have their tests.
            "KR_RATE_LIMITS": "false",
            **keys,
        }
    )
    return env


async def run_command(args: list[str], env: dict[str, str], cwd: Path) -> None:
    process = await asyncio.create_subprocess_exec(
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
    name: str, database_url: str, tmp: Path, keys: dict[str, str]
) -> AsyncIterator[Instance]:
    """A ``kindrobots serve`` process (not yet ready), stopped with SIGTERM on the way out."""
    port = free_port()
    data_dir = tmp / name
    data_dir.mkdir()
    log = tmp / f"{name}.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kindrobots",
            "serve",
            env=instance_env(database_url, data_dir, port, keys),
            cwd=tmp,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
    instance = Instance(name, process, port, log)
    try:
        yield instance
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
                raise AssertionError(f"{name} ignored SIGTERM:\n{instance.log_tail()}") from None


async def widget_chat_on(
    http: aiohttp.ClientSession, instance: Instance, project_key: str, message: str
) -> list[dict[str, Any]]:
    """A widget on ``instance``: one message, every chat event until the reply completes."""
    async with http.ws_connect(
        instance.ws_url, protocols=["graphql-transport-ws"], headers={"Origin": ORIGIN}
    ) as ws:
        await ws.send_json({"type": "connection_init", "payload": {"projectKey": project_key}})
        ack = await ws.receive_json(timeout=10)
        assert ack["type"] == "connection_ack", ack
        variables = {"input": {"message": message}}
        await ws.send_json(
            {"type": "subscribe", "id": "1", "payload": {"query": CHAT, "variables": variables}}
        )
        events: list[dict[str, Any]] = []
        while True:
            frame = await ws.receive_json(timeout=20)
            if frame["type"] == "complete":
                return events
            assert frame["type"] == "next" and "errors" not in frame["payload"], frame
            events.append(frame["payload"]["data"]["chat"])


async def test_a_dashboard_on_one_instance_sees_chats_handled_by_the_other(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    require_service("Redis", REDIS_URL, 6379)
    keys = {
        "KR_SIGNING_KEYS": format_keys((generate_key("sig"),)),
        "KR_ENCRYPTION_KEYS": format_keys((generate_key("enc"),)),
    }
    async with AsyncExitStack() as stack:
        database_url = await stack.enter_async_context(scratch_database())
        await run_command(
            [sys.executable, "-m", "kindrobots", "migrate"],
            instance_env(database_url, tmp_path, free_port(), keys),
            tmp_path,
        )
        a = await stack.enter_async_context(serve("a", database_url, tmp_path, keys))
        b = await stack.enter_async_context(serve("b", database_url, tmp_path, keys))
        await asyncio.gather(wait_ready(http, a), wait_ready(http, b))
        redis = Redis.from_url(REDIS_URL)
        stack.push_async_callback(redis.aclose)
        probe = RedisBroker(redis).publish

        # Everything the dashboard does goes to A; the widget talks to B only.
        client_a = Client(http, a.base_url)
        account = await sign_up(client_a)
        shop = await deploy(client_a, account)
        token = account.access_token
        async with (
            LiveFeed.open(http, a.ws_url, token, shop.project_id, probe) as feed_a,
            LiveFeed.open(http, b.ws_url, token, shop.project_id, probe) as feed_b,
        ):
            on_b = await widget_chat_on(http, b, shop.project_key, "Asked on B")
            on_a = await widget_chat_on(http, a, shop.project_key, "Asked on A")
            expected = [
                (on_b[0]["conversationId"], "user", "Asked on B"),
                (on_b[0]["conversationId"], "assistant", "You said: Asked on B"),
                (on_a[0]["conversationId"], "user", "Asked on A"),
                (on_a[0]["conversationId"], "assistant", "You said: Asked on A"),
            ]
            assert summary(await feed_a.events(4)) == expected
            assert summary(await feed_b.events(4)) == expected

        # B's conversation is in the one shared database: A reads it back.
        stored = await client_a.execute(
            """query($id: ID!) { node(id: $id) { ... on Conversation {
                messages { edges { node { role content } } } } } }""",
            {"id": on_b[0]["conversationId"]},
            token=token,
        )
        assert stored.errors == [], stored.errors
        assert [edge["node"]["content"] for edge in stored.data["node"]["messages"]["edges"]] == [
            "Asked on B",
            "You said: Asked on B",
        ]

        for instance in (a, b):
            instance.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            codes = await asyncio.gather(a.process.wait(), b.process.wait())
        assert list(codes) == [0, 0], (a.log_tail(), b.log_tail())
