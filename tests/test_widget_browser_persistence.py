"""Conversations that survive a reload, reset(), and ratings, in a real browser.

The widget keeps ``{conversationToken, conversationId}`` in ``localStorage`` under
``kindrobots:<projectKey>`` and loads the history with ``widgetConversation``.
Each test gets a browser context of its own: a new visitor with empty storage.
"""

from __future__ import annotations

import json
from typing import Any

from playwright.async_api import Page, expect

from tests import widget_browser
from tests.widget_browser import Site, Tab, events, send

# The shared fixtures, bound here so that pytest finds them for this module (one site each).
chromium, browser, site, tab = (
    widget_browser.chromium,
    widget_browser.browser,
    widget_browser.site,
    widget_browser.tab,
)

CONVERSATIONS = """
query($id: ID!) { organization(id: $id) { conversations { edges { node { id
  messages { edges { node { id role content rating } } } } } } } }
"""

FEEDBACK = """
query($id: ID!) { organization(id: $id) { agents { edges { node { feedback { up down } } } } } }
"""

# Before any page script: this browser's storage refuses, as in some private modes.
NO_STORAGE = """
Object.defineProperty(window, "localStorage", {
  get() { throw new DOMException("The operation is insecure.", "SecurityError"); },
});
"""


async def conversations(site: Site) -> dict[str, list[dict[str, Any]]]:
    """Every conversation of the site's organization: id -> its messages, oldest first."""
    result = await site.client.execute(
        CONVERSATIONS, {"id": site.organization_id}, token=site.access_token
    )
    assert result.errors == [], result.errors
    return {
        c["node"]["id"]: [m["node"] for m in c["node"]["messages"]["edges"]]
        for c in result.data["organization"]["conversations"]["edges"]
    }


async def stored(page: Page, site: Site, project_key: str | None = None) -> Any:
    key = f"kindrobots:{project_key or site.project_key}"
    raw = await page.evaluate("(key) => localStorage.getItem(key)", key)
    return json.loads(raw) if raw else None


async def open_chat(page: Page, site: Site) -> None:
    await page.goto(site.url())
    await page.locator(".kr-chat-launcher").click()
    await expect(page.locator(".kr-chat-panel")).to_be_visible()


async def bubbles(page: Page) -> list[str]:
    texts: list[str] = await page.locator(".kr-chat-user, .kr-chat-assistant").all_inner_texts()
    return texts


async def test_a_reload_resumes_the_conversation(site: Site, tab: Tab) -> None:
    page = tab.page
    before = await conversations(site)
    await open_chat(page, site)
    await send(page, "Where is my order?")
    saved = await stored(page, site)
    assert saved["conversationToken"].startswith("ct_")
    assert saved["conversationId"]

    await page.reload()
    await page.locator(".kr-chat-launcher").click()
    await expect(page.locator(".kr-chat-assistant")).to_have_count(1)
    assert await bubbles(page) == ["Where is my order?", "You said: Where is my order?"]
    await send(page, "And the refund?")

    new = {k: v for k, v in (await conversations(site)).items() if k not in before}
    assert list(new) == [saved["conversationId"]]  # one conversation, continued
    assert [m["content"] for m in new[saved["conversationId"]]] == [
        "Where is my order?",
        "You said: Where is my order?",
        "And the refund?",
        "You said: And the refund?",
    ]


async def test_reset_starts_a_new_conversation(site: Site, tab: Tab) -> None:
    page = tab.page
    await open_chat(page, site)
    await send(page, "Old question")
    first = await stored(page, site)

    await page.evaluate("KindRobotsChat.reset()")
    assert await bubbles(page) == []
    assert len(await events(page, "reset")) == 1
    await send(page, "New question")
    second = await stored(page, site)
    assert second["conversationId"] != first["conversationId"]
    assert second["conversationToken"] != first["conversationToken"]

    await page.reload()
    await page.locator(".kr-chat-launcher").click()
    await expect(page.locator(".kr-chat-assistant")).to_have_count(1)
    assert await bubbles(page) == ["New question", "You said: New question"]

    # reset() right before a reload: nothing comes back.
    await page.evaluate("KindRobotsChat.reset()")
    await page.reload()
    await page.locator(".kr-chat-launcher").click()
    await send(page, "Fresh start")
    assert await bubbles(page) == ["Fresh start", "You said: Fresh start"]


