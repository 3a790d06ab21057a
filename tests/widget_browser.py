"""Fixtures of the widget's browser tests: Debian's Chromium, headless, driven by Playwright.

Nothing is installed at run time (never ``playwright install``): the tests use
``/usr/bin/chromium`` and skip without it, except in CI (``CI=true``), where a
missing Chromium fails the run. ``.ci/run`` installs it.

A second small server plays the customer's site. Its pages embed
``<script src=".../widget.js" data-project-key="pk_…">``; each page of
:data:`PAGES` is one kind of site (plain, hostile CSS, a strict
Content-Security-Policy sent as a real response header). Served from
``http://127.0.0.1:<port>`` (an allowed origin) the widget chats; the same
pages as ``http://localhost:<port>`` are refused.

The widget lives in an open shadow root: Playwright's CSS locators pierce it,
page scripts reach it through ``document.querySelector("kind-robots-chat").shadowRoot``.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Page, WebSocket, async_playwright, expect

from tests.chat_helpers import deploy
from tests.conftest import Client, RunningServer, make_settings, sign_up, start_server
from tests.jwks_server import AUDIENCE, ISSUER, JwksServer, SigningKey, claims

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000
SHADOW = 'document.querySelector("kind-robots-chat").shadowRoot'

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Shop</title><link rel="icon" href="data:,">{head}</head>
<body><h1>A shop</h1>
<div class="content"><p>Our finest robots, kindly priced.</p><button>Buy</button></div>
<script src="{api}/widget.js" data-project-key="{key}"{attributes} async></script>
</body></html>
"""

# A theme written by someone who never heard of the widget, and then some.
HOSTILE_CSS = """
* { font-size: 40px !important; line-height: 3 !important; letter-spacing: 4px !important;
    font-family: "Comic Sans MS", cursive !important; box-sizing: content-box !important; }
html { color: #0c0; direction: rtl; --kr-accent: #f00; }
body > * { position: relative !important; transform: rotate(3deg) !important;
           filter: blur(1px) !important; }
button { width: 100% !important; height: 120px !important; padding: 30px !important;
         background: #f06 !important; border-radius: 0 !important; }
input { font-size: 8px !important; height: 6px !important; width: 20px !important; }
div { display: none !important; }
svg, path { display: none !important; }
p { margin: 80px !important; }
"""


