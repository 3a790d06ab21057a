"""The chat relay: text deltas from a fast upstream to a widget's WebSocket, as ratios.

    python bench/relay.py [--quick] [--deltas 3000] [--rounds 5]

One fake OpenAI-compatible upstream (its own process) answers every chat with the same
``--deltas`` text deltas, written as fast as the socket takes them. One client (its own
process) subscribes with the widget's own document (kindrobots/static/widget.js) over
graphql-transport-ws and reads until ``complete``, timing each turn. The sides, all in
this process, each on a real port, run in alternation for ``--rounds`` rounds; the best
turn of each counts:

* ``project``: the real server (a widget project, its agent on the upstream), as shipped:
  coalesced deltas, events answered by the fast path;
* ``project, uncoalesced``: the same with ``KR_CHAT_COALESCE_MS=0`` (one frame per delta);
* ``raw per delta``: an aiohttp WebSocket handler that reads the same upstream and sends
  the frames the project's uncoalesced path sends, one per delta, without GraphQL,
  database or checks: the baseline;
* ``raw coalesced``: the same handler sending one frame per network read of the
  upstream (up to the project's character cap): as few frames as a relay can send;
* ``plain strawberry``: a Strawberry schema with the same types and no extensions,
  relaying the upstream one delta per event with Strawberry's aiohttp view.

The text each side delivered is checked against the upstream's, character for character.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import strawberry
from aiohttp import web
from sqlalchemy import update
from strawberry.aiohttp.views import GraphQLView

from kindrobots.billing.plans import Tier
from kindrobots.config import Settings, format_keys, generate_audit_key, generate_key, load_settings
from kindrobots.db.migrate import upgrade
from kindrobots.db.models import Organization
from kindrobots.server import SERVICES, create_app

ORIGIN = "https://shop.example.com"
# The widget's document, as kindrobots/static/widget.js sends it.
CHAT = (
    "subscription KindRobotsChat($input: ChatInput!) { chat(input: $input) { "
    "__typename ... on ChatStarted { conversationId } ... on ChatDelta { text } "
    "... on ChatToolCall { name } ... on ChatError { message retryAfter } } }"
)
WORDS = (
    "The ",
    "parcel ",
    "left ",
    "our ",
    "depot ",
    "on ",
    "Monday; ",
    "expect ",
    "it ",
    "soon. ",
)
COALESCE_CHARS = 2048  # the project's default cap, used by the raw coalesced side too


def upstream_text(deltas: int) -> list[str]:
    return [
        f"{WORDS[i % len(WORDS)]}{i} " if i % 97 == 0 else WORDS[i % len(WORDS)]
        for i in range(deltas)
    ]


# --- The upstream (a process of its own) ----------------------------------------------


def sse_body(deltas: int) -> bytes:
    chunks = [
        b"data: "
        + json.dumps(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": text}}],
            }
        ).encode()
        + b"\n\n"
        for text in upstream_text(deltas)
    ]
    usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": deltas}}
    chunks.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return b"".join(chunks)


async def start_upstream(deltas: int) -> tuple[subprocess.Popen[bytes], str]:
    """The upstream process and its base URL, once it answers."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603, ASYNC220 - our own script, started once
        [sys.executable, __file__, "--upstream", str(port), str(deltas)]
    )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(base + "/") as response:
                    await response.read()
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        else:
            raise SystemExit("the upstream did not start")
    return process, base + "/v1"


def run_upstream_on(deltas: int, port: int) -> None:
    body = sse_body(deltas)

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(body), 65536):
            await response.write(body[start : start + 65536])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- The client (a process of its own) ------------------------------------------------


