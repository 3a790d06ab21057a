"""The widget in a real browser: Debian's Chromium, headless, driven by Playwright.

Nothing is installed at run time (never ``playwright install``): the test uses
``/usr/bin/chromium`` and skips without it, except in CI (``CI=true``), where a
missing Chromium fails the run. ``.ci/run`` installs it.

A second small server plays the customer's site: its page embeds
``<script src=".../widget.js" data-project-key="pk_…">``. Served from
``http://127.0.0.1:<port>`` (an allowed origin) the widget streams the reply;
the same page as ``http://localhost:<port>`` is refused.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Page, WebSocket, async_playwright, expect

from kindrobots.chat.providers import ChatRequest, DemoProvider, Event, TextDelta
from kindrobots.server import WEBSOCKETS
from tests.chat_helpers import deploy
from tests.conftest import Client, RunningServer, make_settings, sign_up, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOT_ALLOWED = "This site is not allowed to use this chat."
TIMEOUT_MS = 15_000

HOST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shop</title><link rel="icon" href="data:,">
</head>
<body><h1>A shop</h1>
<script src="{api}/widget.js" data-project-key="{key}" data-title="Shop help" async></script>
</body></html>
"""

# Records each text the newest assistant bubble shows, to see the reply grow.
OBSERVE_REPLY = """() => {
  window.__krReplies = [];
  const log = document.querySelector(".kr-chat-messages");
  new MutationObserver(() => {
    const bubbles = log.querySelectorAll(".kr-chat-assistant");
    const text = bubbles.length ? bubbles[bubbles.length - 1].textContent : "";
    const seen = window.__krReplies;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(log, { childList: true, subtree: true, characterData: true });
}"""


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; CI must install Debian's chromium package")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")


@dataclass
class Site:
    api: RunningServer
    runner: web.AppRunner
    client: Client
    organization_id: str
    access_token: str
    project_key: str
    allowed_url: str  # the host page on an allowed origin
    refused_url: str  # the same page on an origin the project does not list

    @property
    def demo_url(self) -> str:
        return f"{self.api.base_url}/widget/demo?key={self.project_key}"


@pytest_asyncio.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    runner, api = await start_server(make_settings(tmp_path_factory.mktemp("widget"), "sqlite"))
    page: dict[str, str] = {}

    async def host_page(_request: web.Request) -> web.Response:
        return web.Response(text=page["html"], content_type="text/html")

    host = web.Application()
    host.router.add_get("/", host_page)
    host_runner = web.AppRunner(host)
    await host_runner.setup()
    await web.TCPSite(host_runner, "127.0.0.1", 0).start()
    port = host_runner.addresses[0][1]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        client = Client(http, api.base_url)
        account = await sign_up(client)
        # The API server's own origin too, for its development demo page.
        deployed = await deploy(client, account, origins=[f"http://127.0.0.1:{port}", api.base_url])
        page["html"] = HOST_PAGE.format(api=api.base_url, key=deployed.project_key)
        yield Site(
            api=api,
            runner=runner,
            client=client,
            organization_id=account.organization_id,
            access_token=account.access_token,
            project_key=deployed.project_key,
            allowed_url=f"http://127.0.0.1:{port}/",
            refused_url=f"http://localhost:{port}/",
        )
    await host_runner.cleanup()
    await runner.cleanup()


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


@pytest_asyncio.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    opened = Tab(page, [], [])
    page.on("websocket", lambda websocket: opened.sockets.append(websocket))
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    # Console errors too: a Content-Security-Policy violation, a failed request, a bad frame.
    page.on(
        "console",
        lambda message: opened.errors.append(message.text) if message.type == "error" else None,
    )
    yield opened
    await context.close()
    assert opened.errors == [], opened.errors  # nothing went wrong in the page


@pytest.fixture
def slow_demo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Space the demo provider's words out, so deltas reach the page one by one."""
    stream = DemoProvider.stream

    async def slowly(self: DemoProvider, request: ChatRequest) -> AsyncIterator[Event]:
        async for event in stream(self, request):
            if isinstance(event, TextDelta):
                await asyncio.sleep(0.04)
            yield event

    monkeypatch.setattr(DemoProvider, "stream", slowly)
    yield