async def test_ratings_reach_the_dashboard_and_survive_a_reload(site: Site, tab: Tab) -> None:
    page = tab.page
    await open_chat(page, site)
    await send(page, "Rate me")
    up, down = page.locator(".kr-chat-rate-up"), page.locator(".kr-chat-rate-down")
    await expect(up).to_have_attribute("aria-label", "Helpful")
    await expect(up).to_have_attribute("aria-pressed", "false")
    await up.click()
    await expect(up).to_have_attribute("aria-pressed", "true")
    await expect(down).to_have_attribute("aria-pressed", "false")
    await page.wait_for_function("window.__krEvents.some((e) => e.name === 'rate')")
    conversation = (await stored(page, site))["conversationId"]
    messages = (await conversations(site))[conversation]
    assert [m["rating"] for m in messages] == [None, "UP"]

    await page.reload()
    await page.locator(".kr-chat-launcher").click()
    await expect(up).to_have_attribute("aria-pressed", "true")  # read back from the server
    await down.click()  # changes the rating
    await expect(down).to_have_attribute("aria-pressed", "true")
    await expect(up).to_have_attribute("aria-pressed", "false")
    await page.wait_for_function("window.__krEvents.filter((e) => e.name === 'rate').length === 1")
    messages = (await conversations(site))[conversation]
    assert [m["rating"] for m in messages] == [None, "DOWN"]
    feedback = await site.client.execute(
        FEEDBACK, {"id": site.organization_id}, token=site.access_token
    )
    assert feedback.errors == [], feedback.errors
    counts = [e["node"]["feedback"] for e in feedback.data["organization"]["agents"]["edges"]]
    assert sorted(c["down"] for c in counts) == [0, 1]  # this site's agent, not the members'
    assert all(c["up"] == 0 for c in counts)

    await down.click()  # pressed again: the rating is taken back
    await expect(down).to_have_attribute("aria-pressed", "false")
    await page.wait_for_function("window.__krEvents.filter((e) => e.name === 'rate').length === 2")
    assert [m["rating"] for m in (await conversations(site))[conversation]] == [None, None]


async def test_another_visitors_conversation_stays_closed(site: Site, tab: Tab) -> None:
    page = tab.page
    await open_chat(page, site)
    await send(page, "My secret order")
    theirs = await stored(page, site)

    key = f"kindrobots:{site.project_key}"
    plant = "([key, value]) => localStorage.setItem(key, JSON.stringify(value))"
    other = await page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        visitor = await other.new_page()
        await visitor.goto(site.url())
        # A second visitor who got hold of the conversation ID, but not its token.
        await visitor.evaluate(
            plant, [key, {"conversationToken": None, "conversationId": theirs["conversationId"]}]
        )
        await visitor.reload()
        await visitor.locator(".kr-chat-launcher").click()
        field = visitor.locator(".kr-chat-input")
        await field.fill("Show me theirs")
        await visitor.locator(".kr-chat-send").click()
        # Refused (NOT_FOUND): the draft comes back and the stale ID is forgotten.
        await expect(visitor.locator(".kr-chat-error")).to_have_text(
            "This conversation is no longer available. Please send your message again."
        )
        await expect(field).to_have_value("Show me theirs")
        assert await stored(visitor, site) is None
        await send(visitor, "Show me theirs")  # a conversation of its own
        mine = await stored(visitor, site)
        assert mine["conversationId"] != theirs["conversationId"]

        # A guessed token: no history, and the visitor starts afresh.
        await visitor.evaluate(
            plant, [key, {"conversationToken": "ct_" + "A" * 43, "conversationId": None}]
        )
        await visitor.reload()
        await visitor.locator(".kr-chat-launcher").click()
        await visitor.wait_for_function("(key) => localStorage.getItem(key) === null", arg=key)
        assert await visitor.locator(".kr-chat-user, .kr-chat-assistant").count() == 0
        assert "secret" not in await visitor.locator(".kr-chat-messages").inner_text()
    finally:
        await other.close()
    messages = (await conversations(site))[theirs["conversationId"]]
    assert [m["content"] for m in messages] == ["My secret order", "You said: My secret order"]


async def test_without_storage_the_widget_still_chats(site: Site, tab: Tab) -> None:
    page = tab.page
    await page.context.add_init_script(NO_STORAGE)
    await open_chat(page, site)
    await send(page, "Private mode")
    await send(page, "Still here")  # the conversation continues in memory
    await page.reload()
    await page.locator(".kr-chat-launcher").click()
    assert await bubbles(page) == []  # nothing was kept, and nothing broke
    await send(page, "Hello again")


async def test_an_end_users_conversation_follows_them_to_another_device(
    site: Site, tab: Tab
) -> None:
    page = tab.page
    await page.goto(site.members_url("member-7"))
    await page.locator(".kr-chat-launcher").click()
    await send(page, "Member question")
    laptop = await stored(page, site, site.members_key)

    # The same end user on a new device, with empty storage: the subject binds it.
    browser = page.context.browser
    assert browser is not None
    phone = await browser.new_context()
    other = await browser.new_context()
    try:
        second = await phone.new_page()
        await second.goto(site.members_url("member-7"))
        await second.locator(".kr-chat-launcher").click()
        await expect(second.locator(".kr-chat-assistant")).to_have_count(1)
        assert await bubbles(second) == ["Member question", "You said: Member question"]
        await send(second, "From my phone")
        assert (await stored(second, site, site.members_key))["conversationId"] == (
            laptop["conversationId"]
        )

        # Another end user of the same site sees none of it.
        third = await other.new_page()
        await third.goto(site.members_url("member-8"))
        await third.locator(".kr-chat-launcher").click()
        await send(third, "Who am I?")
        assert await bubbles(third) == ["Who am I?", "You said: Who am I?"]
        theirs = await stored(third, site, site.members_key)
        assert theirs["conversationId"] != laptop["conversationId"]
    finally:
        await phone.close()
        await other.close()
    messages = (await conversations(site))[laptop["conversationId"]]
    assert [m["content"] for m in messages] == [
        "Member question",
        "You said: Member question",
        "From my phone",
        "You said: From my phone",
    ]
