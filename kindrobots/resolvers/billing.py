"""Billing rules: the Stripe customer, subscription state, the tier it grants, set-tier.

Every change goes through :func:`apply_subscription` (webhooks, ``billing sync``) or
:func:`set_tier` (``org set-tier``), each in its caller's transaction with its audit
event. The organization row keeps the granted tier and, while the subscription is past
due, when that tier lapses (``tier_grace_until``); every limit reads
``plans.effective_tier`` of that row at the time of the call.

The orchestration functions at the end (:func:`create_checkout`, :func:`create_portal`,
:func:`handle_event`, :func:`sync_organization`) talk to Stripe *between* short
transactions, never inside one: no lock or SQLite write lock is held over the network.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import Actor, SystemActor
from kindrobots.billing.plans import Tier, effective_tier, plan_for, tier_for_price
from kindrobots.billing.stripe_client import (
    StripeGateway,
    SubscriptionState,
    WebhookEvent,
)
from kindrobots.config import Settings
from kindrobots.db.models import BillingAccount, Membership, Message, Organization, StripeEvent
from kindrobots.errors import BadUserInput, Forbidden, NotFound
from kindrobots.resolvers import audit
from kindrobots.resolvers.access import locked_organization

logger = logging.getLogger("kindrobots.billing")

WEBHOOK = SystemActor("stripe-webhook")
NOT_CONFIGURED = "Billing is not configured."

# Statuses whose subscription grants its tier outright; past_due grants it for the grace
# period; any other (canceled, unpaid, incomplete, incomplete_expired, paused) grants none.
GRANTING = ("active", "trialing")

HANDLED_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.trial_will_end",
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.payment_action_required",
    }
)

Sessions = Callable[[], AbstractAsyncContextManager[AsyncSession]]


def require_gateway(settings: Settings, gateway: StripeGateway | None) -> StripeGateway:
    if gateway is None or not settings.billing_enabled:
        raise Forbidden(NOT_CONFIGURED)
    return gateway


def check_return_url(settings: Settings, url: str, field: str) -> str:
    """A URL Stripe sends the customer back to: on KR_PUBLIC_URL or a dashboard origin."""
    parts = urlsplit(url)
    allowed = {_origin(settings.public_url), *(_origin(o) for o in settings.dashboard_origins)}
    if parts.scheme not in ("http", "https") or not parts.hostname or _origin(url) not in allowed:
        raise BadUserInput(field, "Must be a URL on this service or its dashboard.")
    if settings.is_production and parts.scheme != "https":
        raise BadUserInput(field, "Must be an https URL.")
    return url


def _origin(url: str) -> str:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port or default
    except ValueError:
        return ""
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


async def get_account(session: AsyncSession, organization_id: uuid.UUID) -> BillingAccount | None:
    return await session.get(BillingAccount, organization_id)


def _observable(organization: Organization, account: BillingAccount) -> tuple[object, ...]:
    """What a billing change can change that anyone sees: equal before and after, the
    event changed nothing (and writes no audit event)."""
    return (
        organization.tier,
        organization.tier_grace_until,
        account.stripe_subscription_id,
        account.status,
        account.price_id,
        account.current_period_end,
        account.cancel_at_period_end,
        account.trial_end,
    )


async def attach_customer(
    session: AsyncSession,
    actor: Actor,
    now: datetime,
    organization_id: uuid.UUID,
    customer_id: str,
) -> str:
    """Store the organization's Stripe customer, unless it already has one (returned)."""
    await locked_organization(session, organization_id)
    account = await get_account(session, organization_id)
    if account is not None and account.stripe_customer_id:
        return account.stripe_customer_id
    if account is None:
        account = BillingAccount(organization_id=organization_id, updated_at=now)
        session.add(account)
    account.stripe_customer_id = customer_id
    account.updated_at = now
    await session.flush()
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="billing.customer_create",
        target=("Organization", organization_id),
        details={"customer": customer_id},
    )
    return customer_id


