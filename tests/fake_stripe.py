"""A local fake of the few Stripe API endpoints billing calls, driven by the real SDK.

It answers Stripe-shaped JSON, records every request (path, form fields, the
Idempotency-Key and Authorization headers) and honours idempotency keys as Stripe does:
a repeated key returns the first response. Tests set a customer's subscriptions with
:meth:`FakeStripe.subscribe` and sign webhook events with :func:`sign`.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.servers import serving


@dataclass
class Recorded:
    method: str
    path: str
    form: dict[str, str]
    query: dict[str, str]
    idempotency_key: str | None
    authorization: str | None


@dataclass
class FakeStripe:
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fail_subscriptions: bool = False
    _idempotent: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def subscribe(
        self,
        customer: str,
        price: str,
        status: str = "active",
        *,
        subscription_id: str | None = None,
        period_end: int | None = None,
        cancel_at_period_end: bool = False,
        trial_end: int | None = None,
    ) -> str:
        """Set (replace) the customer's one subscription; its ID."""
        now = int(time.time())
        sub_id = subscription_id or f"sub_{next(self._ids)}"
        end = period_end or now + 30 * 86400
        self.subscriptions[customer] = [
            {
                "id": sub_id,
                "object": "subscription",
                "customer": customer,
                "status": status,
                "created": now,
                "cancel_at_period_end": cancel_at_period_end,
                "trial_end": trial_end,
                "metadata": {},
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": f"si_{sub_id}",
                            "object": "subscription_item",
                            "price": {"id": price, "object": "price"},
                            "current_period_start": end - 30 * 86400,
                            "current_period_end": end,
                        }
                    ],
                },
            }
        ]
        return sub_id

    async def _handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        record = Recorded(
            request.method,
            request.path,
            form,
            dict(request.query),
            request.headers.get("Idempotency-Key"),
            request.headers.get("Authorization"),
        )
        self.requests.append(record)
        if record.idempotency_key and request.method == "POST":
            cached = self._idempotent.get((request.path, record.idempotency_key))
            if cached is not None:
                return web.json_response(cached)
        body = self._answer(record)
        if body is None:
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": "fake: unknown"}},
                status=404,
            )
        if isinstance(body, int):
            return web.json_response(
                {"error": {"type": "api_error", "message": "fake outage"}}, status=body
            )
        if record.idempotency_key and request.method == "POST":
            self._idempotent[(request.path, record.idempotency_key)] = body
        return web.json_response(body)

    def _answer(self, record: Recorded) -> dict[str, Any] | int | None:
        n = next(self._ids)
        if record.path == "/v1/customers" and record.method == "POST":
            customer_id = f"cus_{n}"
            customer = {
                "id": customer_id,
                "object": "customer",
                "name": record.form.get("name"),
                "metadata": {"organization_id": record.form.get("metadata[organization_id]")},
            }
            self.customers[customer_id] = customer
            return customer
        if record.path == "/v1/checkout/sessions" and record.method == "POST":
            return {
                "id": f"cs_test_{n}",
                "object": "checkout.session",
                "mode": "subscription",
                "customer": record.form.get("customer"),
                "url": f"https://checkout.stripe.test/c/pay/cs_test_{n}",
            }
        if record.path == "/v1/billing_portal/sessions" and record.method == "POST":
            return {
                "id": f"bps_{n}",
                "object": "billing_portal.session",
                "customer": record.form.get("customer"),
                "url": f"https://billing.stripe.test/p/session/bps_{n}",
            }
        if record.path == "/v1/subscriptions" and record.method == "GET":
            if self.fail_subscriptions:
                return 500
            data = self.subscriptions.get(record.query.get("customer", ""), [])
            return {"object": "list", "data": data, "has_more": False, "url": "/v1/subscriptions"}
        return None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app


@asynccontextmanager
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    fake = FakeStripe()
    async with serving(fake.app()) as port:
        fake.url = f"http://127.0.0.1:{port}"
        yield fake


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header in Stripe's scheme: ``t=…,v1=HMAC-SHA256(t.payload)``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(event_type: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_{time.time_ns()}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "data": {"object": obj},
        }
    ).encode()