def strict_csp(api: str) -> str:
    """Our origin for scripts and connections only; styles from the host site itself.

    Chromium does not let an ``http://`` source cover ``ws://``: the WebSocket URL is listed.
    """
    return (
        f"default-src 'none'; script-src {api}; connect-src {api.replace('http', 'ws', 1)}; "
        "style-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


@dataclass
class HostPage:
    head: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    csp: bool = False
    key: str | None = None  # another project key than the site's
    authenticated: bool = False  # the site's AUTHENTICATED project; ?token= is data-token


PAGES = {
    "plain": HostPage(),
    "hostile": HostPage(head='<link rel="stylesheet" href="/site.css">'),
    "strict": HostPage(head='<link rel="stylesheet" href="/site.css">', csp=True),
    "unknown-key": HostPage(key="pk_doesnotexist0000"),
    "members": HostPage(authenticated=True),
    "options": HostPage(
        attributes={
            "data-title": "Robot help",
            "data-greeting": "Hi! Ask me **anything**.",
            "data-accent": "#0b7285",
            "data-position": "bottom-left",
            "data-open": "true",
            "data-strings": '{"send": "Envoyer", "placeholder": "Votre message"}',
        }
    ),
    "bad-options": HostPage(
        attributes={"data-accent": "red;} * {display:none", "data-position": "top-middle"}
    ),
}


@dataclass
class Site:
    api: RunningServer
    runner: web.AppRunner
    client: Client
    organization_id: str
    access_token: str
    project_key: str
    members_key: str  # an AUTHENTICATED project's, for pages whose visitors sign in
    signing_key: SigningKey  # signs end-user tokens its JWKS URL vouches for
    origin: str  # the customer's site, an allowed origin
    refused_origin: str  # the same site under a name the project does not list

    def url(self, page: str = "plain") -> str:
        return f"{self.origin}/{page}"

    def members_url(self, subject: str, **overrides: Any) -> str:
        """The members' page, signed in as ``subject``."""
        return f"{self.origin}/members?token={self.signing_key.sign(claims(subject, **overrides))}"

    @property
    def demo_url(self) -> str:
        return f"{self.api.base_url}/widget/demo?key={self.project_key}"


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; CI must install Debian's chromium package")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")


@pytest_asyncio.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    jwks = JwksServer()
    await jwks.start()
    signing_key = SigningKey.rsa()
    key_set = jwks.key_set([signing_key])
    settings = make_settings(
        tmp_path_factory.mktemp("widget"), "sqlite", outbound_allow=jwks.host_port
    )
    runner, api = await start_server(settings)
    key: dict[str, str] = {}

    async def host_page(request: web.Request) -> web.Response:
        spec = PAGES.get(request.match_info["page"])
        if spec is None:
            raise web.HTTPNotFound()
        values = dict(spec.attributes)
        if spec.authenticated and "token" in request.query:
            values["data-token"] = request.query["token"]
        attributes = "".join(f' {name}="{html.escape(value)}"' for name, value in values.items())
        project = key["members"] if spec.authenticated else key["project"]
        body = PAGE.format(
            head=spec.head, api=api.base_url, key=spec.key or project, attributes=attributes
        )
        headers = {"Content-Security-Policy": strict_csp(api.base_url)} if spec.csp else {}
        return web.Response(text=body, content_type="text/html", headers=headers)

    async def stylesheet(_request: web.Request) -> web.Response:
        return web.Response(text=HOSTILE_CSS, content_type="text/css")

    host = web.Application()
    host.router.add_get("/site.css", stylesheet)
    host.router.add_get("/{page}", host_page)
    host_runner = web.AppRunner(host)
    await host_runner.setup()
    await web.TCPSite(host_runner, "127.0.0.1", 0).start()
    port = host_runner.addresses[0][1]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        client = Client(http, api.base_url)
        account = await sign_up(client)
        # The API server's own origin too, for its development demo page.
        deployed = await deploy(client, account, origins=[f"http://127.0.0.1:{port}", api.base_url])
        members = await deploy(
            client,
            account,
            origins=[f"http://127.0.0.1:{port}"],
            project={
                "accessMode": "AUTHENTICATED",
                "jwksUrl": key_set.url,
                "jwtIssuer": ISSUER,
                "jwtAudience": AUDIENCE,
            },
        )
        key["project"], key["members"] = deployed.project_key, members.project_key
        yield Site(
            api=api,
            runner=runner,
            client=client,
            organization_id=account.organization_id,
            access_token=account.access_token,
            project_key=deployed.project_key,
            members_key=members.project_key,
            signing_key=signing_key,
            origin=f"http://127.0.0.1:{port}",
            refused_origin=f"http://localhost:{port}",
        )
    await host_runner.cleanup()
    await runner.cleanup()
    await jwks.close()


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


@dataclass
class Tab:
    page: Page
    sockets: list[WebSocket]
    errors: list[str]
    warnings: list[str]


# Before any page script: what the widget tells the page, and any CSP violation.
RECORD = """
window.__krEvents = [];
["ready", "open", "close", "message", "error", "reset", "rate"].forEach((name) =>
  window.addEventListener("kindrobots:" + name, (event) =>
    window.__krEvents.push({ name: name, detail: event.detail })));
window.__krViolations = [];
document.addEventListener("securitypolicyviolation", (event) =>
  window.__krViolations.push(event.violatedDirective + " " + event.blockedURI));
"""


@pytest_asyncio.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    context = await browser.new_context()
    await context.add_init_script(RECORD)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    opened = Tab(page, [], [], [])
    page.on("websocket", lambda websocket: opened.sockets.append(websocket))
    page.on("pageerror", lambda error: opened.errors.append(str(error)))

    def console(message: Any) -> None:
        # Errors: a Content-Security-Policy violation, a failed request, a bad frame.
        if message.type == "error":
            opened.errors.append(message.text)
        elif message.type == "warning":
            opened.warnings.append(message.text)

    page.on("console", console)
    yield opened
    await context.close()
    assert opened.errors == [], opened.errors  # nothing went wrong in the page


async def send(page: Page, message: str, reply: str | None = None) -> str:
    """Type a message like a person and wait for the whole reply; return its text."""
    before = await page.locator(".kr-chat-assistant").count()
    await page.locator(".kr-chat-input").fill(message)
    await page.locator(".kr-chat-send").click()
    bubble = page.locator(".kr-chat-assistant").nth(before)
    await expect(bubble).to_have_text(reply or f"You said: {message}", timeout=TIMEOUT_MS)
    await expect(bubble).not_to_have_class(re.compile("kr-chat-busy"), timeout=TIMEOUT_MS)
    return await bubble.inner_text()


async def events(page: Page, name: str) -> list[dict[str, Any]]:
    """The details of the ``kindrobots:<name>`` events the page has heard so far."""
    found: list[dict[str, Any]] = await page.evaluate(
        "(name) => window.__krEvents.filter((e) => e.name === name).map((e) => e.detail)", name
    )
    return found


# Boxes and computed styles inside the shadow root, by selector.
MEASURE = (
    """(selectors) => {
  const root = """
    + SHADOW
    + """;
  const out = {};
  for (const selector of selectors) {
    const node = root.querySelector(selector);
    const box = node.getBoundingClientRect();
    const style = getComputedStyle(node);
    out[selector] = {
      x: box.x, y: box.y, width: box.width, height: box.height,
      fontSize: style.fontSize, fontFamily: style.fontFamily, display: style.display,
      visibility: style.visibility, background: style.backgroundColor, color: style.color,
      letterSpacing: style.letterSpacing, direction: style.direction,
    };
  }
  return out;
}"""
)


async def measure(page: Page, *selectors: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = await page.evaluate(MEASURE, list(selectors))
    return found
