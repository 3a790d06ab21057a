"""CORS on ``/graphql``: the dashboard with credentials, widgets and API callers per project.

The matrix runs over real HTTP on both backends: allowed, wildcard, look-alike and
``null`` origins, actual requests and preflights with and without credentials.
A browser test at the end checks that Chromium reads what the rules allow and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from kindrobots.security.cors import CorsPolicy
from tests.chat_helpers import deploy
from tests.conftest import (
    Account,
    Client,
    Response,
    RunningServer,
    make_settings,
    sign_up,
    start_server,
)

DASHBOARD = "http://localhost:3000"  # the default KR_DASHBOARD_ORIGINS
PROJECT_ORIGINS = ["https://shop.example.com", "https://*.example.org"]
SEND = """
mutation($input: ChatInput!) { sendMessage(input: $input) { conversationId content } }
"""
ME = "{ me { user { id } } }"
WIDGET_PREFLIGHT_HEADERS = "content-type,x-project-key"

ALLOW_ORIGIN = "Access-Control-Allow-Origin"
ALLOW_CREDENTIALS = "Access-Control-Allow-Credentials"
ALLOW_HEADERS = "Access-Control-Allow-Headers"
ALLOW_METHODS = "Access-Control-Allow-Methods"

DASHBOARD_LOOK_ALIKES = [
    "http://localhost:3000.evil.net",
    "http://localhost:30001",
    "http://localhost:300",
    "https://localhost:3000",
    "http://evil-localhost:3000",
    "http://localhost",
    "null",
    "http://localhost:3000/",
    "*",
]
PROJECT_ALLOWED = [
    "https://shop.example.com",
    "https://SHOP.example.com",
    "https://shop.example.com:443",
    "https://a.example.org",  # wildcard
    "https://deep.sub.example.org",  # wildcard, any depth
]
PROJECT_REFUSED = [
    "https://example.org",  # a wildcard names subdomains, not the apex
    "http://a.example.org",  # wildcards are https only
    "https://shop.example.com.evil.net",
    "https://evilexample.org",
    "https://example.org.evil.net",
    "https://a.example.org.evil.net",
    "https://shop.example.com:8443",
    "http://shop.example.com",
    "https://evil.net/.example.org",
    "null",
    DASHBOARD,  # the dashboard's origin is not the project's
]


@dataclass
class Shop:
    client: Client
    account: Account
    key: str


@pytest_asyncio.fixture(scope="module")
async def shop(server: RunningServer, http: aiohttp.ClientSession) -> Shop:
    client = Client(http, server.base_url)
    account = await sign_up(client)
    deployed = await deploy(client, account, origins=PROJECT_ORIGINS)
    return Shop(client, account, deployed.project_key)


async def options(
    http: aiohttp.ClientSession,
    base_url: str,
    origin: str | None,
    request_headers: str | None,
    path: str = "/graphql",
) -> aiohttp.ClientResponse:
    headers = {"Access-Control-Request-Method": "POST"}
    if origin is not None:
        headers["Origin"] = origin
    if request_headers is not None:
        headers["Access-Control-Request-Headers"] = request_headers
    async with http.options(f"{base_url}{path}", headers=headers) as response:
        await response.read()
        return response


def assert_no_cors(response: Response | aiohttp.ClientResponse, label: str = "") -> None:
    assert ALLOW_ORIGIN not in response.headers, (label, dict(response.headers))
    assert ALLOW_CREDENTIALS not in response.headers, (label, dict(response.headers))
    assert "Origin" in response.headers.get("Vary", ""), label


def assert_never_star(response: Response | aiohttp.ClientResponse) -> None:
    assert response.headers.get(ALLOW_ORIGIN) != "*"
    if response.headers.get(ALLOW_CREDENTIALS):
        assert response.headers.get(ALLOW_ORIGIN) not in (None, "*")


async def send(shop: Shop, origin: str | None, key: str | None = None) -> Response:
    headers = {"X-Project-Key": shop.key if key is None else key}
    if origin is not None:
        headers["Origin"] = origin
    return await shop.client.execute(SEND, {"input": {"message": "Hi"}}, headers=headers)


# --- the dashboard: KR_DASHBOARD_ORIGINS, credentials allowed ---------------------------


async def test_dashboard_origin_is_allowed_with_credentials(shop: Shop) -> None:
    response = await shop.client.execute(
        ME, cookies=shop.account.cookies, headers={"Origin": DASHBOARD}
    )
    assert response.data["me"]["user"]["id"] == shop.account.user_id
    assert response.headers[ALLOW_ORIGIN] == DASHBOARD
    assert response.headers[ALLOW_CREDENTIALS] == "true"
    assert "Origin" in response.headers["Vary"]
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]


async def test_other_origins_get_no_dashboard_cors(shop: Shop) -> None:
    for origin in DASHBOARD_LOOK_ALIKES:
        response = await shop.client.execute(
            ME, token=shop.account.access_token, headers={"Origin": origin}
        )
        assert_no_cors(response, origin)
    # Not a browser: no Origin, no CORS headers, still Vary for caches.
    plain = await shop.client.execute(ME, token=shop.account.access_token)
    assert_no_cors(plain)


async def test_dashboard_preflight_allows_credentials(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    for requested in ("content-type", "content-type,authorization", "x-requested-with", None):
        response = await options(http, server.base_url, DASHBOARD, requested)
        assert response.status == 204, requested
        assert response.headers[ALLOW_ORIGIN] == DASHBOARD
        assert response.headers[ALLOW_CREDENTIALS] == "true"
        assert "Origin" in response.headers["Vary"]
        methods = {m.strip() for m in response.headers[ALLOW_METHODS].split(",")}
        assert methods == {"GET", "POST"}
        allowed = {h.strip().lower() for h in response.headers[ALLOW_HEADERS].split(",")}
        assert {"content-type", "authorization", "x-requested-with"} <= allowed
        assert "x-project-key" not in allowed
        assert int(response.headers["Access-Control-Max-Age"]) > 0


async def test_preflights_of_other_origins_are_refused(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    for origin in DASHBOARD_LOOK_ALIKES:
        response = await options(http, server.base_url, origin, "content-type")
        assert response.status == 403, origin
        assert_no_cors(response, origin)
    # A method GraphQL does not serve, even from the dashboard.
    headers = {"Origin": DASHBOARD, "Access-Control-Request-Method": "DELETE"}
    async with http.options(f"{server.base_url}/graphql", headers=headers) as refused:
        assert refused.status == 403
        assert_no_cors(refused)


async def test_cors_headers_reach_error_responses(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """Set when the response is prepared: a 400 the view raises carries them too."""
    headers = {"Origin": DASHBOARD, "Content-Type": "application/json"}
    async with http.post(f"{server.base_url}/graphql", data="{not json", headers=headers) as bad:
        assert bad.status == 400
        assert bad.headers[ALLOW_ORIGIN] == DASHBOARD
        assert bad.headers[ALLOW_CREDENTIALS] == "true"


# --- widgets and the external chat API: the project's origins, no credentials ----------


async def test_project_origins_are_allowed_without_credentials(shop: Shop) -> None:
    for origin in PROJECT_ALLOWED:
        response = await send(shop, origin)
        assert response.errors == [], (origin, response.errors)
        assert response.headers[ALLOW_ORIGIN] == origin, origin
        assert ALLOW_CREDENTIALS not in response.headers, origin
        assert "Origin" in response.headers["Vary"]


async def test_other_origins_are_refused_by_the_project(shop: Shop) -> None:
    for origin in PROJECT_REFUSED:
        response = await send(shop, origin)
        assert response.codes == ["FORBIDDEN"], (origin, response.body)
        assert_no_cors(response, origin)


async def test_server_to_server_calls_need_no_cors(shop: Shop) -> None:
    response = await send(shop, None)
    assert response.errors == [], response.errors
    assert_no_cors(response)


async def test_an_unknown_key_gets_no_cors(shop: Shop) -> None:
    for key in ("pk_doesnotexist", "sk_secret", ""):
        response = await send(shop, "https://shop.example.com", key=key)
        assert response.codes == ["FORBIDDEN"], (key, response.body)
        assert_no_cors(response, key)


async def test_a_dashboard_origin_gets_no_credentials_with_a_project_key(
    server: RunningServer, http: aiohttp.ClientSession, shop: Shop
) -> None:
    """The project's rule decides key-authenticated calls, also from a dashboard origin."""
    deployed = await deploy(shop.client, shop.account, origins=[DASHBOARD])
    response = await send(shop, DASHBOARD, key=deployed.project_key)
    assert response.errors == [], response.errors
    assert response.headers[ALLOW_ORIGIN] == DASHBOARD
    assert ALLOW_CREDENTIALS not in response.headers
    preflight = await options(http, server.base_url, DASHBOARD, WIDGET_PREFLIGHT_HEADERS)
    assert preflight.status == 204
    assert ALLOW_CREDENTIALS not in preflight.headers