async def apply_subscription(
    session: AsyncSession,
    actor: Actor,
    now: datetime,
    settings: Settings,
    organization_id: uuid.UUID,
    state: SubscriptionState | None,
    *,
    event: WebhookEvent | None = None,
) -> bool:
    """Make local state Stripe's: the subscription ``state`` (None: the customer has
    none) and the tier it grants. True when anything changed (then audited)."""
    organization = await locked_organization(session, organization_id)
    account = await get_account(session, organization_id)
    if account is None:
        account = BillingAccount(organization_id=organization_id, updated_at=now)
        session.add(account)
    before = _observable(organization, account)
    tier = tier_for_price(settings, state.price_id) if state else None
    if state is not None and tier is None:
        logger.warning("billing: subscription %s has a price of no known tier", state.id)
    status = state.status if state else None
    granted, grace_until, past_due_since = Tier.STARTER, None, None
    if tier is not None and status in GRANTING:
        granted = tier
    elif tier is not None and status == "past_due":
        granted = tier
        past_due_since = account.past_due_since or now
        grace_until = past_due_since + timedelta(days=settings.billing_grace_days)

    if state is not None and state.customer_id and not account.stripe_customer_id:
        account.stripe_customer_id = state.customer_id
    account.stripe_subscription_id = state.id if state else None
    account.status = status
    account.price_id = state.price_id if state else None
    account.tier = tier.value if tier else None
    account.current_period_start = state.current_period_start if state else None
    account.current_period_end = state.current_period_end if state else None
    account.cancel_at_period_end = state.cancel_at_period_end if state else False
    account.trial_end = state.trial_end if state else None
    account.past_due_since = past_due_since
    organization.tier = granted.value
    organization.tier_grace_until = grace_until
    after = _observable(organization, account)
    if before == after:
        return False
    account.updated_at = now
    details: dict[str, object] = {
        "from": before[0],
        "tier": granted.value,
        "status": status,
        "subscription": account.stripe_subscription_id,
        "cancelAtPeriodEnd": account.cancel_at_period_end,
    }
    if grace_until is not None:
        details["graceUntil"] = grace_until.isoformat()
    if event is not None:
        details["event"] = event.id
        details["eventType"] = event.type
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="billing.subscription_update",
        target=("Organization", organization_id),
        details=details,
    )
    return True


async def set_tier(
    session: AsyncSession, actor: Actor, now: datetime, organization_id: uuid.UUID, tier: Tier
) -> bool:
    """Grant a tier by hand (billing off, or an operator's override until the next
    Stripe event). Audited; True when it changed anything."""
    organization = await locked_organization(session, organization_id)
    previous = organization.tier
    if previous == tier.value and organization.tier_grace_until is None:
        return False
    organization.tier = tier.value
    organization.tier_grace_until = None
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="billing.tier_set",
        target=("Organization", organization_id),
        details={"from": previous, "to": tier.value},
    )
    return True


async def find_organization(session: AsyncSession, reference: str) -> Organization | None:
    """An organization by UUID, global ID or slug (command-line arguments)."""
    from kindrobots.ids import from_global_id

    candidates: list[uuid.UUID] = []
    try:
        candidates.append(uuid.UUID(reference))
    except ValueError:
        with contextlib.suppress(Exception):  # not a global ID either: try the slug
            candidates.append(from_global_id(reference, "Organization"))
    for candidate in candidates:
        found = await session.get(Organization, candidate)
        if found is not None:
            return found
    return await session.scalar(select(Organization).where(Organization.slug == reference))


@dataclass(frozen=True)
class BillingView:
    tier: Tier
    status: str
    current_period_end: datetime | None
    cancel_at_period_end: bool
    trial_end: datetime | None
    grace_ends_at: datetime | None
    seats_used: int
    seat_limit: int | None
    tokens_used: int
    token_allowance: int | None


async def billing_view(
    session: AsyncSession, now: datetime, settings: Settings, organization_id: uuid.UUID
) -> BillingView:
    """``Organization.billing``; the caller's role was checked by the field (ADMIN)."""
    row = (
        await session.execute(
            select(Organization, BillingAccount)
            .outerjoin(BillingAccount, BillingAccount.organization_id == Organization.id)
            .where(Organization.id == organization_id)
        )
    ).first()
    if row is None:
        raise NotFound()
    organization, account = row
    tier = effective_tier(organization.tier, organization.tier_grace_until, now)
    plan = plan_for(settings, tier)
    seats = await session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.organization_id == organization_id)
    )
    period_start = account.current_period_start if account else None
    if period_start is None:
        period_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    tokens = await session.scalar(
        select(func.coalesce(func.sum(Message.input_tokens + Message.output_tokens), 0)).where(
            Message.organization_id == organization_id, Message.created_at >= period_start
        )
    )
    status = account.status if account and account.status else "none"
    return BillingView(
        tier=tier,
        status=status,
        current_period_end=account.current_period_end if account else None,
        cancel_at_period_end=bool(account and account.cancel_at_period_end),
        trial_end=account.trial_end if account else None,
        grace_ends_at=organization.tier_grace_until,
        seats_used=seats or 0,
        seat_limit=plan.admin_seats,
        tokens_used=int(tokens or 0),
        token_allowance=plan.monthly_tokens,
    )


# Orchestration: Stripe calls between short transactions.


async def _customer(
    read: Sessions,
    write: Sessions,
    gateway: StripeGateway,
    actor: Actor,
    now: datetime,
    organization_id: uuid.UUID,
) -> str:
    async with read() as session:
        account = await get_account(session, organization_id)
        organization = await session.get(Organization, organization_id)
    if organization is None:
        raise NotFound()
    if account is not None and account.stripe_customer_id:
        return account.stripe_customer_id
    customer_id = await gateway.create_customer(str(organization_id), organization.name)
    async with write() as session:
        return await attach_customer(session, actor, now, organization_id, customer_id)


