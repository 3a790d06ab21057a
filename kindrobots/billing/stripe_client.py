"""The Stripe client wrapper: the few calls billing makes, through the official SDK's async
API, and the webhook signature check. ``KR_STRIPE_API_BASE`` points it elsewhere (tests).

Nothing here logs a key, a webhook secret or a signature; errors of the SDK are turned
into :class:`StripeUnavailable` without their text (which can name the request).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import stripe

from kindrobots.config import Settings

logger = logging.getLogger("kindrobots.billing")

# Statuses in which Stripe still bills the customer for the subscription, most current
# first: the one a customer "is on" when it has several.
LIVE_STATUSES = ("active", "trialing", "past_due", "unpaid", "incomplete", "paused")


class StripeUnavailable(Exception):
    """Stripe could not be reached or refused the call (the caller answers 5xx/UPSTREAM)."""


class BadSignature(Exception):
    """A webhook payload whose Stripe-Signature does not verify (or is missing)."""


@dataclass(frozen=True)
class SubscriptionState:
    """A subscription as Stripe reports it now."""

    id: str
    customer_id: str
    status: str
    price_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    trial_end: datetime | None
    created: int
    organization_id: str | None  # metadata.organization_id, set at checkout


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    object: dict[str, Any]


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _get(obj: Any, key: str) -> Any:
    try:
        return obj[key]
    except (KeyError, TypeError, IndexError):
        return None


def subscription_state(sub: Any) -> SubscriptionState:
    """From a Subscription object (the SDK's or plain JSON). Since API 2025-03-31 the
    period lives on the items; older payloads carry it on the subscription."""
    items = _get(_get(sub, "items"), "data") or []
    item = items[0] if items else None
    price = _get(item, "price")
    metadata = _get(sub, "metadata") or {}
    customer = _get(sub, "customer")
    if not isinstance(customer, str):
        customer = _get(customer, "id")
    return SubscriptionState(
        id=str(_get(sub, "id")),
        customer_id=str(customer),
        status=str(_get(sub, "status")),
        price_id=_get(price, "id") if price is not None else None,
        current_period_start=_time(
            _get(item, "current_period_start") or _get(sub, "current_period_start")
        ),
        current_period_end=_time(
            _get(item, "current_period_end") or _get(sub, "current_period_end")
        ),
        cancel_at_period_end=bool(_get(sub, "cancel_at_period_end")),
        trial_end=_time(_get(sub, "trial_end")),
        created=int(_get(sub, "created") or 0),
        organization_id=_get(metadata, "organization_id"),
    )


def current_subscription(subscriptions: list[SubscriptionState]) -> SubscriptionState | None:
    """The subscription a customer is on: a live one before any ended one, the newest of
    equals. None without any (the customer never subscribed)."""
    if not subscriptions:
        return None

    def rank(sub: SubscriptionState) -> tuple[int, int]:
        live = sub.status in LIVE_STATUSES
        return (1 if live else 0, sub.created)

    return max(subscriptions, key=rank)


def verify_event(settings: Settings, payload: bytes, signature: str | None) -> WebhookEvent:
    """Check the Stripe-Signature header over the raw body (the SDK's scheme and default
    tolerance of five minutes) and parse the event."""
    secret = settings.stripe_webhook_secret
    if not signature or not secret:
        raise BadSignature()
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"),
            signature,
            secret,
            tolerance=stripe.Webhook.DEFAULT_TOLERANCE,
        )
        data = json.loads(payload)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError):
        raise BadSignature() from None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise BadSignature()
    obj = _get(_get(data, "data"), "object")
    return WebhookEvent(data["id"], str(data.get("type", "")), obj if isinstance(obj, dict) else {})


class StripeGateway:
    """One per process; its aiohttp session opens on first use and closes with the app."""

    def __init__(self, settings: Settings) -> None:
        assert settings.stripe_secret_key, "billing is not configured"
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=20))
        base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        self._client = stripe.StripeClient(
            settings.stripe_secret_key,
            base_addresses=base,  # type: ignore[arg-type]
            http_client=self._http,
            max_network_retries=2,
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def _call(self, what: str, call: Any) -> Any:
        try:
            return await call
        except stripe.StripeError as exc:
            # The class and HTTP status only: the SDK's message may quote the request.
            logger.warning(
                "stripe: %s failed (%s, status %s)", what, type(exc).__name__, exc.http_status
            )
            raise StripeUnavailable(what) from None

    async def create_customer(self, organization_id: str, name: str) -> str:
        """The organization's customer. The idempotency key is the organization's, so two
        concurrent first checkouts get the same customer back from Stripe."""
        customer = await self._call(
            "customer create",
            self._client.v1.customers.create_async(
                params={"name": name, "metadata": {"organization_id": organization_id}},
                options={"idempotency_key": f"kr-customer-{organization_id}"},
            ),
        )
        return str(customer.id)

    async def create_checkout_session(
        self,
        *,
        customer_id: str,
        price_id: str,
        organization_id: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> str:
        session = await self._call(
            "checkout session create",
            self._client.v1.checkout.sessions.create_async(
                params={
                    "mode": "subscription",
                    "customer": customer_id,
                    "client_reference_id": organization_id,
                    "line_items": [{"price": price_id, "quantity": 1}],
                    "subscription_data": {"metadata": {"organization_id": organization_id}},
                    "metadata": {"organization_id": organization_id},
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        return str(session.url)

    async def create_portal_session(
        self, *, customer_id: str, return_url: str, idempotency_key: str
    ) -> str:
        session = await self._call(
            "billing portal session create",
            self._client.v1.billing_portal.sessions.create_async(
                params={"customer": customer_id, "return_url": return_url},
                options={"idempotency_key": idempotency_key},
            ),
        )
        return str(session.url)

    async def subscriptions(self, customer_id: str) -> list[SubscriptionState]:
        """Every subscription of the customer, as Stripe has them now."""
        page = await self._call(
            "subscription list",
            self._client.v1.subscriptions.list_async(
                params={"customer": customer_id, "status": "all", "limit": 100}
            ),
        )
        return [subscription_state(sub) for sub in page.data]

    async def current_subscription(self, customer_id: str) -> SubscriptionState | None:
        return current_subscription(await self.subscriptions(customer_id))