async def test_a_development_star_project_echoes_the_origin(shop: Shop) -> None:
    deployed = await deploy(shop.client, shop.account, origins=["*"])
    response = await send(shop, "https://anywhere.example.net", key=deployed.project_key)
    assert response.errors == [], response.errors
    assert response.headers[ALLOW_ORIGIN] == "https://anywhere.example.net"
    assert ALLOW_CREDENTIALS not in response.headers
    refused = await send(shop, "null", key=deployed.project_key)
    assert refused.codes == ["FORBIDDEN"]
    assert_no_cors(refused)


async def test_widget_preflight_is_answered_without_credentials(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """The preflight cannot know the project: any real origin, no credentials, and the
    actual request decides (the tests above)."""
    for origin in [*PROJECT_ALLOWED, "https://shop.example.com.evil.net", "https://evil.net"]:
        for requested in (
            WIDGET_PREFLIGHT_HEADERS,
            "Content-Type, X-Project-Key, Authorization",
            "x-project-key",
        ):
            response = await options(http, server.base_url, origin, requested)
            assert response.status == 204, (origin, requested)
            assert response.headers[ALLOW_ORIGIN] == origin
            assert ALLOW_CREDENTIALS not in response.headers
            # Widget or dashboard depends on the requested headers, too.
            vary = {v.strip() for v in response.headers["Vary"].split(",")}
            assert {"Origin", "Access-Control-Request-Headers"} <= vary
            allowed = {h.strip().lower() for h in response.headers[ALLOW_HEADERS].split(",")}
            assert {"content-type", "x-project-key", "authorization"} <= allowed
            assert "x-requested-with" not in allowed


async def test_widget_preflight_refuses_null_and_malformed_origins(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    for origin in ("null", "*", "https://*.example.org", "not an origin", "https://a.b/path"):
        response = await options(http, server.base_url, origin, WIDGET_PREFLIGHT_HEADERS)
        assert response.status == 403, origin
        assert_no_cors(response, origin)


async def test_no_response_ever_allows_star(
    server: RunningServer, http: aiohttp.ClientSession, shop: Shop
) -> None:
    origins = [DASHBOARD, *DASHBOARD_LOOK_ALIKES, *PROJECT_ALLOWED, *PROJECT_REFUSED]
    for origin in origins:
        for requested in ("content-type", WIDGET_PREFLIGHT_HEADERS):
            assert_never_star(await options(http, server.base_url, origin, requested))
        assert_never_star(await send(shop, origin))
        assert_never_star(
            await shop.client.execute(ME, cookies=shop.account.cookies, headers={"Origin": origin})
        )


async def test_other_routes_have_no_cors(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    for path in ("/healthz", "/.well-known/jwks.json", "/widget.js"):
        async with http.get(f"{server.base_url}{path}", headers={"Origin": DASHBOARD}) as got:
            assert got.status == 200, path
            assert ALLOW_ORIGIN not in got.headers, path
        preflight = await options(http, server.base_url, DASHBOARD, None, path)
        assert ALLOW_ORIGIN not in preflight.headers, path


# --- the policy on its own --------------------------------------------------------------


async def test_policy_refuses_when_the_project_cannot_be_read() -> None:
    async def broken(_key: str) -> Sequence[str] | None:
        raise ConnectionError("database down")

    async def missing(_key: str) -> Sequence[str] | None:
        return None

    assert await CorsPolicy([DASHBOARD], broken).actual("https://a.example.org", "pk_x") == {}
    assert await CorsPolicy([DASHBOARD], missing).actual(DASHBOARD, "pk_x") == {}


def test_policy_matches_dashboard_origins_canonically() -> None:
    async def none(_key: str) -> Sequence[str] | None:
        return None

    policy = CorsPolicy(["https://App.Example.com:443", "http://localhost:3000"], none)
    assert policy.is_dashboard("https://app.example.com")
    assert policy.is_dashboard("http://localhost:3000")
    for origin in ("https://app.example.com.evil.net", "http://app.example.com", "null", ""):
        assert not policy.is_dashboard(origin), origin


# --- in a browser ------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]

# Runs in a page of the site's origin: what can a script of that site read from /graphql?
FETCH = """async ([url, key, credentials, query]) => {
  const headers = {"Content-Type": "application/json"};
  if (key) headers["X-Project-Key"] = key;
  try {
    const response = await fetch(url, {
      method: "POST", headers, credentials, body: JSON.stringify({query}),
    });
    return {status: response.status, body: await response.json()};
  } catch (error) {
    return {error: String(error)};
  }
}"""


@pytest_asyncio.fixture
async def site() -> AsyncIterator[str]:
    """A blank page on a port of its own: the customer's site and the dashboard."""
    app = web.Application()

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>site</title>", content_type="text/html")

    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    yield f"127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; CI must install Debian's chromium package")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")


async def test_a_browser_reads_only_what_the_rules_allow(
    chromium: Path, site: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    from playwright.async_api import async_playwright

    allowed = f"http://{site}"  # the project's and the dashboard's origin
    other = f"http://localhost:{site.split(':')[1]}"  # the same page, another origin
    runner, api = await start_server(make_settings(tmp_path, "sqlite", dashboard_origins=allowed))
    try:
        client = Client(http, api.base_url)
        account = await sign_up(client)
        key = (await deploy(client, account, origins=[allowed])).project_key
        send = 'mutation { sendMessage(input: {message: "Hi"}) { content } }'
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(chromium), args=CHROMIUM_ARGS
            )
            try:
                context = await browser.new_context()
                page = await context.new_page()

                async def fetch(origin: str, *args: Any) -> dict[str, Any]:
                    if not page.url.startswith(origin):
                        await page.goto(f"{origin}/")
                    result: dict[str, Any] = await page.evaluate(
                        FETCH, [f"{api.base_url}/graphql", *args]
                    )
                    return result

                # The widget's site: readable without credentials, never with them.
                widget = await fetch(allowed, key, "omit", send)
                assert widget.get("status") == 200, widget
                assert widget["body"]["data"]["sendMessage"]["content"], widget
                assert "error" in await fetch(allowed, key, "include", send)
                # Another origin: the preflight passes, the project refuses the origin.
                assert "error" in await fetch(other, key, "omit", send)
                # The dashboard: credentials allowed, from its own origin only.
                dashboard = await fetch(allowed, None, "include", ME)
                assert dashboard.get("status") == 200, dashboard
                assert dashboard["body"]["data"] == {"me": None}
                # Its sign-in sets the session cookies, which its next request carries.
                sign_in = (
                    f'mutation {{ signIn(input: {{email: "{account.email}", '
                    f'password: "{account.password}"}}) {{ user {{ id }} }} }}'
                )
                signed_in = await fetch(allowed, None, "include", sign_in)
                assert signed_in.get("status") == 200, signed_in
                me = await fetch(allowed, None, "include", ME)
                assert me["body"]["data"]["me"]["user"]["id"] == account.user_id, me
                assert "error" in await fetch(other, None, "include", ME)
                assert "error" in await fetch(other, None, "omit", ME)
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
