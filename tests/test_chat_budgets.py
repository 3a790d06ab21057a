"""Visitors cannot burn a customer's credits (issue 13, item 6).

A project's daily and monthly token budgets (the plan's, or lower ones the customer
set) and its per-conversation cap refuse chat before any upstream request: the fake
LLM counts what reaches it. The owner hears of a spent budget once per period, the
budget comes back with the next period (the server's clock is moved, not waited
for), and the dashboard's usage matches what was said and refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from kindrobots.context import RequestContext
from kindrobots.db.models import ProjectUsage, SecurityEvent
from kindrobots.ids import from_global_id
from kindrobots.resolvers.usage import BUDGET_EXHAUSTED
from tests.chat_helpers import widget_socket
from tests.conftest import Account, Client, RunningServer, set_tier, sign_up
from tests.fake_llm import FakeLLM, Setup, deploy_on_fake, openai_text, stream
from tests.test_rate_limits import frame_codes, ws_operation
from tests.test_widget_conversations import CHAT_ONLY, SEND, widget_headers

API_KEY = "fakekey-budget-Qx81aZ"
UPDATE = """
mutation($input: UpdateProjectInput!) {
  updateProject(input: $input) { dailyTokenBudget monthlyTokenBudget conversationTokenCap }
}
"""
USAGE = """
query($id: ID!, $days: Int!) {
  node(id: $id) {
    ... on Project { usage(days: $days) { day messages inputTokens outputTokens refusals } }
  }
}
"""
PLANS = "{ plans { tier dailyTokenBudget monthlyTokenBudget monthlyTokens } }"
# Late in today's UTC day: what is left of it is what a daily refusal asks to wait. The
# server's clock stays within a day of the real one: sessions and tokens still hold.
EVENING = datetime.now(UTC).replace(hour=22, minute=0, second=0, microsecond=0)
NEXT_MONTH = (EVENING.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0)


class Clock:
    """The server's clock (``RequestContext.now``): real until a test sets it (sign-ups
    stay on real time, since the access tokens they issue are checked against it)."""

    def __init__(self) -> None:
        self.now: datetime | None = None

    def read(self) -> datetime:
        return self.now or datetime.now(UTC)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    clock = Clock()
    monkeypatch.setattr(RequestContext, "now", lambda _self: clock.read())
    yield clock


async def shop_on_fake(
    server: RunningServer, http: aiohttp.ClientSession, fake: FakeLLM, account: Account
) -> Setup:
    return await deploy_on_fake(
        server, http, fake, account, provider="OPENAI", model="gpt-4o-mini", api_key=API_KEY
    )


async def set_budgets(setup: Setup, **budgets: int | None) -> dict[str, Any]:
    response = await setup.client.execute(
        UPDATE,
        {"input": {"id": setup.deployed.project_id, **budgets}},
        token=setup.account.access_token,
    )
    assert response.errors == [], response.errors
    return dict(response.data["updateProject"])


async def say(setup: Setup, message: str, token: str | None = None) -> Any:
    return await setup.client.execute(
        SEND,
        {"input": {"message": message, "conversationToken": token}},
        headers=widget_headers(setup.deployed.project_key),
    )


async def budget_events(server: RunningServer, project_id: str) -> list[dict[str, Any]]:
    async with server.services.read() as session:
        rows = (
            await session.scalars(
                select(SecurityEvent).where(SecurityEvent.event == BUDGET_EXHAUSTED)
            )
        ).all()
    raw = str(from_global_id(project_id, "Project"))
    return [row.details for row in rows if row.details.get("projectId") == raw]


async def test_a_spent_daily_budget_refuses_without_an_upstream_call_until_tomorrow(
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    clock: Clock,
) -> None:
    setup = await shop_on_fake(llm_server, http, fake, account)
    clock.now = EVENING
    assert await set_budgets(setup, dailyTokenBudget=30) == {
        "dailyTokenBudget": 30,
        "monthlyTokenBudget": None,
        "conversationTokenCap": None,
    }
    setup.scenario.queue(
        stream(openai_text(["Hello!"], usage=(20, 15))),
        stream(openai_text(["Good morning!"], usage=(7, 3))),
    )
    first = await say(setup, "Hi")
    assert first.errors == [], first.errors
    assert len(setup.scenario.requests) == 1

    # 35 tokens spent of 30: every further message is refused, over HTTP and the widget.
    for _ in range(3):
        refused = await say(setup, "Hi again", first.data["sendMessage"]["conversationToken"])
        assert refused.status == 429 and refused.codes == ["RATE_LIMITED"], refused.body
        (error,) = refused.errors
        assert error["extensions"]["retryAfter"] == 2 * 3600  # until midnight UTC
        assert error["extensions"]["limit"] == "dailyTokenBudget"
        assert "budget for today" in error["message"]
    async with widget_socket(http, llm_server, setup.deployed.project_key) as ws:
        frame = await ws_operation(ws, "c", CHAT_ONLY, {"input": {"message": "Anyone?"}})
    assert frame_codes(frame) == ["RATE_LIMITED"], frame
    assert len(setup.scenario.requests) == 1  # nothing reached the provider

    # The owner was told once, not per refused message.
    (event,) = await budget_events(llm_server, setup.deployed.project_id)
    assert event["budget"] == "dailyTokenBudget"
    assert event["period"] == f"day:{EVENING.date().isoformat()}"
    assert (event["limit"], event["used"]) == (30, 35)
    assert event["fromPlan"] is False

    # A new day, a new budget.
    clock.now = EVENING + timedelta(hours=3)
    again = await say(setup, "Good morning")
    assert again.errors == [], again.errors
    assert again.data["sendMessage"]["content"] == "Good morning!"
    assert len(setup.scenario.requests) == 2


async def test_the_plans_budget_asks_for_an_upgrade_and_is_told_once_a_month(
    llm_server: RunningServer,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    clock: Clock,
) -> None:
    owner = await sign_up(Client(http, llm_server.base_url))
    setup = await shop_on_fake(llm_server, http, fake, owner)
    clock.now = EVENING
    plans = {p["tier"]: p for p in (await setup.client.execute(PLANS)).data["plans"]}
    starter = plans["STARTER"]
    assert starter["monthlyTokenBudget"] == starter["monthlyTokens"] == 200_000
    assert starter["dailyTokenBudget"] == 20_000
    assert plans["ENTERPRISE"]["dailyTokenBudget"] is None

    # The month's allowance was spent earlier this month (on an earlier day).
    project = from_global_id(setup.deployed.project_id, "Project")
    async with llm_server.services.write() as session:
        session.add(
            ProjectUsage(
                project_id=project,
                day=EVENING.date().replace(day=1),
                organization_id=from_global_id(owner.organization_id, "Organization"),
                messages=500,
                input_tokens=150_000,
                output_tokens=50_000,
                refusals=0,
            )
        )
    for _ in range(2):
        refused = await say(setup, "Hello?")
        assert refused.codes == ["PAYMENT_REQUIRED"], refused.body
        (error,) = refused.errors
        assert error["extensions"]["limit"] == "monthlyTokenBudget"
        until_next_month = int((NEXT_MONTH - EVENING).total_seconds())
        assert error["extensions"]["retryAfter"] == until_next_month
        assert "upgrade" in error["message"]
    assert setup.scenario.requests == []
    (event,) = await budget_events(llm_server, setup.deployed.project_id)
    assert (event["period"], event["fromPlan"]) == (f"month:{EVENING:%Y-%m}", True)

    # An upgrade raises the budget at once.
    await set_tier(llm_server, owner.organization_id, "PROFESSIONAL")
    setup.scenario.queue(stream(openai_text(["Welcome back."], usage=(5, 2))))
    upgraded = await say(setup, "Hello?")
    assert upgraded.errors == [], upgraded.errors
    assert len(setup.scenario.requests) == 1


async def test_a_conversation_at_its_cap_ends_and_a_new_one_starts(
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    clock: Clock,
) -> None:
    setup = await shop_on_fake(llm_server, http, fake, account)
    clock.now = EVENING
    await set_budgets(setup, conversationTokenCap=40)
    setup.scenario.queue(
        stream(openai_text(["One."], usage=(20, 5))),
        stream(openai_text(["Two."], usage=(15, 5))),
        stream(openai_text(["Fresh start."], usage=(5, 2))),
    )
    first = await say(setup, "First")
    token = first.data["sendMessage"]["conversationToken"]
    second = await say(setup, "Second", token)  # 25 of 40 spent: still allowed
    assert second.errors == [], second.errors
    refused = await say(setup, "Third", token)  # 45 of 40
    assert refused.codes == ["RATE_LIMITED"], refused.body
    (error,) = refused.errors
    assert error["extensions"]["limit"] == "conversationTokenCap"
    assert "retryAfter" not in error["extensions"]  # waiting does not help
    assert "new conversation" in error["message"]
    assert len(setup.scenario.requests) == 2
    assert await budget_events(llm_server, setup.deployed.project_id) == []

    fresh = await say(setup, "Hello")
    assert fresh.errors == [], fresh.errors
    assert fresh.data["sendMessage"]["content"] == "Fresh start."


async def test_usage_per_day_matches_what_was_said_and_refused(
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    clock: Clock,
) -> None:
    setup = await shop_on_fake(llm_server, http, fake, account)
    clock.now = EVENING
    await set_budgets(setup, dailyTokenBudget=100)
    setup.scenario.queue(
        stream(openai_text(["Yesterday."], usage=(11, 4))),
        stream(openai_text(["Today one."], usage=(30, 10))),
        stream(openai_text(["Today two."], usage=(50, 20))),
    )
    clock.now = EVENING - timedelta(days=1)
    assert (await say(setup, "yesterday")).errors == []
    clock.now = EVENING
    assert (await say(setup, "one")).errors == []
    assert (await say(setup, "two")).errors == []  # 40 of 100 before it: allowed
    for _ in range(2):  # 110 of 100
        assert (await say(setup, "three")).codes == ["RATE_LIMITED"]

    usage = await setup.client.execute(
        USAGE, {"id": setup.deployed.project_id, "days": 3}, token=account.access_token
    )
    assert usage.errors == [], usage.errors
    day = [(EVENING.date() - timedelta(days=back)).isoformat() for back in (2, 1, 0)]
    assert usage.data["node"]["usage"] == [
        {"day": day[0], "messages": 0, "inputTokens": 0, "outputTokens": 0, "refusals": 0},
        {"day": day[1], "messages": 1, "inputTokens": 11, "outputTokens": 4, "refusals": 0},
        {"day": day[2], "messages": 2, "inputTokens": 80, "outputTokens": 30, "refusals": 2},
    ]
    # Organization-scoped: another organization's member sees nothing of it.
    clock.now = None
    outsider = await sign_up(setup.client)
    theirs = await setup.client.execute(
        USAGE, {"id": setup.deployed.project_id, "days": 3}, token=outsider.access_token
    )
    assert theirs.data == {"node": None}
    bad = await setup.client.execute(
        USAGE, {"id": setup.deployed.project_id, "days": 0}, token=account.access_token
    )
    assert bad.codes == ["BAD_USER_INPUT"]


async def test_a_budget_above_the_plans_is_refused(
    llm_server: RunningServer, account: Account, http: aiohttp.ClientSession, fake: FakeLLM
) -> None:
    setup = await shop_on_fake(llm_server, http, fake, account)
    for field, value in (
        ("dailyTokenBudget", 20_001),
        ("monthlyTokenBudget", 200_001),
        ("dailyTokenBudget", -1),
        ("conversationTokenCap", 0),
    ):
        refused = await setup.client.execute(
            UPDATE,
            {"input": {"id": setup.deployed.project_id, field: value}},
            token=account.access_token,
        )
        assert refused.codes == ["BAD_USER_INPUT"], (field, refused.body)
        assert refused.errors[0]["extensions"]["field"] == field
    assert await set_budgets(setup, dailyTokenBudget=20_000, monthlyTokenBudget=0) == {
        "dailyTokenBudget": 20_000,
        "monthlyTokenBudget": 0,
        "conversationTokenCap": None,
    }
    # null clears back to the plan's.
    assert await set_budgets(setup, monthlyTokenBudget=None) == {
        "dailyTokenBudget": 20_000,
        "monthlyTokenBudget": None,
        "conversationTokenCap": None,
    }