async def client_turns(command: dict[str, Any]) -> dict[str, Any]:
    """``turns`` chats on one connection; seconds of each, frames and text of the last."""
    seconds: list[float] = []
    text = ""
    frames = 0
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            command["url"],
            protocols=["graphql-transport-ws"],
            headers={"Origin": ORIGIN},
            max_msg_size=0,
        ) as ws,
    ):
        await ws.send_json({"type": "connection_init", "payload": command["init"]})
        ack = await ws.receive_json(timeout=30)
        if ack.get("type") != "connection_ack":
            raise SystemExit(f"not acknowledged: {ack}")
        for turn in range(command["turns"]):
            parts: list[str] = []
            frames = 0
            started = time.perf_counter()
            await ws.send_json(
                {
                    "id": str(turn),
                    "type": "subscribe",
                    "payload": {"query": CHAT, "variables": command["variables"]},
                }
            )
            for _ in range(1_000_000):
                message = await ws.receive(timeout=60)
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise SystemExit(f"connection ended: {message}")
                frame = json.loads(message.data)
                if frame["type"] == "complete":
                    break
                if frame["type"] != "next" or "errors" in frame["payload"]:
                    raise SystemExit(f"unexpected frame: {frame}")
                frames += 1
                event = frame["payload"]["data"]["chat"]
                if event["__typename"] == "ChatDelta":
                    parts.append(event["text"])
            seconds.append(time.perf_counter() - started)
            text = "".join(parts)
    return {"seconds": seconds, "text": text, "frames": frames}


def run_client() -> None:
    async def serve_commands() -> None:
        for line in sys.stdin:
            result = await client_turns(json.loads(line))
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()

    asyncio.run(serve_commands())


