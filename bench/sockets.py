"""Memory per idle widget WebSocket connection, against a raw aiohttp WebSocket server.

    python bench/sockets.py [--connections 10000] [--quick]

Each server runs in a process of its own, and so do the clients: the server's resident
memory (``VmRSS``) is read from /proc before and after ``--connections`` connections are
open, every one past ``connection_init`` (the widget's project key) and its
``connection_ack``, and then idle. The difference divided by the count is what one idle
connection holds: the kernel's socket buffers are not in it, everything the process keeps
per connection (transport, WebSocket response, Strawberry's protocol handler, the request
context, its tasks, the connection registries) is.

The baseline is a raw aiohttp WebSocket handler that acknowledges ``connection_init`` and
then waits for messages, with the same client. Both servers first serve a warm-up batch
of connections that is then closed, so code paths and allocator arenas are warm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from kindrobots.config import format_keys, generate_audit_key, generate_key, load_settings
from kindrobots.db.migrate import upgrade
from kindrobots.server import SERVICES, create_app

ORIGIN = "https://shop.example.com"
WARM_UP = 200
OPEN_AT_ONCE = 100  # handshakes in flight from the client


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


# --- The servers (processes of their own) ---------------------------------------------


def serve_project(port: int, data_dir: str) -> None:
    settings = load_settings(
        env="development",
        data_dir=Path(data_dir),
        database_url=f"sqlite+aiosqlite:///{data_dir}/bench.db",
        public_url="http://localhost:8000",
        signing_keys=format_keys((generate_key("sig"),)),
        encryption_keys=format_keys((generate_key("enc"),)),
        audit_key=generate_audit_key(),
        rate_limits=False,
        log_level="ERROR",
        ws_max_per_ip=1_000_000,
        ws_max_per_project=1_000_000,
    )
    app = create_app(settings)

    async def migrate(app: web.Application) -> None:
        await upgrade(app[SERVICES].engine)

    app.on_startup.append(migrate)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


def serve_raw(port: int) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=["graphql-transport-ws"])
        await ws.prepare(request)
        async for message in ws:
            if json.loads(message.data).get("type") == "connection_init":
                await ws.send_str('{"type":"connection_ack"}')
        return ws

    app = web.Application()
    app.router.add_get("/graphql", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


# --- The clients (a process of their own) ---------------------------------------------


async def hold(url: str, init: dict[str, Any]) -> None:
    """A number on stdin opens that many more connections; ``close`` closes them all."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def open_one() -> None:
            async with gate:
                ws = await http.ws_connect(
                    url, protocols=["graphql-transport-ws"], headers={"Origin": ORIGIN}
                )
                await ws.send_json({"type": "connection_init", "payload": init})
                ack = await ws.receive_json(timeout=120)
                if ack.get("type") != "connection_ack":
                    raise SystemExit(f"not acknowledged: {ack}")
                sockets.append(ws)

        loop = asyncio.get_running_loop()
        for _ in range(100):  # commands of one run: a handful
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command = line.strip()
            if command.isdigit():
                await asyncio.gather(*(open_one() for _ in range(int(command))))
                print(len(sockets), flush=True)
            else:
                await asyncio.gather(*(ws.close() for ws in sockets))
                sockets.clear()
                print(0, flush=True)
                if command == "exit":
                    return


def run_clients(url: str, init: str) -> None:
    raise_file_limit()
    asyncio.run(hold(url, json.loads(init)))


class Clients:
    def __init__(self, url: str, init: dict[str, Any]) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, __file__, "--clients", url, json.dumps(init)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def tell(self, command: str) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer = await asyncio.to_thread(self.process.stdout.readline)
        if not answer.strip():
            raise SystemExit("the clients failed")
        return int(answer)

    async def close(self) -> None:
        await self.tell("exit")
        self.process.wait(timeout=60)


# --- The run --------------------------------------------------------------------------


