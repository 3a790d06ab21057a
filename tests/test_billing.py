"""Billing with Stripe: checkout and portal through the real SDK against a fake Stripe API,
signed webhooks, tier enforcement, reconciliation, and billing off. On both databases."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from kindrobots.auth.principals import CLI
from kindrobots.billing.plans import Tier, effective_tier
from kindrobots.billing.stripe_client import SubscriptionState
from kindrobots.cli import billing_sync
from kindrobots.db.models import AuditEvent, BillingAccount, Organization, StripeEvent
from kindrobots.errors import PaymentRequired
from kindrobots.ids import from_global_id
from kindrobots.resolvers import billing, organizations
from tests.chat_helpers import deploy
from tests.conftest import (
    REDIS_URL,
    Account,
    Client,
    RunningServer,
    backend_server,
    make_settings,
    require_service,
    scratch_database,
    set_tier,
    sign_up,
    start_server,
    unique_email,
)
from tests.fake_stripe import FakeStripe, event, fake_stripe, sign
from tests.org_helpers import add_member, invite, member_roles
from tests.test_rate_limits import SEND, ForwardedClient, fresh_ip

SECRET_KEY = f"sk_test_{secrets.token_hex(16)}"
WEBHOOK_SECRET = f"whsec_{secrets.token_hex(16)}"
PRO, ENT = "price_pro_test", "price_ent_test"

CHECKOUT = """
mutation($input: CheckoutInput!) { createCheckoutSession(input: $input) { url } }
"""
PORTAL = """
mutation($id: ID!, $url: String!) {
  createBillingPortalSession(organizationId: $id, returnUrl: $url) { url }
}
"""
BILLING = """
query($id: ID!) {
  organization(id: $id) {
    tier
    billing {
      tier status currentPeriodEnd cancelAtPeriodEnd trialEnd graceEndsAt
      seatsUsed seatLimit tokensUsed tokenAllowance
    }
  }
}
"""


@dataclass
class Billed:
    server: RunningServer
    stripe: FakeStripe
    client: Client
    http: aiohttp.ClientSession
    logs: list[str]
    bodies: list[str]

    async def post_event(self, payload: bytes, signature: str | None) -> int:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        async with self.http.post(
            f"{self.server.base_url}/webhooks/stripe", data=payload, headers=headers
        ) as response:
            self.bodies.append(await response.text())
            return response.status

    async def deliver(self, payload: bytes) -> int:
        return await self.post_event(payload, sign(payload, WEBHOOK_SECRET))


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(self.format(record))


@pytest_asyncio.fixture(scope="module")
async def billed(
    backend: str, tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession
) -> AsyncIterator[Billed]:
    logs: list[str] = []
    handler = _Collect(logs)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        async with (
            fake_stripe() as stripe,
            backend_server(
                tmp_path_factory.mktemp(f"billing-{backend}"),
                backend,
                stripe_secret_key=SECRET_KEY,
                stripe_webhook_secret=WEBHOOK_SECRET,
                stripe_api_base=stripe.url,
                stripe_price_professional=PRO,
                stripe_price_enterprise=ENT,
            ) as server,
        ):
            yield Billed(server, stripe, Client(http, server.base_url), http, logs, [])
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


async def _customer_of(server: RunningServer, organization_id: str) -> str | None:
    async with server.services.read() as session:
        account = await session.get(BillingAccount, from_global_id(organization_id, "Organization"))
    return account.stripe_customer_id if account else None


async def _tier(billed: Billed, owner: Account) -> dict[str, object]:
    response = await billed.client.execute(
        BILLING, {"id": owner.organization_id}, token=owner.access_token
    )
    assert response.errors == [], response.errors
    organization = response.data["organization"]
    return {"tier": organization["tier"], **organization["billing"]}


async def _checkout(billed: Billed, owner: Account, tier: str = "PROFESSIONAL") -> str:
    response = await billed.client.execute(
        CHECKOUT,
        {
            "input": {
                "organizationId": owner.organization_id,
                "tier": tier,
                "successUrl": "http://localhost:3000/billing/done?session={CHECKOUT_SESSION_ID}",
                "cancelUrl": "http://localhost:8000/billing",
            }
        },
        token=owner.access_token,
    )
    assert response.errors == [], response.errors
    return str(response.data["createCheckoutSession"]["url"])


async def _subscribed(billed: Billed, price: str = PRO, status: str = "active") -> Account:
    """An owner whose organization checked out and whose subscription Stripe now has."""
    owner = await sign_up(billed.client)
    await _checkout(billed, owner)
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    subscription = billed.stripe.subscribe(customer, price, status)
    payload = event(
        "customer.subscription.updated",
        {"id": subscription, "object": "subscription", "customer": customer, "status": status},
    )
    assert await billed.deliver(payload) == 200
    return owner


async def _stripe_events(server: RunningServer, event_id: str) -> int:
    async with server.services.read() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(StripeEvent).where(StripeEvent.id == event_id)
            )
            or 0
        )


async def _billing_audits(server: RunningServer, organization_id: str) -> list[AuditEvent]:
    raw = from_global_id(organization_id, "Organization")
    async with server.services.read() as session:
        rows = await session.scalars(
            select(AuditEvent)
            .where(AuditEvent.organization_id == raw, AuditEvent.action.like("billing.%"))
            .order_by(AuditEvent.created_at)
        )
        return list(rows.all())


# Checkout and portal


async def test_checkout_makes_one_customer_with_an_idempotency_key(billed: Billed) -> None:
    owner = await sign_up(billed.client)
    urls = await asyncio.gather(_checkout(billed, owner), _checkout(billed, owner))
    assert all(url.startswith("https://checkout.stripe.test/") for url in urls)

    raw = str(from_global_id(owner.organization_id, "Organization"))
    creates = [
        call
        for call in billed.stripe.calls("/v1/customers")
        if call.form.get("metadata[organization_id]") == raw
    ]
    assert creates and {call.idempotency_key for call in creates} == {f"kr-customer-{raw}"}
    assert all(call.authorization == f"Bearer {SECRET_KEY}" for call in creates)
    customer = await _customer_of(billed.server, owner.organization_id)
    ours = [c for c in billed.stripe.customers.values() if c["metadata"]["organization_id"] == raw]
    assert [c["id"] for c in ours] == [customer]

    sessions = [
        call
        for call in billed.stripe.calls("/v1/checkout/sessions")
        if call.form.get("customer") == customer
    ]
    assert len(sessions) == 2
    assert all(call.idempotency_key for call in sessions)
    assert {call.form["line_items[0][price]"] for call in sessions} == {PRO}
    assert {call.form["mode"] for call in sessions} == {"subscription"}
    assert {call.form["client_reference_id"] for call in sessions} == {raw}

    # The next checkout reuses the stored customer: no further customer call.
    before = len(billed.stripe.calls("/v1/customers"))
    await _checkout(billed, owner, "ENTERPRISE")
    assert len(billed.stripe.calls("/v1/customers")) == before


async def test_portal_returns_the_session_url(billed: Billed) -> None:
    owner = await sign_up(billed.client)
    response = await billed.client.execute(
        PORTAL,
        {"id": owner.organization_id, "url": "http://localhost:3000/settings"},
        token=owner.access_token,
    )
    assert response.errors == [], response.errors
    assert response.data["createBillingPortalSession"]["url"].startswith(
        "https://billing.stripe.test/"
    )
    customer = await _customer_of(billed.server, owner.organization_id)
    (call,) = [
        c
        for c in billed.stripe.calls("/v1/billing_portal/sessions")
        if c.form["customer"] == customer
    ]
    assert call.form["return_url"] == "http://localhost:3000/settings"
    assert call.idempotency_key


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("successUrl", "https://evil.example/done"),
        ("cancelUrl", "http://localhost:3001/x"),
        ("successUrl", "javascript:alert(1)"),
        ("cancelUrl", "//localhost:3000/x"),
    ],
)
async def test_return_urls_must_be_ours(billed: Billed, field: str, url: str) -> None:
    owner = await sign_up(billed.client)
    values = {"successUrl": "http://localhost:3000/ok", "cancelUrl": "http://localhost:3000/no"}
    values[field] = url
    before = len(billed.stripe.requests)
    response = await billed.client.execute(
        CHECKOUT,
        {"input": {"organizationId": owner.organization_id, "tier": "PROFESSIONAL", **values}},
        token=owner.access_token,
    )
    assert response.codes == ["BAD_USER_INPUT"]
    assert response.errors[0]["extensions"]["field"] == field
    assert len(billed.stripe.requests) == before


async def test_only_owners_start_checkout_or_open_the_portal(billed: Billed) -> None:
    owner = await sign_up(billed.client)
    await set_tier(billed.server, owner.organization_id, "PROFESSIONAL")
    admin = await add_member(billed.client, billed.server, owner, owner.organization_id, "ADMIN")
    response = await billed.client.execute(
        CHECKOUT,
        {
            "input": {
                "organizationId": owner.organization_id,
                "tier": "PROFESSIONAL",
                "successUrl": "http://localhost:3000/ok",
                "cancelUrl": "http://localhost:3000/no",
            }
        },
        token=admin.access_token,
    )
    assert response.codes == ["FORBIDDEN"]
    portal = await billed.client.execute(
        PORTAL,
        {"id": owner.organization_id, "url": "http://localhost:3000/"},
        token=admin.access_token,
    )
    assert portal.codes == ["FORBIDDEN"]
    # ADMIN may read the billing state; an outsider may not.
    assert (await _tier(billed, admin))["status"] == "none"
    outsider = await sign_up(billed.client)
    peek = await billed.client.execute(
        BILLING, {"id": owner.organization_id}, token=outsider.access_token
    )
    assert peek.codes == ["NOT_FOUND"]


# Webhooks


async def test_a_signed_event_upgrades_the_tier(billed: Billed) -> None:
    owner = await sign_up(billed.client)
    await _checkout(billed, owner)
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    end = int(time.time()) + 20 * 86400
    sub = billed.stripe.subscribe(customer, PRO, period_end=end)
    raw = str(from_global_id(owner.organization_id, "Organization"))
    payload = event(
        "checkout.session.completed",
        {
            "id": "cs_x",
            "object": "checkout.session",
            "customer": customer,
            "subscription": sub,
            "client_reference_id": raw,
        },
    )
    assert await billed.deliver(payload) == 200
    state = await _tier(billed, owner)
    assert state["tier"] == "PROFESSIONAL"
    assert state["status"] == "active"
    assert state["seatLimit"] == 5
    assert state["currentPeriodEnd"] == datetime.fromtimestamp(end, UTC).isoformat()
    audited = (await _billing_audits(billed.server, owner.organization_id))[-1]
    assert audited.action == "billing.subscription_update"
    assert (audited.actor_kind, audited.actor) == ("system", "stripe-webhook")
    assert audited.details["tier"] == "PROFESSIONAL"


async def test_bad_signatures_are_400_and_change_nothing(billed: Billed) -> None:
    owner = await sign_up(billed.client)
    await _checkout(billed, owner)
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    billed.stripe.subscribe(customer, ENT)
    event_id = f"evt_bad_{uuid.uuid4().hex}"
    payload = event(
        "customer.subscription.updated",
        {"id": "sub_x", "object": "subscription", "customer": customer},
        event_id,
    )
    good = sign(payload, WEBHOOK_SECRET)
    tampered = payload.replace(b'"sub_x"', b'"sub_y"')
    cases = [
        (tampered, good),
        (payload, sign(payload, f"whsec_{secrets.token_hex(16)}")),
        (payload, sign(payload, WEBHOOK_SECRET, int(time.time()) - 600)),
        (payload, None),
        (payload, ""),
        (payload, "t=1,v1=00"),
    ]
    for body, signature in cases:
        assert await billed.post_event(body, signature) == 400
    assert await _stripe_events(billed.server, event_id) == 0
    assert (await _tier(billed, owner))["tier"] == "STARTER"
    assert [a.action for a in await _billing_audits(billed.server, owner.organization_id)] == [
        "billing.customer_create"
    ]


async def test_a_redelivered_event_applies_once_also_concurrently(billed: Billed) -> None:
    owner = await sign_up(billed.client)
    await _checkout(billed, owner)
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    billed.stripe.subscribe(customer, PRO)
    payload = event(
        "invoice.paid", {"id": "in_1", "object": "invoice", "customer": customer}, "evt_dup_1"
    )
    payload = payload.replace(b"evt_dup_1", f"evt_dup_{uuid.uuid4().hex}".encode())
    event_id = json.loads(payload)["id"]
    statuses = await asyncio.gather(*(billed.deliver(payload) for _ in range(4)))
    assert statuses == [200, 200, 200, 200]
    assert await billed.deliver(payload) == 200
    assert await _stripe_events(billed.server, event_id) == 1
    updates = [
        a
        for a in await _billing_audits(billed.server, owner.organization_id)
        if a.action == "billing.subscription_update"
    ]
    assert [a.details["event"] for a in updates] == [event_id]
    assert (await _tier(billed, owner))["tier"] == "PROFESSIONAL"


async def test_events_in_any_order_end_in_stripes_state(billed: Billed) -> None:
    # subscription.updated before checkout.session.completed
    owner = await sign_up(billed.client)
    await _checkout(billed, owner)
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    sub = billed.stripe.subscribe(customer, PRO)
    updated = event("customer.subscription.updated", {"id": sub, "customer": customer})
    completed = event(
        "checkout.session.completed", {"id": "cs_1", "customer": customer, "subscription": sub}
    )
    assert await billed.deliver(updated) == 200
    assert await billed.deliver(completed) == 200
    assert (await _tier(billed, owner))["tier"] == "PROFESSIONAL"

    # deleted before (a stale) updated: Stripe says canceled, and so do we.
    billed.stripe.subscribe(customer, PRO, "canceled", subscription_id=sub)
    deleted = event(
        "customer.subscription.deleted", {"id": sub, "customer": customer, "status": "canceled"}
    )
    stale = event(
        "customer.subscription.updated", {"id": sub, "customer": customer, "status": "active"}
    )
    assert await billed.deliver(deleted) == 200
    assert await billed.deliver(stale) == 200
    state = await _tier(billed, owner)
    assert (state["tier"], state["status"]) == ("STARTER", "canceled")


async def test_other_event_types_are_acknowledged(billed: Billed) -> None:
    payload = event("charge.refunded", {"id": "ch_1", "customer": "cus_nobody"})
    assert await billed.deliver(payload) == 200
    assert await _stripe_events(billed.server, json.loads(payload)["id"]) == 0


async def test_a_stripe_outage_answers_500_so_stripe_retries(billed: Billed) -> None:
    owner = await sign_up(billed.client)
    await _checkout(billed, owner)
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    billed.stripe.subscribe(customer, PRO)
    payload = event("invoice.paid", {"id": "in_2", "customer": customer})
    billed.stripe.fail_subscriptions = True
    try:
        assert await billed.deliver(payload) == 500
    finally:
        billed.stripe.fail_subscriptions = False
    assert await _stripe_events(billed.server, json.loads(payload)["id"]) == 0
    assert await billed.deliver(payload) == 200  # the retry applies it
    assert (await _tier(billed, owner))["tier"] == "PROFESSIONAL"


# Enforcement


async def test_a_downgrade_keeps_members_and_refuses_new_seats(billed: Billed) -> None:
    owner = await _subscribed(billed)
    for _ in range(4):
        await add_member(billed.client, billed.server, owner, owner.organization_id, "VIEWER")
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    billed.stripe.subscribe(customer, PRO, "canceled")
    assert (
        await billed.deliver(event("customer.subscription.deleted", {"customer": customer})) == 200
    )

    state = await _tier(billed, owner)
    assert (state["tier"], state["seatsUsed"], state["seatLimit"]) == ("STARTER", 5, 1)
    assert len(await member_roles(billed.client, owner.access_token, owner.organization_id)) == 5
    refused = await invite(billed.client, owner.access_token, owner.organization_id, unique_email())
    assert refused.codes == ["PAYMENT_REQUIRED"]


async def test_past_due_keeps_the_tier_for_the_grace_period(billed: Billed) -> None:
    owner = await _subscribed(billed)
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    billed.stripe.subscribe(customer, PRO, "past_due")
    assert await billed.deliver(event("invoice.payment_failed", {"customer": customer})) == 200
    state = await _tier(billed, owner)
    assert (state["tier"], state["status"]) == ("PROFESSIONAL", "past_due")
    assert state["graceEndsAt"] is not None
    grace_end = datetime.fromisoformat(str(state["graceEndsAt"]))

    raw = from_global_id(owner.organization_id, "Organization")
    settings = billed.server.settings
    for offset, tier in ((timedelta(days=6), Tier.PROFESSIONAL), (timedelta(days=8), Tier.STARTER)):
        now = grace_end - timedelta(days=7) + offset
        async with billed.server.services.read() as session:
            view = await billing.billing_view(session, now, settings, raw)
            organization = await session.get(Organization, raw)
            assert organization is not None
        assert view.tier is tier
        assert effective_tier(organization.tier, organization.tier_grace_until, now) is tier

    # After the grace period a second seat is refused; within it, it is not.
    for offset, allowed in ((timedelta(days=6), True), (timedelta(days=8), False)):
        now = grace_end - timedelta(days=7) + offset
        try:
            async with billed.server.services.write() as session:
                organization = await session.get(Organization, raw)
                assert organization is not None
                await organizations._check_seats(session, settings, now, organization, True)
            assert allowed
        except PaymentRequired:
            assert not allowed

    # Paid again: the grace period ends, the tier stays.
    billed.stripe.subscribe(customer, PRO, "active")
    assert await billed.deliver(event("invoice.paid", {"customer": customer})) == 200
    state = await _tier(billed, owner)
    assert (state["tier"], state["status"], state["graceEndsAt"]) == (
        "PROFESSIONAL",
        "active",
        None,
    )


async def test_past_due_grace_counts_from_the_first_failure(billed: Billed) -> None:
    owner = await _subscribed(billed)
    raw = from_global_id(owner.organization_id, "Organization")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    state = SubscriptionState("sub_z", customer, "past_due", PRO, None, None, False, None, 1, None)
    settings = billed.server.settings
    for day in (0, 3):
        async with billed.server.services.write() as session:
            await billing.apply_subscription(
                session, billing.WEBHOOK, start + timedelta(days=day), settings, raw, state
            )
    async with billed.server.services.read() as session:
        organization = await session.get(Organization, raw)
        assert organization is not None
    assert organization.tier_grace_until == start + timedelta(days=settings.billing_grace_days)


# Reconciliation


async def test_billing_sync_repairs_a_missed_webhook(billed: Billed) -> None:
    owner = await sign_up(billed.client)
    await _checkout(billed, owner)
    customer = await _customer_of(billed.server, owner.organization_id)
    assert customer
    billed.stripe.subscribe(customer, ENT)  # no webhook ever arrives
    assert (await _tier(billed, owner))["tier"] == "STARTER"

    checked, changed, failed = await billing_sync(billed.server.services, owner.organization_id)
    assert (checked, changed, failed) == (1, 1, 0)
    state = await _tier(billed, owner)
    assert (state["tier"], state["status"], state["seatLimit"]) == ("ENTERPRISE", "active", None)
    last = (await _billing_audits(billed.server, owner.organization_id))[-1]
    assert (last.actor_kind, last.actor) == ("system", "cli")
    # Nothing left to repair.
    assert await billing_sync(billed.server.services, owner.organization_id) == (1, 0, 0)


# Hygiene: last in the module, over everything the module logged and answered.


async def test_no_secret_or_signature_in_logs_or_responses(billed: Billed) -> None:
    payload = event("invoice.paid", {"customer": "cus_unknown"})
    signature = sign(payload, WEBHOOK_SECRET)
    await billed.post_event(payload, signature)
    await billed.post_event(payload + b" ", signature)
    mac = signature.split("v1=")[1]
    text = "\n".join(billed.logs) + "\n".join(billed.bodies)
    assert any("stripe webhook" in line for line in billed.logs), "webhook lines were collected"
    for secret in (SECRET_KEY, WEBHOOK_SECRET, mac, WEBHOOK_SECRET.removeprefix("whsec_")):
        assert secret not in text


# Billing off


async def test_billing_off(backend: str, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with backend_server(tmp_path, backend) as server:
        client = Client(http, server.base_url)
        owner = await sign_up(client)
        response = await client.execute(
            CHECKOUT,
            {
                "input": {
                    "organizationId": owner.organization_id,
                    "tier": "PROFESSIONAL",
                    "successUrl": "http://localhost:3000/ok",
                    "cancelUrl": "http://localhost:3000/no",
                }
            },
            token=owner.access_token,
        )
        assert response.codes == ["FORBIDDEN"]
        assert response.errors[0]["message"] == "Billing is not configured."
        portal = await client.execute(
            PORTAL,
            {"id": owner.organization_id, "url": "http://localhost:3000/"},
            token=owner.access_token,
        )
        assert portal.codes == ["FORBIDDEN"]
        payload = event("invoice.paid", {"customer": "cus_1"})
        async with http.post(
            f"{server.base_url}/webhooks/stripe",
            data=payload,
            headers={"Stripe-Signature": sign(payload, "whsec_x")},
        ) as answer:
            assert answer.status == 404

        raw = from_global_id(owner.organization_id, "Organization")
        async with server.services.write() as session:
            assert await billing.set_tier(session, CLI, datetime.now(UTC), raw, Tier.ENTERPRISE)
        state = await client.execute(
            BILLING, {"id": owner.organization_id}, token=owner.access_token
        )
        assert state.data["organization"]["tier"] == "ENTERPRISE"
        assert state.data["organization"]["billing"]["status"] == "none"


async def test_a_downgrade_drops_the_chat_limit_at_once_on_a_second_instance(
    backend: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Two instances on one database and one Redis: instance A takes the webhook, the
    very next chat message on instance B is measured against Starter's limit."""
    require_service("Redis", REDIS_URL, 6379)
    async with AsyncExitStack() as stack:
        stripe = await stack.enter_async_context(fake_stripe())
        overrides: dict[str, object] = {
            "rate_limits": True,
            "trusted_proxies": "127.0.0.1",
            "redis_url": REDIS_URL,
            "stripe_secret_key": SECRET_KEY,
            "stripe_webhook_secret": WEBHOOK_SECRET,
            "stripe_api_base": stripe.url,
            "stripe_price_professional": PRO,
        }
        if backend == "postgresql":
            overrides["database_url"] = await stack.enter_async_context(scratch_database())
        settings = make_settings(tmp_path, backend, **overrides)
        runner_a, first = await start_server(settings)
        stack.push_async_callback(runner_a.cleanup)
        runner_b, second = await start_server(settings)
        stack.push_async_callback(runner_b.cleanup)

        ip = fresh_ip()
        client_a = ForwardedClient(http, first.base_url, ip)
        client_b = ForwardedClient(http, second.base_url, ip)
        owner = await sign_up(client_a)
        shop = await deploy(client_a, owner)
        on_a = Billed(first, stripe, client_a, http, [], [])
        await _checkout(on_a, owner)
        customer = await _customer_of(first, owner.organization_id)
        assert customer
        stripe.subscribe(customer, PRO)
        assert (
            await on_a.deliver(event("customer.subscription.created", {"customer": customer}))
            == 200
        )

        project = {"X-Project-Key": shop.project_key}
        for number in range(21):  # more than Starter's 20 per minute
            sent = await client_b.execute(
                SEND, {"input": {"message": f"m{number}"}}, headers=project
            )
            assert (sent.status, sent.errors) == (200, []), sent.errors

        stripe.subscribe(customer, PRO, "canceled")
        assert (
            await on_a.deliver(event("customer.subscription.deleted", {"customer": customer}))
            == 200
        )
        refused = await client_b.execute(SEND, {"input": {"message": "late"}}, headers=project)
        assert refused.status == 429
        assert refused.codes == ["RATE_LIMITED"]