async def send(page: Page, message: str) -> str:
    """Type a message like a person and wait for the whole reply; return its text."""
    before = await page.locator(".kr-chat-assistant").count()
    await page.locator(".kr-chat-input").fill(message)
    await page.locator(".kr-chat-send").click()
    reply = page.locator(".kr-chat-assistant").nth(before)
    await expect(reply).to_have_text(f"You said: {message}", timeout=TIMEOUT_MS)
    await expect(reply).not_to_have_class(re.compile("kr-chat-busy"), timeout=TIMEOUT_MS)
    return await reply.inner_text()


CONVERSATIONS = """
query($id: ID!) { organization(id: $id) { conversations { edges { node {
  messages { edges { node { role content } } } } } } } }
"""


async def test_widget_streams_the_reply_on_an_allowed_origin(
    site: Site, tab: Tab, slow_demo: None
) -> None:
    page = tab.page
    await page.goto(site.allowed_url)
    await page.locator(".kr-chat-launcher").click()
    await expect(page.locator(".kr-chat-panel")).to_be_visible()
    await page.evaluate(OBSERVE_REPLY)

    first = "Where is my order number 42 please?"
    assert await send(page, first) == f"You said: {first}"
    replies: list[str] = await page.evaluate("window.__krReplies")
    # The bubble grew delta by delta: several partial texts, each a prefix of the next.
    assert replies[-1] == f"You said: {first}"
    assert len(replies) >= 3, replies
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(replies))

    second = "And the refund?"
    await send(page, second)
    assert len(tab.sockets) == 1  # one connection carries both messages

    # The follow-up went into the same conversation (the widget kept its conversationId).
    result = await site.client.execute(
        CONVERSATIONS, {"id": site.organization_id}, token=site.access_token
    )
    assert result.errors == [], result.errors
    conversations = result.data["organization"]["conversations"]["edges"]
    assert len(conversations) == 1
    messages = [edge["node"] for edge in conversations[0]["node"]["messages"]["edges"]]
    assert [m["content"] for m in messages] == [
        first,
        f"You said: {first}",
        second,
        f"You said: {second}",
    ]


async def test_widget_is_refused_on_an_origin_the_project_does_not_allow(
    site: Site, tab: Tab
) -> None:
    page = tab.page
    await page.goto(site.refused_url)
    await page.wait_for_function("window.KindRobotsChat !== undefined")
    # Open the panel, type and send in one task: the message is queued before the server
    # can refuse the connection, so the refusal of a pending message is what is tested.
    await page.evaluate(
        """() => {
          document.querySelector(".kr-chat-launcher").click();
          const input = document.querySelector(".kr-chat-input");
          input.value = "Hello?";
          input.form.requestSubmit();
        }"""
    )
    await expect(page.locator(".kr-chat-status")).to_have_text(NOT_ALLOWED)
    await expect(page.locator(".kr-chat-user")).to_have_text("Hello?")
    await expect(page.locator(".kr-chat-input")).to_be_disabled()
    await expect(page.locator(".kr-chat-send")).to_be_disabled()
    # A refusal (4403) is final: no reconnect, which would come within a second.
    await page.wait_for_timeout(1500)
    assert len(tab.sockets) == 1
    assert await page.locator(".kr-chat-assistant").count() == 0
    assert await page.locator(".kr-chat-error").count() == 0


async def test_widget_reconnects_after_the_server_drops_it(site: Site, tab: Tab) -> None:
    page = tab.page
    await page.goto(site.allowed_url)
    await page.locator(".kr-chat-launcher").click()
    await send(page, "Hello")
    for websocket in [*site.runner.app[WEBSOCKETS]]:
        await websocket.close(code=1012, message=b"Service restart")  # unexpected for the widget
    # The first retry comes after 0.25-0.5 s (backoff with jitter).
    for _ in range(100):
        if len(tab.sockets) > 1:
            break
        await asyncio.sleep(0.05)
    assert len(tab.sockets) == 2
    await send(page, "Still there?")
    await expect(page.locator(".kr-chat-status")).to_have_text("")


async def test_development_demo_page_chats(site: Site, tab: Tab) -> None:
    page = tab.page
    await page.goto(site.demo_url)  # its own strict Content-Security-Policy applies
    await page.locator(".kr-chat-launcher").click()
    await send(page, "Hi from the demo page")