async def wait_for(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            try:
                async with http.get(url) as response:
                    await response.read()
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


SIGN_UP = "mutation($input: SignUpInput!) { signUp(input: $input) { accessToken } }"
MEMBERSHIPS = "{ me { memberships { organization { id } } } }"
CREATE_AGENT = "mutation($input: CreateAgentInput!) { createAgent(input: $input) { id } }"
CREATE_PROJECT = (
    "mutation($input: CreateProjectInput!) { createProject(input: $input) { publishableKey } }"
)


async def widget_key(url: str) -> str:
    """A signed-up account's demo agent and widget project: the project's key."""

    async def call(http: aiohttp.ClientSession, query: str, variables: Any, token: str) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"query": query, "variables": variables}
        async with http.post(url, json=body, headers=headers) as response:
            answer = await response.json()
        if answer.get("errors"):
            raise SystemExit(f"setup failed: {answer['errors']}")
        return answer["data"]

    async with aiohttp.ClientSession() as http:
        account = {
            "email": f"bench-{uuid.uuid4().hex[:10]}@example.com",
            "password": "correct horse battery",
            "displayName": "Bench",
            "organizationName": "Bench",
        }
        token = (await call(http, SIGN_UP, {"input": account}, ""))["signUp"]["accessToken"]
        me = await call(http, MEMBERSHIPS, None, token)
        organization = me["me"]["memberships"][0]["organization"]["id"]
        agent = await call(
            http,
            CREATE_AGENT,
            {
                "input": {
                    "organizationId": organization,
                    "name": "Bench",
                    "model": "demo-model",
                    "systemPrompt": "You answer.",
                    "manifestIds": [],
                }
            },
            token,
        )
        project = await call(
            http,
            CREATE_PROJECT,
            {
                "input": {
                    "organizationId": organization,
                    "name": "Bench",
                    "agentId": agent["createAgent"]["id"],
                    "allowedOrigins": [ORIGIN],
                }
            },
            token,
        )
        return str(project["createProject"]["publishableKey"])


async def measure(name: str, args: list[str], port: int, connections: int, widget: bool) -> float:
    server = subprocess.Popen([sys.executable, __file__, *args])  # noqa: S603, ASYNC220 - ours
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_for(base + ("/healthz" if widget else "/"))
        init = {"projectKey": await widget_key(base + "/graphql")} if widget else {}
        clients = Clients(f"ws://127.0.0.1:{port}/graphql", init)
        try:
            await clients.tell(str(WARM_UP))
            await clients.tell("close")
            await asyncio.sleep(1)
            before = rss_kb(server.pid)
            started = time.perf_counter()
            opened = await clients.tell(str(connections))
            elapsed = time.perf_counter() - started
            await asyncio.sleep(1)  # idle: whatever the handshake left behind has settled
            after = rss_kb(server.pid)
            if opened != connections or server.poll() is not None:
                raise SystemExit(f"{name}: {opened} of {connections} connections open")
        finally:
            await clients.close()
        per = (after - before) / connections
        print(
            f"{name}: {connections:,} idle connections acknowledged in {elapsed:.1f} s, "
            f"RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB"
        )
        return per
    finally:
        server.terminate()
        server.wait(timeout=60)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="500 connections (a smoke run)")
    options = parser.parse_args()
    connections = 500 if options.quick else options.connections
    raise_file_limit()
    with tempfile.TemporaryDirectory(prefix="kr-bench-sockets-") as tmp:
        port = free_port()
        project = await measure(
            "project", ["--serve-project", str(port), tmp], port, connections, widget=True
        )
        port = free_port()
        raw = await measure("raw aiohttp", ["--serve-raw", str(port)], port, connections, False)
    print(f"rss per idle widget connection: {project:.1f} KB")
    print(f"rss per idle raw aiohttp connection: {raw:.1f} KB")
    print(f"ratio project/raw rss per connection: {project / raw:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-project"]:
        raise_file_limit()
        serve_project(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:2] == ["--serve-raw"]:
        raise_file_limit()
        serve_raw(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--clients"]:
        run_clients(sys.argv[2], sys.argv[3])
    else:
        os.environ.setdefault("PYTHONHASHSEED", "0")
        asyncio.run(main())
