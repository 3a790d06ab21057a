"""Fault acceptance: two real servers under load while PostgreSQL crashes, then Redis.

Everything here is private to the test: a PostgreSQL it initialised (tests/postgres_server)
and a redis-server it started (tests/redis_server), both on free ports of 127.0.0.1, and
two ``kindrobots serve`` processes on them. Load runs throughout: dashboard queries over
HTTP and on an open dashboard WebSocket, widget chats over WebSocket, ``sendMessage``
over HTTP, and a ``conversationEvents`` feed stays open on the second instance.

PostgreSQL is stopped immediately (SIGQUIT: every backend gone, no checkpoint) while the
load goes on, then started again on the same port and data directory; then Redis is
SIGKILLed and started again. Proven:

- no answer is ``text/plain``, none is a 500, none masks an outage as
  ``INTERNAL_SERVER_ERROR``; no WebSocket ends without a close frame (1006);
- while PostgreSQL is down, HTTP answers 503 ``SERVICE_UNAVAILABLE`` with Retry-After,
  ``connection_init`` closes with 1013, an operation on an open socket gets a
  ``SERVICE_UNAVAILABLE`` error payload;
- both servers recover by themselves, within a bounded time, and the open feed delivers
  again once Redis is back;
- every acknowledged message (sendMessage answered 200, chat ended with ChatCompleted) is
  in the database, and no conversation is without messages;
- neither server's output holds a project key, a password, a token or a chat text.

Bounded: every loop stops on an event or a count, every wait has a timeout, and the whole
test runs under ``TEST_BUDGET`` seconds (about 40 s in practice).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from kindrobots.broker.redis import RedisBroker
from kindrobots.ids import from_global_id
from tests.chat_helpers import CHAT, ORIGIN, deploy
from tests.conftest import PASSWORD, Client, sign_up
from tests.postgres_server import PostgresServer, own_postgres
from tests.processes import Instance, kindrobots_env, new_keys, run_kindrobots, serve, wait_ready
from tests.redis_server import own_redis
from tests.test_live_feed import LiveFeed, summary

TEST_BUDGET = 100  # seconds for the whole test; well under two minutes
DOWN_FOR = 4.0  # seconds of load while PostgreSQL is down
RECOVERY_WITHIN = 30.0  # seconds for both servers to answer again after it is back
MAX_ITERATIONS = 400  # per load worker, whatever the clock says
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=20)
ME = "{ me { user { id } } }"
SEND_MESSAGE = """
mutation($input: ChatInput!) {
  sendMessage(input: $input) { conversationId messageId content }
}
"""
SETTINGS = {
    "KR_PUBLIC_URL": "http://localhost:8000",
    "KR_RATE_LIMITS": "false",
    "KR_DB_POOL_TIMEOUT": "3",
    "KR_BROKER_RECONNECT_DEADLINE": "60",
}


@dataclass
class Observed:
    """Everything the load saw, by phase."""

    phase: str = "before"
    http: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    closes: Counter[tuple[str, int | None]] = field(default_factory=Counter)
    socket_codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    # (conversation id, assistant message id, the user's text) of every acknowledged reply
    acknowledged: list[tuple[uuid.UUID, uuid.UUID, str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def saw_http(self, phase: str, kind: str, status: int, code: str = "") -> bool:
        return any(
            key[:3] == (phase, kind, status) and (not code or key[3] == code) for key in self.http
        )

    def ok_since(self, kind: str) -> int:
        return sum(n for key, n in self.http.items() if key[1:3] == (kind, 200))


def codes(errors: Any) -> list[str]:
    return [str((error.get("extensions") or {}).get("code")) for error in errors or []]


async def record_http(
    observed: Observed, kind: str, response: aiohttp.ClientResponse
) -> dict[str, Any] | None:
    """Check one HTTP answer's shape; its JSON body, or None when it is not JSON."""
    phase = observed.phase
    content_type = response.headers.get("Content-Type", "")
    raw = await response.text()
    if not content_type.startswith("application/json"):
        observed.problems.append(f"{phase} {kind}: {response.status} {content_type} {raw[:200]}")
        observed.http[(phase, kind, response.status, "not json")] += 1
        return None
    body: dict[str, Any] = json.loads(raw)
    found = codes(body.get("errors"))
    code = found[0] if found else ""
    observed.http[(phase, kind, response.status, code)] += 1
    if response.status >= 500 and response.status != 503:
        observed.problems.append(f"{phase} {kind}: status {response.status} {raw[:200]}")
    if response.status == 503 and (
        code != "SERVICE_UNAVAILABLE" or not response.headers.get("Retry-After")
    ):
        observed.problems.append(f"{phase} {kind}: 503 without code or Retry-After: {raw[:200]}")
    if "INTERNAL_SERVER_ERROR" in found:
        observed.problems.append(f"{phase} {kind}: masked as internal: {raw[:200]}")
    return body


