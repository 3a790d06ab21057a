"""``@rateLimit``: limits declared on fields in the schema, enforced by one field extension.

The directive is printed in ``schema.graphql``, so a client can read every limit.
``build_schema`` gives each field that carries it a :class:`RateLimitExtension`;
no resolver body counts calls itself.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
from collections.abc import Iterable
from typing import Any

import strawberry
from strawberry.extensions import FieldExtension
from strawberry.schema_directive import Location
from strawberry.types.base import get_object_definition
from strawberry.types.field import StrawberryField
from strawberry.utils.str_converters import to_camel_case

from kindrobots.auth.principals import UserActor, WidgetActor
from kindrobots.billing.plans import plan_for
from kindrobots.errors import RateLimited
from kindrobots.schema.base import Info
from kindrobots.schema.grants import RoleGrant, WidgetGrant
from kindrobots.security.ratelimit import address_key

PLAN_WINDOW = 60
# Every ``fromPlan`` field draws on one count per key: the plan allows a project so many
# chat messages a minute in all, whether they come over the widget or the HTTP API.
PLAN_BUCKET = "plan.chatMessagesPerMinute"


@strawberry.enum
class RateLimitKey(enum.Enum):
    CALLER = "CALLER"
    IP = "IP"
    PROJECT = "PROJECT"
    ORGANIZATION = "ORGANIZATION"
    # A widget's visitor: the end user (AUTHENTICATED) or the holder of the conversation
    # token in ``input.conversationToken``; calls without either count as NEW_VISITOR.
    VISITOR = "VISITOR"
    # Calls that would start a new anonymous conversation (mint a visitor), per address
    # and project; other calls do not count.
    NEW_VISITOR = "NEW_VISITOR"


@strawberry.schema_directive(
    locations=[Location.FIELD_DEFINITION],
    name="rateLimit",
    description=(
        "At most `limit` calls per `window` seconds for each `per` key. With `fromPlan`, "
        "the limit per minute comes from the organization's plan (chatMessagesPerMinute) "
        "at the time of the call, and `limit` applies only when there is no plan. "
        "Several limits on one field are checked in the order given."
    ),
    repeatable=True,
)
class RateLimit:
    limit: int
    window: int
    per: RateLimitKey | None = RateLimitKey.CALLER
    from_plan: bool | None = False


def _visitor_key(caller: WidgetActor, arguments: dict[str, Any]) -> str | None:
    """The visitor a widget call speaks for; None when it would mint a new one."""
    if caller.end_user is not None:
        return f"project:{caller.project_id}:user:{caller.end_user}"
    token = getattr(arguments.get("input"), "conversation_token", None)
    if isinstance(token, str) and token:
        # The token's hash: the secret itself never becomes a Redis key.
        return f"project:{caller.project_id}:visitor:{hashlib.sha256(token.encode()).hexdigest()}"
    return None


def _key(info: Info, per: RateLimitKey, arguments: dict[str, Any]) -> str | None:
    """Whose calls count, from what the field's permission established; None when the
    limit does not apply to this call (NEW_VISITOR for a known visitor)."""
    context, grant = info.context, info.grant
    caller = context.caller
    address = f"ip:{address_key(context.ip)}"
    if per is RateLimitKey.IP:
        return address
    if per in (RateLimitKey.VISITOR, RateLimitKey.NEW_VISITOR):
        if not isinstance(caller, WidgetActor):
            return None
        visitor = _visitor_key(caller, arguments)
        if per is RateLimitKey.VISITOR:
            return visitor
        return None if visitor else f"project:{caller.project_id}:{address}"
    if isinstance(caller, WidgetActor):
        if per is RateLimitKey.PROJECT:
            return f"project:{caller.project_id}"
        if per is RateLimitKey.ORGANIZATION:
            return f"org:{caller.organization_id}"
        return f"project:{caller.project_id}:user:{caller.end_user or address}"
    if per is RateLimitKey.ORGANIZATION and isinstance(grant, RoleGrant):
        return f"org:{grant.organization_id}"
    # CALLER, and the fallback when the wider key is unknown: the one who is calling.
    return f"user:{caller.user.id}" if isinstance(caller, UserActor) else address


class RateLimitExtension(FieldExtension):
    """Counts one call against the field's ``@rateLimit``, after its permission ran (so a
    caller who may not call the field never spends an allowance)."""

    def __init__(self, field_name: str, directive: RateLimit) -> None:
        self.field_name = field_name
        self.directive = directive

    async def _check(self, info: Info, arguments: dict[str, Any]) -> None:
        settings = info.context.settings
        if not settings.rate_limits:
            return
        directive = self.directive
        limit, window, bucket = directive.limit, directive.window, self.field_name
        grant = info.grant
        if directive.from_plan and isinstance(grant, WidgetGrant):
            # The plan as of this message (read with the chat target): an upgrade counts
            # at once, on every instance.
            limit = plan_for(settings, grant.target.tier).chat_messages_per_minute
            window, bucket = PLAN_WINDOW, PLAN_BUCKET
        per = directive.per or RateLimitKey.CALLER
        if per in (RateLimitKey.VISITOR, RateLimitKey.NEW_VISITOR):
            # One allowance per visitor across the widget and the HTTP API, like the plan's.
            bucket = f"chat.{per.value}"
        who = _key(info, per, arguments)
        if who is None:
            return
        key = f"rl:{bucket}:{per.value}:{who}"
        decision = await info.context.services.limiter.hit(key, limit, window)
        if not decision.allowed:
            info.context.services.metrics.rate_limited.labels(
                self.field_name, per.value.lower()
            ).inc()
            raise RateLimited(
                decision.retry_after, f"Too many requests; try again in {decision.retry_after} s."
            )

    async def resolve_async(
        self, next_: Any, source: Any, info: strawberry.Info[Any, Any], **kwargs: Any
    ) -> Any:
        assert isinstance(info, Info)
        await self._check(info, kwargs)
        result = next_(source, info, **kwargs)
        if inspect.isasyncgen(result):
            return result
        return await result


def install_rate_limits(root_types: Iterable[type]) -> None:
    """Give every ``@rateLimit`` of a field its enforcing extension (once each)."""
    for root in root_types:
        definition = get_object_definition(root, strict=True)
        for field in definition.fields:
            assert isinstance(field, StrawberryField)
            for directive in field.directives:
                if isinstance(directive, RateLimit) and not any(
                    isinstance(e, RateLimitExtension) and e.directive is directive
                    for e in field.extensions
                ):
                    graphql_name = field.graphql_name or to_camel_case(field.python_name)
                    name = f"{definition.name}.{graphql_name}"
                    # First in the list is innermost: Strawberry wraps the resolver in each
                    # extension in turn, so the permission check runs before the count. A
                    # caller who may not call the field never spends an allowance (else
                    # anyone could exhaust another organization's ORGANIZATION limit).
                    field.extensions.insert(0, RateLimitExtension(name, directive))
