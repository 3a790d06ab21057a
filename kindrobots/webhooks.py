"""``POST /webhooks/stripe``: verify the signature over the raw body, apply the event.

Registered only while billing is configured (otherwise the path is a plain 404). A bad
or missing signature is 400 and touches nothing; a failure while applying is 500, so
Stripe delivers the event again; an event already applied is acknowledged again. The
log names the event's ID and type, never the secret, the signature or the body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from kindrobots.billing.stripe_client import BadSignature, verify_event
from kindrobots.context import Services
from kindrobots.resolvers import billing
from kindrobots.security.client_ip import client_ip
from kindrobots.security.events import WEBHOOK_SIGNATURE_FAILED

logger = logging.getLogger("kindrobots.webhooks")

PATH = "/webhooks/stripe"
# Stripe's events are a few KiB; anything far larger is not one of them.
MAX_EVENT_BYTES = 512 * 1024


def stripe_webhook(services: Services) -> Callable[[web.Request], Awaitable[web.Response]]:
    settings = services.settings
    outcomes = services.metrics.webhooks

    async def handle(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_EVENT_BYTES:
            return web.json_response({"error": "payload too large"}, status=413)
        payload = await request.read()
        try:
            event = verify_event(settings, payload, request.headers.get("Stripe-Signature"))
        except BadSignature:
            logger.warning("stripe webhook: signature did not verify")
            outcomes.labels("bad_signature").inc()
            ip = client_ip(request, settings.trusted_proxies)
            services.refused(WEBHOOK_SIGNATURE_FAILED, source=str(ip), ip=ip, details={})
            return web.json_response({"error": "invalid signature"}, status=400)
        gateway = services.stripe
        assert gateway is not None  # the route exists only with billing configured
        try:
            outcome = await billing.handle_event(
                services.read, services.write, gateway, datetime.now(UTC), settings, event
            )
        except Exception:
            logger.exception("stripe webhook: %s %s failed", event.type, event.id)
            outcomes.labels("failed").inc()
            return web.json_response({"error": "failed; retry"}, status=500)
        outcomes.labels(outcome).inc()  # applied, unchanged, duplicate, ignored
        logger.info("stripe webhook: %s %s %s", event.type, event.id, outcome)
        return web.json_response({"received": True, "outcome": outcome})

    return handle


def add_webhook_routes(app: web.Application, services: Services) -> None:
    if services.settings.billing_enabled and services.stripe is not None:
        app.router.add_post(PATH, stripe_webhook(services))
