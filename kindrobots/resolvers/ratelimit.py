"""Whose calls a ``@rateLimit`` counts, and what limit applies right now."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from kindrobots.auth.roles import Tier
from kindrobots.billing.plans import plan_for
from kindrobots.context import RequestContext
from kindrobots.db.models import Organization
from kindrobots.ids import from_global_id, parse_global_id
from kindrobots.resolvers.access import current_viewer, organization_of
from kindrobots.resolvers.chat import WidgetCaller
from kindrobots.security.errors import RateLimited
from kindrobots.security.ratelimit import REFUSED, address_key

PLAN_WINDOW = 60
# Every ``fromPlan`` field draws on one count per key: the plan allows a project so many
# chat messages a minute in all, whether they come over the widget or the HTTP API.
PLAN_BUCKET = "plan.chatMessagesPerMinute"


async def _organization_argument(
    ctx: RequestContext, arguments: dict[str, Any]
) -> uuid.UUID | None:
    data = arguments.get("input")
    global_id = arguments.get("organization_id") or getattr(data, "organization_id", None)
    if isinstance(global_id, str):
        return from_global_id(global_id, "Organization")
    object_id = arguments.get("id") or arguments.get("project_id") or getattr(data, "id", None)
    if isinstance(object_id, str):
        type_name, raw_id = parse_global_id(object_id)
        return await organization_of(ctx, type_name, raw_id)
    return None


async def _key(ctx: RequestContext, per: str, arguments: dict[str, Any]) -> str:
    widget = ctx.widget if isinstance(ctx.widget, WidgetCaller) else None
    address = f"ip:{address_key(ctx.ip)}"
    if per == "IP":
        return address
    if per == "PROJECT" and widget is not None:
        return f"project:{widget.project_id}"
    if per == "ORGANIZATION":
        if widget is not None:
            return f"org:{widget.organization_id}"
        organization = await _organization_argument(ctx, arguments)
        if organization is not None:
            return f"org:{organization}"
    # CALLER, and the fallback when the wider key is unknown: the one who is calling.
    if widget is not None:
        return f"project:{widget.project_id}:user:{widget.end_user or address}"
    viewer = await current_viewer(ctx)
    return f"user:{viewer.user.id}" if viewer else address


async def _plan_limit(ctx: RequestContext, fallback: int) -> int:
    """The organization's plan at this moment, so an upgrade counts without a restart."""
    widget = ctx.widget
    if not isinstance(widget, WidgetCaller):
        return fallback
    async with ctx.services.read() as session:
        tier = await session.scalar(
            select(Organization.tier).where(Organization.id == widget.organization_id)
        )
    if tier is None:
        return fallback
    return plan_for(ctx.settings, Tier(tier)).chat_messages_per_minute


async def check(
    ctx: RequestContext,
    *,
    field: str,
    limit: int,
    window: int,
    per: str,
    from_plan: bool,
    arguments: dict[str, Any],
) -> None:
    """Count one call; RATE_LIMITED with ``retryAfter`` when the key is over its limit."""
    if not ctx.settings.rate_limits:
        return
    bucket = field
    if from_plan:
        limit, window, bucket = await _plan_limit(ctx, limit), PLAN_WINDOW, PLAN_BUCKET
    key = f"rl:{bucket}:{per}:{await _key(ctx, per, arguments)}"
    decision = await ctx.services.limiter.hit(key, limit, window)
    if not decision.allowed:
        REFUSED.labels(field=field).inc()
        raise RateLimited(
            decision.retry_after, f"Too many requests; try again in {decision.retry_after} s."
        )