def check_close(observed: Observed, kind: str, ws: aiohttp.ClientWebSocketResponse) -> None:
    observed.closes[(observed.phase, ws.close_code)] += 1
    if ws.close_code is None or ws.close_code == 1006:
        observed.problems.append(f"{observed.phase} {kind}: dropped without a close frame")


Worker = Callable[[int], Awaitable[None]]


async def run_worker(stop: asyncio.Event, work: Worker, observed: Observed, name: str) -> None:
    """``work`` again and again until ``stop`` (at most MAX_ITERATIONS times)."""
    for iteration in range(MAX_ITERATIONS):
        if stop.is_set():
            return
        try:
            await work(iteration)
        except (aiohttp.ClientError, TimeoutError) as exc:
            observed.problems.append(f"{observed.phase} {name}: {type(exc).__name__}: {exc}")
        await asyncio.sleep(0.05)


class Load:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        servers: list[Instance],
        token: str,
        project_key: str,
        observed: Observed,
    ) -> None:
        self.http = http
        self.servers = servers
        self.token = token
        self.project_key = project_key
        self.observed = observed

    def server(self, iteration: int) -> Instance:
        return self.servers[iteration % len(self.servers)]

    def new_text(self, kind: str) -> str:
        said = f"fault {kind} {uuid.uuid4().hex}"
        self.observed.texts.append(said)
        return said

    async def dashboard(self, iteration: int) -> None:
        async with self.http.post(
            f"{self.server(iteration).base_url}/graphql",
            json={"query": ME},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=REQUEST_TIMEOUT,
        ) as response:
            await record_http(self.observed, "dashboard", response)

    async def send_message(self, iteration: int) -> None:
        said = self.new_text("api")
        async with self.http.post(
            f"{self.server(iteration).base_url}/graphql",
            json={"query": SEND_MESSAGE, "variables": {"input": {"message": said}}},
            headers={"X-Project-Key": self.project_key},
            timeout=REQUEST_TIMEOUT,
        ) as response:
            body = await record_http(self.observed, "sendMessage", response)
        reply = ((body or {}).get("data") or {}).get("sendMessage")
        if response.status == 200 and reply:
            self.observed.acknowledged.append(
                (
                    from_global_id(reply["conversationId"], "Conversation"),
                    from_global_id(reply["messageId"], "Message"),
                    said,
                )
            )

    async def widget_chat(self, iteration: int) -> None:
        phase = self.observed.phase
        async with self.http.ws_connect(
            self.server(iteration).ws_url,
            protocols=["graphql-transport-ws"],
            headers={"Origin": ORIGIN},
            timeout=aiohttp.ClientWSTimeout(ws_close=10),
        ) as ws:
            await ws.send_json(
                {"type": "connection_init", "payload": {"projectKey": self.project_key}}
            )
            frame = await ws.receive(timeout=20)
            if frame.type != aiohttp.WSMsgType.TEXT:
                check_close(self.observed, "widget", ws)
                return
            assert json.loads(frame.data)["type"] == "connection_ack", frame.data
            said = self.new_text("widget")
            variables = {"input": {"message": said}}
            await ws.send_json(
                {"type": "subscribe", "id": "1", "payload": {"query": CHAT, "variables": variables}}
            )
            conversation: uuid.UUID | None = None
            for _ in range(200):  # the demo reply is a handful of deltas
                frame = await ws.receive(timeout=20)
                if frame.type != aiohttp.WSMsgType.TEXT:
                    check_close(self.observed, "widget chat", ws)
                    return
                message = json.loads(frame.data)
                if message["type"] == "complete":
                    return
                if message["type"] == "error":
                    self._socket_error(phase, "widget", message["payload"])
                    return
                payload = message["payload"]
                if payload.get("errors"):
                    self._socket_error(phase, "widget", payload["errors"])
                    continue
                event = payload["data"]["chat"]
                if event["__typename"] == "ChatStarted":
                    conversation = from_global_id(event["conversationId"], "Conversation")
                elif event["__typename"] == "ChatCompleted":
                    assert conversation is not None
                    message_id = from_global_id(event["messageId"], "Message")
                    self.observed.acknowledged.append((conversation, message_id, said))
            self.observed.problems.append(f"{phase} widget: the chat never completed")

    def _socket_error(self, phase: str, kind: str, errors: list[dict[str, Any]]) -> None:
        for code in codes(errors):
            self.observed.socket_codes[(phase, code)] += 1
            if code == "INTERNAL_SERVER_ERROR":
                self.observed.problems.append(f"{phase} {kind}: masked as internal: {errors}")


