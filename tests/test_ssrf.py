"""The SSRF guard refuses internal targets before a single connection is opened."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from kindrobots.security.ssrf import (
    Limits,
    OutboundFailed,
    OutboundRefused,
    check_url,
    outbound_request,
)
from tests.servers import Listener, start_app


@pytest_asyncio.fixture
async def web_server() -> AsyncIterator[Callable[[web.Application], Any]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> int:
        runner, port = await start_app(app)
        runners.append(runner)
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Names the test controls; lookups of them are counted under ``calls:<name>``."""
    names: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in names:
            names[f"calls:{host}"] = str(int(names.get(f"calls:{host}", "0")) + 1)
            return real(names[host], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def _answer(response: web.Response) -> Callable[[web.Request], Any]:
    async def handler(_request: web.Request) -> web.Response:
        return response

    return handler


REFUSED_HOSTS = [
    "127.0.0.1",
    "127.8.9.10",
    "localhost",
    "LOCALHOST.",
    "[::1]",
    "0.0.0.0",  # noqa: S104 - a target the guard must refuse, not a bind
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "169.254.1.1",
    "[fe80::1]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[fec0::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[64:ff9b::7f00:1]",
    "2130706433",
    "0x7f000001",
    "0x7f.0.0.1",
    "017700000001",
    "0177.0.0.1",
    "127.1",
    "metadata.google.internal",
    "metadata",
    "224.0.0.1",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
async def test_internal_targets_are_refused_without_a_connection(
    host: str, listener: Listener
) -> None:
    with pytest.raises(OutboundRefused) as refused:
        await outbound_request(f"http://{host}:{listener.port}/openapi.json", allow=())
    assert refused.value.extensions == {"code": "BAD_USER_INPUT", "field": "url"}
    await asyncio.sleep(0.05)
    assert listener.connections == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/spec.json",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "http://user:secret@example.com/spec.json",
        "http://:pw@example.com/",
        "not a url",
        "http:///nohost",
    ],
)
async def test_bad_schemes_credentials_and_garbage_are_refused(url: str) -> None:
    with pytest.raises(OutboundRefused):
        await outbound_request(url, allow=())


async def test_a_name_that_resolves_to_a_private_address_is_refused(
    listener: Listener, fake_dns: dict[str, str]
) -> None:
    fake_dns["api.customer.test"] = "10.0.0.1"
    fake_dns["loop.customer.test"] = "127.0.0.1"
    for name in ("api.customer.test", "loop.customer.test"):
        with pytest.raises(OutboundRefused):
            await outbound_request(f"http://{name}:{listener.port}/", allow=())
    assert listener.connections == []


async def test_allowed_target_is_fetched(web_server: Callable[[web.Application], Any]) -> None:
    app = web.Application()
    app.router.add_get("/spec.json", _answer(web.json_response({"openapi": "3.1.0"})))
    port = await web_server(app)
    response = await outbound_request(
        f"http://127.0.0.1:{port}/spec.json", allow=(f"127.0.0.1:{port}",)
    )
    assert response.status == 200
    assert response.body == b'{"openapi": "3.1.0"}'


async def test_the_allow_list_names_host_and_port_exactly(
    web_server: Callable[[web.Application], Any],
) -> None:
    app = web.Application()
    app.router.add_get("/", _answer(web.Response(text="hi")))
    port = await web_server(app)
    with pytest.raises(OutboundRefused):
        await outbound_request(f"http://127.0.0.1:{port}/", allow=(f"127.0.0.1:{port + 1}",))


