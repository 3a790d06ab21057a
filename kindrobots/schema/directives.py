"""``@rateLimit``: limits declared on fields in the schema, enforced by one field extension.

The directive is printed in ``schema.graphql``, so a client can read every limit.
``build_schema`` gives each field that carries it a :class:`RateLimitExtension`;
no resolver body counts calls itself.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Iterable
from typing import Any

import strawberry
from strawberry.extensions import FieldExtension
from strawberry.schema_directive import Location
from strawberry.types.base import get_object_definition
from strawberry.types.field import StrawberryField
from strawberry.utils.str_converters import to_camel_case

from kindrobots.resolvers import ratelimit
from kindrobots.schema.base import Info


@strawberry.enum
class RateLimitKey(enum.Enum):
    CALLER = "CALLER"
    IP = "IP"
    PROJECT = "PROJECT"
    ORGANIZATION = "ORGANIZATION"


@strawberry.schema_directive(
    locations=[Location.FIELD_DEFINITION],
    name="rateLimit",
    description=(
        "At most `limit` calls per `window` seconds for each `per` key. With `fromPlan`, "
        "the limit per minute comes from the organization's plan (chatMessagesPerMinute) "
        "at the time of the call, and `limit` applies only when there is no plan."
    ),
)
class RateLimit:
    limit: int
    window: int
    per: RateLimitKey | None = RateLimitKey.CALLER
    from_plan: bool | None = False


class RateLimitExtension(FieldExtension):
    def __init__(self, field_name: str, directive: RateLimit) -> None:
        self.field_name = field_name
        self.directive = directive

    async def resolve_async(self, next_: Any, source: Any, info: Info, **kwargs: Any) -> Any:
        await ratelimit.check(
            info.context,
            field=self.field_name,
            limit=self.directive.limit,
            window=self.directive.window,
            per=(self.directive.per or RateLimitKey.CALLER).value,
            from_plan=bool(self.directive.from_plan),
            arguments=kwargs,
        )
        result = next_(source, info, **kwargs)
        if inspect.isasyncgen(result):
            return result
        return await result


def install_rate_limits(root_types: Iterable[type]) -> None:
    """Give every field with ``@rateLimit`` its enforcing extension (once per field)."""
    for root in root_types:
        definition = get_object_definition(root, strict=True)
        for field in definition.fields:
            assert isinstance(field, StrawberryField)
            for directive in field.directives:
                if isinstance(directive, RateLimit) and not any(
                    isinstance(e, RateLimitExtension) for e in field.extensions
                ):
                    graphql_name = field.graphql_name or to_camel_case(field.python_name)
                    name = f"{definition.name}.{graphql_name}"
                    # First in the list is innermost: Strawberry wraps the resolver in each
                    # extension in turn, so the permission check runs before the count. A
                    # caller who may not call the field never spends an allowance (else
                    # anyone could exhaust another organization's ORGANIZATION limit).
                    field.extensions.insert(0, RateLimitExtension(name, directive))