async def dashboard_socket(
    http: aiohttp.ClientSession,
    server: Instance,
    token: str,
    observed: Observed,
    stop: asyncio.Event,
) -> None:
    """One dashboard WebSocket, open throughout, running ``me`` again and again."""
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        await ws.send_json(
            {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
        )
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
        for iteration in range(MAX_ITERATIONS):
            if stop.is_set():
                return
            phase = observed.phase
            await ws.send_json(
                {"type": "subscribe", "id": str(iteration), "payload": {"query": ME}}
            )
            for _ in range(3):
                frame = await ws.receive(timeout=20)
                if frame.type != aiohttp.WSMsgType.TEXT:
                    check_close(observed, "dashboard socket", ws)
                    return
                message = json.loads(frame.data)
                if message["type"] == "complete":
                    break
                errors = message["payload"] if message["type"] == "error" else None
                errors = errors or message["payload"].get("errors")
                for code in codes(errors):
                    observed.socket_codes[(phase, code)] += 1
                    if code == "INTERNAL_SERVER_ERROR":
                        observed.problems.append(f"{phase} dashboard socket: internal: {errors}")
                if message["type"] == "error":
                    break
                if not errors:
                    observed.socket_codes[(phase, "ok")] += 1
            await asyncio.sleep(0.1)


async def until_answering(http: aiohttp.ClientSession, servers: list[Instance], token: str) -> None:
    """Until a dashboard query succeeds on every server (RECOVERY_WITHIN seconds at most)."""
    async with asyncio.timeout(RECOVERY_WITHIN):
        for server in servers:
            while True:
                try:
                    async with http.post(
                        f"{server.base_url}/graphql",
                        json={"query": ME},
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=REQUEST_TIMEOUT,
                    ) as response:
                        if response.status == 200 and not (await response.json()).get("errors"):
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)


async def check_database(postgres: PostgresServer, observed: Observed) -> None:
    engine = create_async_engine(postgres.url)
    try:
        async with engine.connect() as connection:
            for conversation, message_id, said in observed.acknowledged:
                rows = (
                    await connection.execute(
                        text(
                            "SELECT id, role, content FROM messages "
                            "WHERE conversation_id = :conversation ORDER BY created_at"
                        ),
                        {"conversation": conversation},
                    )
                ).all()
                stored = {(row.role, row.content) for row in rows}
                assert ("user", said) in stored, (said, rows)
                assert (message_id, "assistant") in {(row.id, row.role) for row in rows}, rows
            empty = (
                await connection.execute(
                    text(
                        "SELECT c.id FROM conversations c "
                        "LEFT JOIN messages m ON m.conversation_id = c.id WHERE m.id IS NULL"
                    )
                )
            ).all()
            assert empty == [], f"conversations without messages: {empty}"
    finally:
        await engine.dispose()


