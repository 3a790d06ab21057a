"""The widget in a real browser (fixtures and host pages: tests/widget_browser.py).

Screenshots go to ``$KR_WIDGET_SCREENSHOTS`` when it is set (for a person to look
at); the assertions are DOM measurements inside the shadow root.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

import kindrobots.schema.chat as chat_schema
from kindrobots.chat.providers import ChatRequest, DemoProvider, Event, ProviderError, TextDelta
from kindrobots.errors import PaymentRequired, RateLimited
from kindrobots.server import WEBSOCKETS
from tests import widget_browser
from tests.jwks_server import claims
from tests.widget_browser import SHADOW, Site, Tab, events, measure, send

# The shared fixtures, bound here so that pytest finds them for this module (one site each).
chromium, browser, site, tab = (
    widget_browser.chromium,
    widget_browser.browser,
    widget_browser.site,
    widget_browser.tab,
)

NOT_ALLOWED = "This site is not allowed to use this chat."
UNAVAILABLE = "The assistant is unavailable right now."

# Records each text the newest assistant bubble shows, to see the reply grow.
OBSERVE_REPLY = (
    """() => {
  window.__krReplies = [];
  const log = """
    + SHADOW
    + """.querySelector(".kr-chat-messages");
  new MutationObserver(() => {
    const bubbles = log.querySelectorAll(".kr-chat-assistant");
    const text = bubbles.length ? bubbles[bubbles.length - 1].textContent : "";
    const seen = window.__krReplies;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(log, { childList: true, subtree: true, characterData: true });
}"""
)

MARKDOWN = (
    "Here is **bold**, *italic*, `inline <b>code</b>` and a [guide](https://example.com/guide).\n"
    "Write to [us](mailto:help@example.com) or visit <https://example.org/a>.\n"
    "\n"
    "- first item\n"
    "- second with `code`\n"
    "\n"
    "1. one\n"
    "2. two\n"
    "\n"
    "```js\n"
    "const x = '<script>window.__pwned = 1</script>';\n"
    "\n"
    "```\n"
    "\n"
    "<script>window.__pwned = 2</script>\n"
    '<img src="x" onerror="window.__pwned = 3">\n'
    "[click me](javascript:window.__pwned=4) and [again]( JavaScript:alert(1)) "
    "and [data](data:text/html,<script>alert(1)</script>)\n"
)

SCREENSHOTS = os.environ.get("KR_WIDGET_SCREENSHOTS")


async def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:  # Playwright creates the directory
        await page.screenshot(path=str(Path(SCREENSHOTS, f"{name}.png")))


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


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The model's replies to a few trigger words: Markdown with attacks in it, a failure."""
    stream = DemoProvider.stream

    async def scripted_stream(self: DemoProvider, request: ChatRequest) -> AsyncIterator[Event]:
        said = request.turns[-1].content if request.turns else ""
        if said == "markdown please":
            for start in range(0, len(MARKDOWN), 7):  # small deltas, cut anywhere
                yield TextDelta(MARKDOWN[start : start + 7])
            return
        if said == "fail please":
            yield TextDelta("Let me ")
            raise ProviderError("openai: 401 invalid api key sk-live-secret")
        async for event in stream(self, request):
            yield event

    monkeypatch.setattr(DemoProvider, "stream", scripted_stream)
    yield


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Chat refused before it starts, the way rate limits and budgets refuse."""
    converse = chat_schema._converse

    async def refusing(info: Any, input: Any) -> AsyncIterator[Any]:
        if input.message == "flood":
            raise RateLimited(7, "Too many messages.")
        if input.message == "spend":
            raise PaymentRequired("Budget spent.")
        async for event in converse(info, input):
            yield event

    monkeypatch.setattr(chat_schema, "_converse", refusing)
    yield


CONVERSATIONS = """
query($id: ID!) { organization(id: $id) { conversations { edges { node {
  messages { edges { node { role content } } } } } } } }
"""


async def conversation_contents(site: Site) -> list[list[str]]:
    result = await site.client.execute(
        CONVERSATIONS, {"id": site.organization_id}, token=site.access_token
    )
    assert result.errors == [], result.errors
    return [
        [m["node"]["content"] for m in c["node"]["messages"]["edges"]]
        for c in result.data["organization"]["conversations"]["edges"]
    ]


async def test_widget_streams_the_reply_on_an_allowed_origin(
    site: Site, tab: Tab, slow_demo: None
) -> None:
    page = tab.page
    await page.goto(site.url())
    before = await conversation_contents(site)
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
    after = await conversation_contents(site)
    new = [c for c in after if c not in before]
    assert new == [[first, f"You said: {first}", second, f"You said: {second}"]]
    # The page heard both sides of the exchange.
    messages = await events(page, "message")
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", first),
        ("assistant", f"You said: {first}"),
        ("user", second),
        ("assistant", f"You said: {second}"),
    ]
    assert messages[1]["messageId"] and messages[1]["conversationId"]


async def test_widget_is_refused_on_an_origin_the_project_does_not_allow(
    site: Site, tab: Tab
) -> None:
    page = tab.page
    await page.goto(f"{site.refused_origin}/plain")
    await page.wait_for_function("window.KindRobotsChat !== undefined")
    # Open the panel, type and send in one task: the message is queued before the server
    # can refuse the connection, so the refusal of a pending message is what is tested.
    await page.evaluate(
        """() => {
          const root = """
        + SHADOW
        + """;
          root.querySelector(".kr-chat-launcher").click();
          const input = root.querySelector(".kr-chat-input");
          input.value = "Hello?";
          input.form.requestSubmit();
        }"""
    )
    await expect(page.locator(".kr-chat-status")).to_have_text(NOT_ALLOWED)
    # The message was not sent: it is back in the (now disabled) input, not in the log.
    await expect(page.locator(".kr-chat-input")).to_have_value("Hello?")
    assert await page.locator(".kr-chat-user").count() == 0
    await expect(page.locator(".kr-chat-input")).to_be_disabled()
    await expect(page.locator(".kr-chat-send")).to_be_disabled()
    # A refusal (4403) is final: no reconnect, which would come within a second.
    await page.wait_for_timeout(1500)
    assert len(tab.sockets) == 1
    assert await page.locator(".kr-chat-assistant").count() == 0
    assert await page.locator(".kr-chat-error").count() == 0
    # The site owner learns from the console which check failed.
    assert any(
        "4403" in w and "origin not allowed" in w and site.refused_origin in w for w in tab.warnings
    ), tab.warnings


async def test_console_names_an_unknown_project_key(site: Site, tab: Tab) -> None:
    page = tab.page
    await page.goto(site.url("unknown-key"))
    await page.wait_for_function("window.KindRobotsChat !== undefined")
    await page.evaluate("KindRobotsChat.open()")
    await expect(page.locator(".kr-chat-status")).to_have_text(NOT_ALLOWED)
    assert any("4403" in w and "unknown project key" in w for w in tab.warnings), tab.warnings
    assert not any("origin not allowed" in w for w in tab.warnings)


async def test_console_names_a_refused_end_user_token(site: Site, tab: Tab) -> None:
    page = tab.page
    await page.goto(site.members_url("end-user-1", expires_in=-600))
    await page.wait_for_function("window.KindRobotsChat !== undefined")
    await page.evaluate("KindRobotsChat.open()")
    await expect(page.locator(".kr-chat-status")).to_have_text("Please sign in to use this chat.")
    await expect(page.locator(".kr-chat-input")).to_be_disabled()
    assert any("4401" in w and "token expired" in w for w in tab.warnings), tab.warnings
    # The page signs the visitor in again: the widget reconnects with the new token.
    fresh = site.signing_key.sign(claims("end-user-1"))
    await page.evaluate("(t) => KindRobotsChat.setToken(t)", fresh)
    await expect(page.locator(".kr-chat-status")).to_have_text("")
    await send(page, "Signed in now")


async def test_widget_reconnects_after_the_server_drops_it(site: Site, tab: Tab) -> None:
    page = tab.page
    await page.goto(site.url())
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


WIDGET_PARTS = (
    ".kr-chat-launcher",
    ".kr-chat-launcher svg",
    ".kr-chat-panel",
    ".kr-chat-title",
    ".kr-chat-input",
    ".kr-chat-send",
    ".kr-chat-close",
)


async def open_and_measure(page: Page, url: str) -> dict[str, dict[str, Any]]:
    await page.goto(url)
    await page.locator(".kr-chat-launcher").click()
    await expect(page.locator(".kr-chat-panel")).to_be_visible()
    return await measure(page, *WIDGET_PARTS)


@pytest.mark.parametrize("hostile", ["hostile", "strict"])
@pytest.mark.parametrize("width", [1280, 375])
async def test_host_page_css_and_csp_do_not_change_the_widget(
    site: Site, tab: Tab, hostile: str, width: int
) -> None:
    page = tab.page
    await page.set_viewport_size({"width": width, "height": 800})
    plain = await open_and_measure(page, site.url("plain"))
    themed = await open_and_measure(page, site.url(hostile))
    # The host page's theme did apply to its own elements.
    assert await page.evaluate("getComputedStyle(document.querySelector('h1')).fontSize") == "40px"
    # ... and not to one box, font or colour of the widget.
    assert themed == plain
    launcher, icon = themed[".kr-chat-launcher"], themed[".kr-chat-launcher svg"]
    assert (launcher["width"], launcher["height"]) == (56, 56)
    assert (icon["width"], icon["height"], icon["display"]) == (26, 26, "block")
    field = themed[".kr-chat-input"]
    assert float(field["fontSize"].removesuffix("px")) >= 16  # no zoom on focus in iOS Safari
    assert field["height"] == 40 and field["width"] > 150
    assert themed[".kr-chat-send"]["width"] < 120  # not `button { width: 100% }`
    assert themed[".kr-chat-title"]["fontSize"] == "15px"
    assert themed[".kr-chat-title"]["letterSpacing"] == "normal"
    assert themed[".kr-chat-input"]["direction"] == "ltr"
    panel = themed[".kr-chat-panel"]
    assert panel["x"] >= 0 and panel["x"] + panel["width"] <= width
    if width == 375:
        assert panel["width"] >= 340  # nearly the whole phone screen
    await screenshot(page, f"{hostile}-{width}")
    # And it chats.
    await send(page, f"Hello from the {hostile} page")
    await screenshot(page, f"{hostile}-{width}-chat")
    assert await page.evaluate("window.__krViolations") == []


async def test_strict_csp_admits_constructed_sheets_only(site: Site, tab: Tab) -> None:
    """Why the widget styles itself with adoptedStyleSheets: what this CSP lets through."""
    page = tab.page
    await page.goto(site.url("strict"))
    await page.wait_for_function("window.KindRobotsChat !== undefined")
    probe = await page.evaluate(
        """async (api) => {
          const host = document.createElement("div");
          document.body.appendChild(host);
          const root = host.attachShadow({ mode: "open" });
          const styled = (build) => {
            const box = document.createElement("span");
            build(box);
            root.appendChild(box);
            return box;
          };
          const sheet = new CSSStyleSheet();
          sheet.replaceSync(".a { padding-left: 7px; }");
          root.adoptedStyleSheets = [sheet];
          const adopted = styled((box) => (box.className = "a"));
          const attribute = styled((box) => box.setAttribute("style", "padding-left: 7px"));
          const cssom = styled((box) => (box.style.paddingLeft = "7px"));
          const link = document.createElement("link");
          link.rel = "stylesheet";
          link.href = api + "/widget.js";  // any sheet on our origin: refused before fetching
          const linked = await new Promise((resolve) => {
            link.onload = () => resolve("loaded");
            link.onerror = () => resolve("refused");
            root.appendChild(link);
          });
          const width = (box) => getComputedStyle(box).paddingLeft;
          return { adopted: width(adopted), attribute: width(attribute), cssom: width(cssom),
                   linked: linked };
        }""",
        site.api.base_url,
    )
    # Constructed sheets and CSSOM writes apply; a style attribute and our <link> do not.
    assert probe == {"adopted": "7px", "attribute": "0px", "cssom": "7px", "linked": "refused"}
    violations = await page.evaluate("window.__krViolations")
    assert sorted(v.split()[0] for v in violations) == ["style-src-attr", "style-src-elem"]
    tab.errors[:] = [e for e in tab.errors if "Content Security Policy" not in e]


async def test_markdown_renders_and_attacks_in_a_reply_stay_text(
    site: Site, tab: Tab, scripted: None
) -> None:
    page = tab.page
    await page.goto(site.url("strict"))  # also: CSP would report inline script or handlers
    await page.locator(".kr-chat-launcher").click()
    await page.locator(".kr-chat-input").fill("markdown please")
    await page.locator(".kr-chat-send").click()
    bubble = page.locator(".kr-chat-assistant").last
    await expect(bubble).to_contain_text("and data")
    await expect(bubble).not_to_have_class(re.compile("kr-chat-busy"))
    shape = await page.evaluate(
        """() => {
          const bubble = [..."""
        + SHADOW
        + """.querySelectorAll(".kr-chat-assistant")].pop();
          const all = (s) => [...bubble.querySelectorAll(s)];
          return {
            strong: all("strong").map((n) => n.textContent),
            em: all("em").map((n) => n.textContent),
            code: all("p code, li code").map((n) => n.textContent),
            pre: all("pre code").map((n) => n.textContent),
            ul: all("ul > li").map((n) => n.textContent),
            ol: all("ol > li").map((n) => n.textContent),
            links: all("a").map((a) => [a.textContent, a.href, a.rel, a.target]),
            elements: [...new Set(all("*").map((n) => n.localName))].sort(),
            text: bubble.textContent,
            pwned: window.__pwned === undefined ? null : window.__pwned,
          };
        }"""
    )
    assert shape["strong"] == ["bold"]
    assert shape["em"] == ["italic"]
    assert shape["code"] == ["inline <b>code</b>", "code"]
    assert shape["pre"] == ["const x = '<script>window.__pwned = 1</script>';\n"]
    assert shape["ul"] == ["first item", "second with code"]
    assert shape["ol"] == ["one", "two"]
    safe = ["noopener noreferrer", "_blank"]
    assert shape["links"] == [
        ["guide", "https://example.com/guide", *safe],
        ["us", "mailto:help@example.com", *safe],
        ["https://example.org/a", "https://example.org/a", *safe],
    ]
    # Only the elements Markdown makes: no script, img, or anything else from the reply.
    assert shape["elements"] == ["a", "br", "code", "em", "li", "ol", "p", "pre", "strong", "ul"]
    assert "<script>window.__pwned = 2</script>" in shape["text"]
    assert '<img src="x" onerror="window.__pwned = 3">' in shape["text"]
    assert "click me and again and data" in shape["text"]  # the words, not links
    assert shape["pwned"] is None
    await page.wait_for_timeout(200)  # an onerror handler would have run by now
    assert await page.evaluate("window.__pwned === undefined")
    assert await page.evaluate("window.__krViolations") == []
    await screenshot(page, "markdown")


async def test_options_from_data_attributes(site: Site, tab: Tab) -> None:
    page = tab.page
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(site.url("options"))
    # data-open: the panel is open without a click, and the input has the focus.
    await expect(page.locator(".kr-chat-panel")).to_be_visible()
    await expect(page.locator(".kr-chat-input")).to_be_focused()
    await expect(page.locator(".kr-chat-title")).to_have_text("Robot help")
    await expect(page.locator(".kr-chat-panel")).to_have_attribute("aria-label", "Robot help")
    await expect(page.locator(".kr-chat-greeting")).to_have_text("Hi! Ask me anything.")
    assert await page.locator(".kr-chat-greeting strong").inner_text() == "anything"
    await expect(page.locator(".kr-chat-send")).to_have_text("Envoyer")
    await expect(page.locator(".kr-chat-input")).to_have_attribute("placeholder", "Votre message")
    boxes = await measure(page, ".kr-chat-launcher", ".kr-chat-panel", ".kr-chat-header")
    assert boxes[".kr-chat-launcher"]["x"] == 20  # bottom-left
    assert boxes[".kr-chat-panel"]["x"] == 20
    assert boxes[".kr-chat-launcher"]["background"] == "rgb(11, 114, 133)"
    assert boxes[".kr-chat-header"]["color"] == "rgb(255, 255, 255)"  # readable on the accent
    await screenshot(page, "options")
    await send(page, "Bonjour")


async def test_invalid_options_are_refused_with_a_warning(site: Site, tab: Tab) -> None:
    page = tab.page
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(site.url("bad-options"))
    await page.locator(".kr-chat-launcher").click()
    boxes = await measure(page, ".kr-chat-launcher", ".kr-chat-input")
    assert boxes[".kr-chat-launcher"]["background"] == "rgb(59, 91, 219)"  # the default
    assert boxes[".kr-chat-launcher"]["x"] == 1280 - 20 - 56  # bottom-right, the default
    assert boxes[".kr-chat-input"]["display"] == "block"
    assert any("accent is not a CSS colour" in w for w in tab.warnings), tab.warnings
    assert any("position must be one of" in w for w in tab.warnings), tab.warnings


async def test_javascript_api_and_events(site: Site, tab: Tab) -> None:
    page = tab.page
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(site.url())
    await page.wait_for_function("window.__krEvents.some((e) => e.name === 'ready')")
    await page.evaluate(
        """KindRobotsChat.init({
          title: "Aide", greeting: "Bonjour !", accent: "#ffd43b", position: "bottom-left",
          strings: { send: "Envoyer", closeChat: "Fermer", openChat: "Ouvrir le chat",
                     inputLabel: "Votre message" },
        })"""
    )
    launcher = page.locator(".kr-chat-launcher")
    await expect(launcher).to_have_attribute("aria-label", "Ouvrir le chat: Aide")
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    await page.evaluate("KindRobotsChat.open()")
    await expect(page.locator(".kr-chat-panel")).to_be_visible()
    await expect(launcher).to_have_attribute("aria-expanded", "true")
    await expect(page.locator(".kr-chat-title")).to_have_text("Aide")
    await expect(page.locator(".kr-chat-greeting")).to_have_text("Bonjour !")
    await expect(page.locator(".kr-chat-close")).to_have_attribute("aria-label", "Fermer")
    await expect(page.get_by_label("Votre message")).to_be_focused()
    boxes = await measure(page, ".kr-chat-launcher", ".kr-chat-header")
    assert boxes[".kr-chat-launcher"]["x"] == 20
    assert boxes[".kr-chat-launcher"]["background"] == "rgb(255, 212, 59)"
    assert boxes[".kr-chat-header"]["color"] == "rgb(31, 35, 48)"  # dark text on yellow
    await send(page, "Hello there")
    await expect(page.locator(".kr-chat-messages")).to_have_attribute("role", "log")
    await expect(page.locator(".kr-chat-messages")).to_have_attribute("aria-live", "polite")

    # Escape closes and gives the focus back to the launcher.
    await page.locator(".kr-chat-input").press("Escape")
    await expect(page.locator(".kr-chat-panel")).to_be_hidden()
    await expect(launcher).to_be_focused()
    await page.evaluate("KindRobotsChat.open()")
    await page.evaluate("KindRobotsChat.close()")
    await expect(page.locator(".kr-chat-panel")).to_be_hidden()
    names = await page.evaluate("window.__krEvents.map((e) => e.name)")
    assert [n for n in names if n in ("open", "close")] == ["open", "close", "open", "close"]

    await page.evaluate("KindRobotsChat.reset()")
    assert await page.locator(".kr-chat-user").count() == 0
    assert await page.locator(".kr-chat-assistant").count() == 0
    await expect(page.locator(".kr-chat-greeting")).to_have_text("Bonjour !")
    assert len(await events(page, "reset")) == 1


async def test_a_refused_send_keeps_the_draft_and_says_why(
    site: Site, tab: Tab, refusals: None, scripted: None
) -> None:
    page = tab.page
    await page.goto(site.url())
    await page.locator(".kr-chat-launcher").click()
    field = page.locator(".kr-chat-input")
    errors = page.locator(".kr-chat-error")

    await field.fill("flood")
    await page.locator(".kr-chat-send").click()
    await expect(errors.last).to_have_text(
        "You're sending messages too quickly \u2014 try again in 7 seconds."
    )
    await expect(field).to_have_value("flood")  # the draft is still there to send again
    assert await page.locator(".kr-chat-user").count() == 0
    await expect(page.locator(".kr-chat-send")).to_be_enabled()

    await field.fill("spend")
    await page.locator(".kr-chat-send").click()
    await expect(errors.last).to_have_text(
        "This chat has used up its allowance. Please try again later."
    )
    await expect(field).to_have_value("spend")

    # A provider failure mid-reply: our words, never the provider's.
    await field.fill("fail please")
    await page.locator(".kr-chat-send").click()
    await expect(errors.last).to_have_text(UNAVAILABLE)
    await expect(page.locator(".kr-chat-send")).to_be_enabled()
    content = await page.locator(".kr-chat-messages").inner_text()
    assert "sk-live" not in content and "401" not in content
    await expect(field).to_have_value("")  # that message was accepted: it is in the log
    await expect(page.locator(".kr-chat-user").last).to_have_text("fail please")

    codes = [e["code"] for e in await events(page, "error")]
    assert codes == ["RATE_LIMITED", "PAYMENT_REQUIRED", "UPSTREAM_ERROR"]

    # The network is gone: the message comes back to the input.
    await page.context.set_offline(True)
    for websocket in [*site.runner.app[WEBSOCKETS]]:
        await websocket.close(code=1012, message=b"Service restart")
    await field.fill("Are you there?")
    await page.locator(".kr-chat-send").click()
    await expect(errors.last).to_have_text(
        "The connection was interrupted. Please send your message again."
    )
    await expect(field).to_have_value("Are you there?")
    await page.context.set_offline(False)
    await send(page, "Are you there?")
    tab.errors[:] = [e for e in tab.errors if "WebSocket" not in e]  # Chromium's offline notes