async def create_checkout(
    read: Sessions,
    write: Sessions,
    gateway: StripeGateway,
    actor: Actor,
    now: datetime,
    settings: Settings,
    organization_id: uuid.UUID,
    tier: Tier,
    success_url: str,
    cancel_url: str,
) -> str:
    """A subscription Checkout Session for ``tier``; its URL. The caller is an OWNER."""
    check_return_url(settings, success_url, "successUrl")
    check_return_url(settings, cancel_url, "cancelUrl")
    price = plan_for(settings, tier).price_id
    if not price:
        raise BadUserInput("tier", "This tier cannot be bought.")
    customer_id = await _customer(read, write, gateway, actor, now, organization_id)
    return await gateway.create_checkout_session(
        customer_id=customer_id,
        price_id=price,
        organization_id=str(organization_id),
        success_url=success_url,
        cancel_url=cancel_url,
        idempotency_key=f"kr-checkout-{uuid.uuid4()}",
    )


async def create_portal(
    read: Sessions,
    write: Sessions,
    gateway: StripeGateway,
    actor: Actor,
    now: datetime,
    settings: Settings,
    organization_id: uuid.UUID,
    return_url: str,
) -> str:
    check_return_url(settings, return_url, "returnUrl")
    customer_id = await _customer(read, write, gateway, actor, now, organization_id)
    return await gateway.create_portal_session(
        customer_id=customer_id,
        return_url=return_url,
        idempotency_key=f"kr-portal-{uuid.uuid4()}",
    )


def _event_customer(event: WebhookEvent) -> str | None:
    customer = event.object.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) and customer else None


def _event_organization(event: WebhookEvent) -> uuid.UUID | None:
    metadata = event.object.get("metadata")
    candidates = [
        metadata.get("organization_id") if isinstance(metadata, dict) else None,
        event.object.get("client_reference_id"),
    ]
    for candidate in candidates:
        if isinstance(candidate, str):
            try:
                return uuid.UUID(candidate)
            except ValueError:
                continue
    return None


async def _organization_of(
    read: Sessions, event: WebhookEvent, customer_id: str | None
) -> uuid.UUID | None:
    async with read() as session:
        if customer_id:
            found = await session.scalar(
                select(BillingAccount.organization_id).where(
                    BillingAccount.stripe_customer_id == customer_id
                )
            )
            if found is not None:
                return found
        candidate = _event_organization(event)
        if candidate is None:
            return None
        account = await get_account(session, candidate)
        if account is not None and account.stripe_customer_id not in (None, customer_id):
            return None  # the metadata names an organization with another customer
        return candidate if await session.get(Organization, candidate) else None


async def handle_event(
    read: Sessions,
    write: Sessions,
    gateway: StripeGateway,
    now: datetime,
    settings: Settings,
    event: WebhookEvent,
) -> str:
    """Apply one verified Stripe event; what happened (``applied``, ``unchanged``,
    ``duplicate``, ``ignored``). Raises on failure, so that Stripe retries."""
    if event.type not in HANDLED_EVENTS:
        return "ignored"
    async with read() as session:
        if await session.get(StripeEvent, event.id) is not None:
            return "duplicate"
    customer_id = _event_customer(event)
    organization_id = await _organization_of(read, event, customer_id)
    # The subscription as Stripe has it now: events in any order end in its current state.
    if customer_id is None:
        organization_id = None  # no customer to re-read: nothing to apply
    state = None
    if organization_id is not None and customer_id is not None:
        state = await gateway.current_subscription(customer_id)
    try:
        async with write() as session:
            session.add(
                StripeEvent(
                    id=event.id, type=event.type, organization_id=organization_id, received_at=now
                )
            )
            await session.flush()
            if organization_id is None:
                logger.warning("billing: %s %s names no organization", event.type, event.id)
                return "ignored"
            changed = await apply_subscription(
                session, WEBHOOK, now, settings, organization_id, state, event=event
            )
    except IntegrityError:
        # A concurrent delivery of the same event committed first.
        return "duplicate"
    return "applied" if changed else "unchanged"


async def customers(
    session: AsyncSession, organization_id: uuid.UUID | None = None
) -> list[tuple[uuid.UUID, str]]:
    """(organization, Stripe customer) pairs to reconcile: one organization, or all."""
    query = select(BillingAccount.organization_id, BillingAccount.stripe_customer_id).where(
        BillingAccount.stripe_customer_id.is_not(None)
    )
    if organization_id is not None:
        query = query.where(BillingAccount.organization_id == organization_id)
    rows = (await session.execute(query.order_by(BillingAccount.organization_id))).all()
    return [(org, str(customer)) for org, customer in rows]


async def sync_organization(
    write: Sessions,
    gateway: StripeGateway,
    actor: Actor,
    now: datetime,
    settings: Settings,
    organization_id: uuid.UUID,
    customer_id: str,
) -> bool:
    """Re-read the customer's subscriptions from Stripe and repair local state."""
    state = await gateway.current_subscription(customer_id)
    async with write() as session:
        return await apply_subscription(session, actor, now, settings, organization_id, state)