SECRET_PATTERNS = (
    re.compile(r"pk_[A-Za-z0-9_-]{8,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),  # a JWT
)


def check_logs(servers: list[Instance], secrets: list[str]) -> None:
    for server in servers:
        output = server.log.read_text(errors="replace")
        assert output, f"{server.name} logged nothing"
        for number, line in enumerate(output.splitlines(), 1):
            for pattern in SECRET_PATTERNS:
                assert not pattern.search(line), f"{server.name}:{number}: {line[:300]}"
            for secret in secrets:
                assert secret not in line, f"{server.name}:{number}: {line[:300]}"


async def test_two_servers_ride_out_a_database_crash_and_a_redis_restart(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_BUDGET), AsyncExitStack() as stack:
        postgres = await stack.enter_async_context(own_postgres())
        redis_server = await stack.enter_async_context(own_redis(tmp_path))
        shared = {
            "KR_DATABASE_URL": postgres.url,
            "KR_REDIS_URL": redis_server.url,
            **new_keys(),
            **SETTINGS,
        }
        await run_kindrobots(
            ["migrate"], kindrobots_env(shared, port=0, data_dir=tmp_path), tmp_path
        )
        servers = [
            await stack.enter_async_context(serve(name, tmp_path, shared)) for name in ("a", "b")
        ]
        await asyncio.gather(*(wait_ready(http, server) for server in servers))
        a, b = servers
        probe_redis = Redis.from_url(redis_server.url, socket_connect_timeout=1)
        stack.push_async_callback(probe_redis.aclose)
        probe = RedisBroker(probe_redis).publish

        client = Client(http, a.base_url)
        owner = await sign_up(client)
        shop = await deploy(client, owner)  # the project under load
        quiet = await deploy(client, owner)  # the feed's: no event arrives while PG is down
        secrets = [
            shop.project_key,
            quiet.project_key,
            owner.access_token,
            owner.refresh_token,
            PASSWORD,
        ]

        observed = Observed()
        load = Load(http, servers, owner.access_token, shop.project_key, observed)
        stop = asyncio.Event()
        workers = [
            *(run_worker(stop, load.dashboard, observed, "dashboard") for _ in range(3)),
            *(run_worker(stop, load.send_message, observed, "sendMessage") for _ in range(2)),
            *(run_worker(stop, load.widget_chat, observed, "widget") for _ in range(2)),
            dashboard_socket(http, b, owner.access_token, observed, stop),
        ]
        async with LiveFeed.open(
            http, b.ws_url, owner.access_token, quiet.project_id, probe
        ) as feed:
            running = [asyncio.create_task(worker) for worker in workers]
            try:
                await asyncio.sleep(2)
                assert observed.ok_since("dashboard") and observed.ok_since("sendMessage")

                observed.phase = "postgres down"
                await postgres.crash()
                await asyncio.sleep(DOWN_FOR)
                observed.phase = "postgres back"
                await postgres.start()
                await until_answering(http, servers, owner.access_token)
                observed.phase = "recovered"
                await asyncio.sleep(2)

                observed.phase = "redis down"
                await redis_server.kill()
                await asyncio.sleep(2)
                observed.phase = "redis back"
                await redis_server.start()
                await asyncio.sleep(2)
                observed.phase = "after"
                await asyncio.sleep(1)
            finally:
                stop.set()
                await asyncio.gather(*running)

            # The feed on B, open throughout, delivers again: probes, then a real chat on A.
            assert await feed.wait_live(quiet.project_id, probe) == []
            said = "fault feed " + uuid.uuid4().hex
            secrets.append(said)
            reply = await Client(http, a.base_url).execute(
                SEND_MESSAGE,
                {"input": {"message": said}},
                headers={"X-Project-Key": quiet.project_key},
            )
            assert reply.status == 200 and reply.errors == [], reply.body
            conversation = reply.data["sendMessage"]["conversationId"]
            assert summary(await feed.events(2)) == [
                (conversation, "user", said),
                (conversation, "assistant", f"You said: {said}"),
            ]

        assert observed.problems == [], "\n".join(observed.problems[:20])
        down = "postgres down"
        assert observed.saw_http(down, "dashboard", 503, "SERVICE_UNAVAILABLE"), observed.http
        assert observed.saw_http(down, "sendMessage", 503, "SERVICE_UNAVAILABLE"), observed.http
        assert observed.closes[(down, 1013)], observed.closes
        assert observed.socket_codes[(down, "SERVICE_UNAVAILABLE")], observed.socket_codes
        for phase in ("recovered", "redis down", "redis back", "after"):
            assert observed.saw_http(phase, "dashboard", 200), (phase, observed.http)
            assert observed.saw_http(phase, "sendMessage", 200), (phase, observed.http)
        assert observed.acknowledged

        await check_database(postgres, observed)
        secrets.extend(observed.texts)
        await stack.aclose()  # the servers stop (SIGTERM) and flush their output
        check_logs(servers, secrets)
