"""Which browser origins may open a project's widget: the rules, then a real WebSocket each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from kindrobots.security.origins import normalize_origins, origin_allowed
from tests.chat_helpers import Deployed, deploy, widget_chat
from tests.conftest import Client, RunningServer, sign_up

# --- origin_allowed ------------------------------------------------------------------------

ALLOWED = normalize_origins(
    [
        "https://shop.example.org",
        "https://*.example.com",
        "http://localhost:3000",
        "https://*.ports.test:8443",
    ],
    production=True,
)

ORIGIN_CASES = [
    # exact entries
    ("https://shop.example.org", True),
    ("HTTPS://Shop.Example.ORG", True),  # scheme and host are case-insensitive
    ("https://shop.example.org:443", True),  # the default port is the same origin
    ("https://shop.example.org:8443", False),
    ("http://shop.example.org", False),  # http is another origin than https
    ("http://shop.example.org:443", False),
    ("https://www.shop.example.org", False),  # an exact entry has no subdomains
    ("https://example.org", False),
    ("https://shop.example.org.", False),  # the trailing-dot host is another origin
    ("https://shop.example.org/", False),  # origins have no path
    ("https://shop.example.org.evil.net", False),
    ("https://evilshop.example.org", False),
    # userinfo and delimiter tricks: the host is whatever follows the '@'
    ("https://shop.example.org@evil.net", False),
    ("https://user:pass@shop.example.org", False),
    ("https://evil.net#@shop.example.org", False),
    ("https://evil.net?@shop.example.org", False),
    ("https://evil.net\\@shop.example.org", False),
    ("https://evil.net%2f@shop.example.org", False),
    # wildcard entries: any subdomain, never the apex, never a look-alike
    ("https://sub.example.com", True),
    ("https://a.b.example.com", True),
    ("https://SUB.example.com", True),
    ("https://sub.example.com:443", True),
    ("https://xn--nxasmq6b.example.com", True),  # a punycode label is an ordinary label
    ("https://example.com", False),
    ("https://.example.com", False),
    ("https://example.com.evil.net", False),
    ("https://sub.example.com.evil.net", False),
    ("https://evilexample.com", False),
    ("https://sub.evilexample.com", False),
    ("https://sub.example.com.", False),
    ("https://sub.example.com:8443", False),  # a wildcard without a port means 443
    ("http://sub.example.com", False),  # https wildcards match https only
    ("https://sub.ехample.com", False),  # Cyrillic look-alike letters # noqa: RUF001
    ("https://*.example.com", False),  # the pattern itself is not an origin
    ("https://sub.example.com@evil.net", False),
    # a wildcard entry with a port
    ("https://a.ports.test:8443", True),
    ("https://a.ports.test", False),
    ("https://a.ports.test:18443", False),
    ("https://ports.test:8443", False),
    # ports on http
    ("http://localhost:3000", True),
    ("http://localhost", False),
    ("http://localhost:30000", False),
    ("https://localhost:3000", False),
    # what browsers send when there is no origin to speak of
    ("null", False),
    ("", False),
    (None, False),
    ("*", False),
    ("https://127.0.0.1", False),
    ("file://", False),
    ("chrome-extension://abcdef", False),
]


@pytest.mark.parametrize(("origin", "expected"), ORIGIN_CASES)
def test_origin_allowed(origin: str | None, expected: bool) -> None:
    assert origin_allowed(origin, ALLOWED) is expected


def test_a_project_without_origins_admits_no_browser() -> None:
    assert not origin_allowed("https://shop.example.org", [])


def test_a_development_star_admits_any_real_origin_but_not_null() -> None:
    anywhere = normalize_origins(["*"], production=False)
    assert origin_allowed("https://anything.example.net", anywhere)
    assert origin_allowed("http://localhost:5173", anywhere)
    assert not origin_allowed("null", anywhere)
    assert not origin_allowed(None, anywhere)


# --- the widget WebSocket ------------------------------------------------------------------


@dataclass
class Handshake:
    """What a widget saw after connection_init: the frames before the close, and its code."""

    frames: list[dict[str, Any]]
    close_code: int | None
    reason: str = ""  # the close reason

    @property
    def acknowledged(self) -> bool:
        return any(frame.get("type") == "connection_ack" for frame in self.frames)


async def handshake(
    http: aiohttp.ClientSession, ws_url: str, payload: dict[str, Any], origin: str | None
) -> Handshake:
    """connection_init with ``payload`` from ``origin``; wait for the ack or the close."""
    headers = {"Origin": origin} if origin is not None else {}
    frames: list[dict[str, Any]] = []
    async with http.ws_connect(ws_url, protocols=["graphql-transport-ws"], headers=headers) as ws:
        await ws.send_json({"type": "connection_init", "payload": payload})
        while True:
            message = await ws.receive(timeout=10)
            if message.type != aiohttp.WSMsgType.TEXT:
                reason = message.extra if isinstance(message.extra, str) else ""
                return Handshake(frames, ws.close_code, reason)
            frame = json.loads(message.data)
            frames.append(frame)
            if frame.get("type") == "connection_ack":
                return Handshake(frames, None)


SHOP = "https://shop.example.org"
PROJECT_ORIGINS = [SHOP, "https://*.example.com"]


@pytest_asyncio.fixture(scope="module")
async def shop(server: RunningServer, http: aiohttp.ClientSession) -> Deployed:
    client = Client(http, server.base_url)
    account = await sign_up(client)
    return await deploy(client, account, origins=PROJECT_ORIGINS)


@pytest.mark.parametrize(
    "origin", [SHOP, "https://sub.example.com", "https://a.b.example.com"], ids=str
)
async def test_allowed_origins_get_an_ack_and_a_reply(
    server: RunningServer, http: aiohttp.ClientSession, shop: Deployed, origin: str
) -> None:
    events = await widget_chat(http, server, shop.project_key, "Hello there", origin=origin)
    text = "".join(event["text"] for event in events if event["__typename"] == "ChatDelta")
    assert text == "You said: Hello there"
    assert events[-1]["__typename"] == "ChatCompleted"


REFUSED = [
    "https://example.com",  # the bare apex of the wildcard
    "https://example.com.evil.net",  # a look-alike ending in the allowed name
    "https://shop.example.org.evil.net",
    "http://sub.example.com",
    "https://shop.example.org@evil.net",
    "null",  # sandboxed iframes, file: pages, some redirects: present, so it must match
    "https://" + "é" * 200 + ".example.org",  # its reason must still fit a close frame
]


@pytest.mark.parametrize("origin", REFUSED, ids=repr)
async def test_other_origins_are_closed_with_4403_before_any_ack(
    server: RunningServer, http: aiohttp.ClientSession, shop: Deployed, origin: str
) -> None:
    result = await handshake(http, server.ws_url, {"projectKey": shop.project_key}, origin)
    assert result.frames == []
    assert result.close_code == 4403
    # API.md: the close reason says which check failed, and never holds a secret.
    assert "origin" in result.reason and "not allowed" in result.reason, result.reason
    assert shop.project_key not in result.reason
    assert len(result.reason.encode()) <= 123


async def test_a_widget_without_an_origin_is_treated_like_send_message(
    server: RunningServer, http: aiohttp.ClientSession, shop: Deployed
) -> None:
    """No Origin header: a server-side client, not a browser; the key decides (API.md)."""
    result = await handshake(http, server.ws_url, {"projectKey": shop.project_key}, None)
    assert result.acknowledged, result
    events = await widget_chat(http, server, shop.project_key, "Hello there", origin=None)
    assert events[-1]["__typename"] == "ChatCompleted"


async def test_a_widget_without_an_origin_still_needs_a_valid_key(
    server: RunningServer, http: aiohttp.ClientSession, shop: Deployed
) -> None:
    result = await handshake(http, server.ws_url, {"projectKey": "pk_" + "x" * 32}, None)
    assert (result.frames, result.close_code, result.reason) == ([], 4403, "unknown project key")


async def test_an_unknown_or_missing_project_key_is_closed_with_4403(
    server: RunningServer, http: aiohttp.ClientSession, shop: Deployed
) -> None:
    expected = {
        "pk_" + "x" * 32: "unknown project key",
        42: "missing or malformed project key",
        "": "missing or malformed project key",
    }
    for key, reason in expected.items():
        result = await handshake(http, server.ws_url, {"projectKey": key}, SHOP)
        assert (result.frames, result.close_code, result.reason) == ([], 4403, reason), key


async def test_a_refused_widget_cannot_chat_by_skipping_the_handshake(
    server: RunningServer, http: aiohttp.ClientSession, shop: Deployed
) -> None:
    """Without an ack, a subscribe is a protocol violation: closed, and nothing is answered."""
    headers = {"Origin": "https://example.com.evil.net"}
    async with http.ws_connect(
        server.ws_url, protocols=["graphql-transport-ws"], headers=headers
    ) as ws:
        await ws.send_json({"type": "connection_init", "payload": {"projectKey": shop.project_key}})
        query = 'subscription { chat(input: {message: "hi"}) { __typename } }'
        await ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": query}})
        message = await ws.receive(timeout=10)
        assert message.type != aiohttp.WSMsgType.TEXT, message.data
        assert ws.close_code == 4403


async def test_a_widget_connection_never_acts_for_a_signed_in_dashboard_user(
    server: RunningServer, http: aiohttp.ClientSession, shop: Deployed
) -> None:
    """A browser may attach the dashboard's session cookie to a widget's WebSocket.

    The widget's origin was checked against the project, which its owner chose, not
    against the dashboard's: the connection must stay an anonymous widget.
    """
    client = Client(http, server.base_url)
    victim = await sign_up(client)
    victim_project = await deploy(client, victim)
    headers = {"Origin": SHOP, "Cookie": f"kr_access={victim.access_token}"}
    async with http.ws_connect(
        server.ws_url, protocols=["graphql-transport-ws"], headers=headers
    ) as ws:
        await ws.send_json({"type": "connection_init", "payload": {"projectKey": shop.project_key}})
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
        await ws.send_json(
            {"type": "subscribe", "id": "me", "payload": {"query": "{ me { user { email } } }"}}
        )
        me = await ws.receive_json(timeout=10)
        assert me["payload"] == {"data": {"me": None}}, me
        feed = """subscription($id: ID!) {
            conversationEvents(projectId: $id) { message { content } } }"""
        await ws.send_json(
            {
                "type": "subscribe",
                "id": "feed",
                "payload": {"query": feed, "variables": {"id": victim_project.project_id}},
            }
        )
        refused = await ws.receive_json(timeout=10)
        while refused["type"] == "complete" and refused["id"] == "me":
            refused = await ws.receive_json(timeout=10)
        errors = refused["payload"] if refused["type"] == "error" else refused["payload"]["errors"]
        assert [error["extensions"]["code"] for error in errors] == ["UNAUTHENTICATED"], refused


async def test_the_legacy_protocol_refuses_the_same_origins(
    server: RunningServer, http: aiohttp.ClientSession, shop: Deployed
) -> None:
    """``graphql-ws`` clients are held to the same rule: no ack for a foreign origin."""
    outcomes: dict[str, str] = {}
    for origin in (SHOP, "https://example.com.evil.net"):
        async with http.ws_connect(
            server.ws_url, protocols=["graphql-ws"], headers={"Origin": origin}
        ) as ws:
            await ws.send_json(
                {"type": "connection_init", "payload": {"projectKey": shop.project_key}}
            )
            message = await ws.receive(timeout=10)
            outcomes[origin] = (
                json.loads(message.data)["type"]
                if message.type == aiohttp.WSMsgType.TEXT
                else f"closed {ws.close_code}"
            )
    assert outcomes == {SHOP: "connection_ack", "https://example.com.evil.net": "closed 4403"}