class Client:
    def __init__(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, __file__, "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = await asyncio.to_thread(self.process.stdout.readline)
        if not line:
            raise SystemExit("the client failed")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


# --- Reading the upstream (the baselines) ---------------------------------------------


async def upstream_deltas(http: aiohttp.ClientSession, base: str) -> AsyncIterator[list[str]]:
    """The upstream's text deltas, one list per network read (SSE lines parsed)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    buffer = b""
    async with http.post(base + "/chat/completions", json=body) as response:
        async for chunk in response.content.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            batch: list[str] = []
            for line in lines:
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        batch.append(content)
            if batch:
                yield batch


def next_frame(operation: str, event: dict[str, Any]) -> str:
    return json.dumps({"id": operation, "type": "next", "payload": {"data": {"chat": event}}})


def raw_app(base: str, *, coalesced: bool) -> web.Application:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=["graphql-transport-ws"])
        await ws.prepare(request)
        async with aiohttp.ClientSession() as http:
            async for message in ws:
                frame = json.loads(message.data)
                if frame["type"] == "connection_init":
                    await ws.send_str(json.dumps({"type": "connection_ack"}))
                    continue
                operation = frame["id"]
                conversation = f"Conversation:{uuid.uuid4()}"
                await ws.send_str(
                    next_frame(
                        operation, {"__typename": "ChatStarted", "conversationId": conversation}
                    )
                )
                async for batch in upstream_deltas(http, base):
                    if not coalesced:
                        for text in batch:
                            await ws.send_str(
                                next_frame(operation, {"__typename": "ChatDelta", "text": text})
                            )
                        continue
                    held: list[str] = []
                    size = 0
                    for text in batch:
                        if held and size + len(text) > COALESCE_CHARS:
                            await ws.send_str(
                                next_frame(
                                    operation, {"__typename": "ChatDelta", "text": "".join(held)}
                                )
                            )
                            held, size = [], 0
                        held.append(text)
                        size += len(text)
                    await ws.send_str(
                        next_frame(operation, {"__typename": "ChatDelta", "text": "".join(held)})
                    )
                await ws.send_str(next_frame(operation, {"__typename": "ChatCompleted"}))
                await ws.send_str(json.dumps({"id": operation, "type": "complete"}))
        return ws

    app = web.Application()
    app.router.add_get("/graphql", handler)
    return app


# --- Plain Strawberry -----------------------------------------------------------------


@strawberry.type
class ChatStarted:
    conversation_id: strawberry.ID


@strawberry.type
class ChatDelta:
    text: str


@strawberry.type
class ChatToolCall:
    name: str


@strawberry.type
class ChatCompleted:
    message_id: strawberry.ID


@strawberry.type
class ChatError:
    message: str
    retry_after: int | None


ChatEvent = Annotated[
    ChatStarted | ChatDelta | ChatToolCall | ChatCompleted | ChatError,
    strawberry.union("ChatEvent"),
]


@strawberry.input
class ChatInput:
    message: str
    conversation_id: strawberry.ID | None = None


def strawberry_app(base: str) -> web.Application:
    @strawberry.type
    class Query:
        ok: bool = True

    @strawberry.type
    class Subscription:
        @strawberry.subscription
        async def chat(self, input: ChatInput) -> AsyncGenerator[ChatEvent, None]:
            yield ChatStarted(conversation_id=strawberry.ID(f"Conversation:{uuid.uuid4()}"))
            async with aiohttp.ClientSession() as http:
                async for batch in upstream_deltas(http, base):
                    for text in batch:
                        yield ChatDelta(text=text)
            yield ChatCompleted(message_id=strawberry.ID(f"Message:{uuid.uuid4()}"))

    app = web.Application()
    view = GraphQLView(
        schema=strawberry.Schema(query=Query, subscription=Subscription), allowed_origins=["*"]
    )
    app.router.add_route("GET", "/graphql", view)
    return app


# --- The project ----------------------------------------------------------------------


def settings_for(tmp: Path, upstream: str, **overrides: Any) -> Settings:
    tmp.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "env": "development",
        "data_dir": tmp,
        "database_url": f"sqlite+aiosqlite:///{tmp}/bench.db",
        "public_url": "http://localhost:8000",
        "signing_keys": format_keys((generate_key("sig"),)),
        "encryption_keys": format_keys((generate_key("enc"),)),
        "audit_key": generate_audit_key(),
        "rate_limits": False,
        "log_level": "ERROR",
        "outbound_allow": upstream.split("/")[2],
        **overrides,
    }
    return load_settings(**values)


SIGN_UP = "mutation($input: SignUpInput!) { signUp(input: $input) { accessToken } }"
MEMBERSHIPS = "{ me { memberships { organization { id } } } }"
ADD_CREDENTIAL = (
    "mutation($input: AddLlmCredentialInput!) { addLlmCredential(input: $input) { id } }"
)
CREATE_AGENT = "mutation($input: CreateAgentInput!) { createAgent(input: $input) { id } }"
CREATE_PROJECT = (
    "mutation($input: CreateProjectInput!) { createProject(input: $input) { publishableKey } }"
)


async def graphql(
    http: aiohttp.ClientSession, url: str, query: str, variables: Any = None, token: str = ""
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(
        url, json={"query": query, "variables": variables}, headers=headers
    ) as response:
        body = await response.json()
    if body.get("errors"):
        raise SystemExit(f"setup failed: {body['errors']}")
    return body["data"]


async def deploy(url: str, upstream: str) -> str:
    """An account, a credential on the upstream, an agent and a widget project: its key."""
    async with aiohttp.ClientSession() as http:
        email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
        signed = await graphql(
            http,
            url,
            SIGN_UP,
            {
                "input": {
                    "email": email,
                    "password": "correct horse battery",
                    "displayName": "B",
                    "organizationName": "Bench",
                }
            },
        )
        token = signed["signUp"]["accessToken"]
        me = await graphql(http, url, MEMBERSHIPS, token=token)
        organization = me["me"]["memberships"][0]["organization"]["id"]
        credential = await graphql(
            http,
            url,
            ADD_CREDENTIAL,
            {
                "input": {
                    "organizationId": organization,
                    "provider": "OPENAI_COMPATIBLE",
                    "apiKey": "bench-key-000000",
                    "label": "Bench",
                    "baseUrl": upstream,
                }
            },
            token,
        )
        agent = await graphql(
            http,
            url,
            CREATE_AGENT,
            {
                "input": {
                    "organizationId": organization,
                    "name": "Bench",
                    "model": "bench-model",
                    "systemPrompt": "You answer.",
                    "llmCredentialId": credential["addLlmCredential"]["id"],
                    "manifestIds": [],
                }
            },
            token,
        )
        project = await graphql(
            http,
            url,
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


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/graphql"


async def project(
    tmp: Path, upstream: str, **overrides: Any
) -> tuple[web.AppRunner, dict[str, Any]]:
    app = create_app(settings_for(tmp, upstream, **overrides))
    await upgrade(app[SERVICES].engine)
    runner, url = await serve(app)
    key = await deploy(url, upstream)
    # Enterprise has no token budget: thousands of benchmark turns would spend a plan's day.
    async with app[SERVICES].write() as session:
        await session.execute(update(Organization).values(tier=Tier.ENTERPRISE.value))
    command = {
        "url": url.replace("http", "ws"),
        "init": {"projectKey": key},
        "variables": {"input": {"message": "Where is it?"}},
    }
    return runner, command


@dataclass
class Side:
    name: str
    command: dict[str, Any]
    best: float = float("inf")
    frames: int = 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of one turn (a smoke run)")
    parser.add_argument("--deltas", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=3, help="turns per side per round")
    options = parser.parse_args()
    rounds, turns = (1, 1) if options.quick else (options.rounds, options.turns)
    expected = "".join(upstream_text(options.deltas))
    upstream_process, upstream = await start_upstream(options.deltas)
    client = Client()
    runners: list[web.AppRunner] = []
    try:
        with tempfile.TemporaryDirectory(prefix="kr-bench-relay-") as tmp:
            root = Path(tmp)
            shipped, shipped_command = await project(root / "project", upstream)
            plain, plain_command = await project(root / "uncoalesced", upstream, chat_coalesce_ms=0)
            runners += [shipped, plain]
            sides = [Side("project", shipped_command), Side("project, uncoalesced", plain_command)]
            for name, app in (
                ("raw per delta", raw_app(upstream, coalesced=False)),
                ("raw coalesced", raw_app(upstream, coalesced=True)),
                ("plain strawberry", strawberry_app(upstream)),
            ):
                runner, url = await serve(app)
                runners.append(runner)
                command = {
                    "url": url.replace("http", "ws"),
                    "init": {},
                    "variables": {"input": {"message": "hi"}},
                }
                sides.append(Side(name, command))
            for side in sides:  # warm-up, and the text check
                print(f"warming up: {side.name}", file=sys.stderr)
                result = await client.run({**side.command, "turns": 1})
                if result["text"] != expected:
                    raise SystemExit(f"{side.name}: the delivered text differs from the upstream's")
            for round_number in range(rounds):
                order = sides if round_number % 2 == 0 else sides[::-1]
                for side in order:
                    result = await client.run({**side.command, "turns": turns})
                    if result["text"] != expected:
                        raise SystemExit(
                            f"{side.name}: the delivered text differs from the upstream's"
                        )
                    side.best = min(side.best, *result["seconds"])
                    side.frames = result["frames"]
    finally:
        client.close()
        for runner in runners:
            await runner.cleanup()
        upstream_process.terminate()
        upstream_process.wait(timeout=30)
    by_name = {side.name: side for side in sides}
    characters = f"{len(expected):,} characters"
    print(f"deltas per reply: {options.deltas} ({characters}), text identical on every side")
    for side in sides:
        rate = options.deltas / side.best
        timing = f"{side.best * 1000:.1f} ms per reply, {rate:,.0f} deltas/s"
        print(f"{side.name}: {timing}, {side.frames} frames")
    raw, raw_coalesced = by_name["raw per delta"], by_name["raw coalesced"]
    for name in ("project", "project, uncoalesced", "plain strawberry"):
        print(f"ratio {name}/raw: {raw.best / by_name[name].best:.2f}")
    for name in ("project", "plain strawberry"):
        print(f"ratio {name}/raw-coalesced: {raw_coalesced.best / by_name[name].best:.2f}")


if __name__ == "__main__":
    if "--client" in sys.argv:
        run_client()
    elif "--upstream" in sys.argv:
        run_upstream_on(int(sys.argv[3]), int(sys.argv[2]))
    else:
        os.environ.setdefault("PYTHONHASHSEED", "0")
        asyncio.run(main())