async def test_redirect_from_an_allowed_host_to_loopback_is_refused(
    web_server: Callable[[web.Application], Any], listener: Listener
) -> None:
    async def bounce(_request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{listener.port}/latest/meta-data/")

    app = web.Application()
    app.router.add_get("/spec.json", bounce)
    port = await web_server(app)
    with pytest.raises(OutboundRefused):
        await outbound_request(f"http://127.0.0.1:{port}/spec.json", allow=(f"127.0.0.1:{port}",))
    await asyncio.sleep(0.05)
    assert listener.connections == []


async def test_redirects_are_capped(web_server: Callable[[web.Application], Any]) -> None:
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/hop/{int(request.match_info['n']) + 1}")

    app = web.Application()
    app.router.add_get("/hop/{n}", loop)
    port = await web_server(app)
    with pytest.raises(OutboundFailed, match="redirects"):
        await outbound_request(
            f"http://127.0.0.1:{port}/hop/0",
            allow=(f"127.0.0.1:{port}",),
            limits=Limits(max_redirects=2),
        )


async def test_response_size_is_capped(web_server: Callable[[web.Application], Any]) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 1024)
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    port = await web_server(app)
    with pytest.raises(OutboundFailed, match="larger"):
        await outbound_request(
            f"http://127.0.0.1:{port}/big",
            allow=(f"127.0.0.1:{port}",),
            limits=Limits(max_bytes=10 * 1024),
        )


async def test_slow_targets_time_out(web_server: Callable[[web.Application], Any]) -> None:
    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    port = await web_server(app)
    with pytest.raises(OutboundFailed, match="No answer"):
        await outbound_request(
            f"http://127.0.0.1:{port}/slow",
            allow=(f"127.0.0.1:{port}",),
            limits=Limits(timeout=0.3),
        )


async def test_connection_is_pinned_to_the_checked_address(
    web_server: Callable[[web.Application], Any], fake_dns: dict[str, str]
) -> None:
    """DNS is asked once; the connection uses that answer, not a second (rebound) one."""
    app = web.Application()
    app.router.add_get("/", _answer(web.Response(text="pinned")))
    port = await web_server(app)
    fake_dns["tools.customer.test"] = "127.0.0.1"
    response = await outbound_request(
        f"http://tools.customer.test:{port}/", allow=(f"tools.customer.test:{port}",)
    )
    assert response.body == b"pinned"
    assert fake_dns["calls:tools.customer.test"] == "1"


async def test_a_cross_host_redirect_carries_no_body_and_no_credentials(
    web_server: Callable[[web.Application], Any],
) -> None:
    seen: list[tuple[str, str | None, bytes]] = []

    async def landing(request: web.Request) -> web.Response:
        seen.append((request.method, request.headers.get("X-Api-Key"), await request.read()))
        return web.json_response({"ok": True})

    second = web.Application()
    second.router.add_route("*", "/landing", landing)
    second_port = await web_server(second)

    async def bounce(_request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{second_port}/landing")

    first = web.Application()
    first.router.add_post("/start", bounce)
    first_port = await web_server(first)
    response = await outbound_request(
        f"http://127.0.0.1:{first_port}/start",
        allow=(f"127.0.0.1:{first_port}", f"localhost:{second_port}"),
        method="POST",
        headers={"X-Api-Key": "tool-secret", "Accept": "application/json"},
        json={"order": 1},
    )
    assert response.status == 200
    assert seen == [("GET", None, b"")]


async def test_production_talks_to_third_parties_over_https_only(
    web_server: Callable[[web.Application], Any], fake_dns: dict[str, str]
) -> None:
    """SECURITY_POLICY 3.2: plain http is refused unless the host is explicitly allowed."""
    app = web.Application()
    app.router.add_get("/spec.json", _answer(web.json_response({"openapi": "3.1.0"})))
    port = await web_server(app)
    fake_dns["api.customer.test"] = "127.0.0.1"
    with pytest.raises(OutboundRefused, match="https"):
        await check_url("http://api.customer.test/jwks.json", (), "jwksUrl", https_only=True)
    # The allow list (tests, private deployments) is the one exception.
    allowed = await outbound_request(
        f"http://127.0.0.1:{port}/spec.json", allow=(f"127.0.0.1:{port}",), https_only=True
    )
    assert allowed.status == 200
