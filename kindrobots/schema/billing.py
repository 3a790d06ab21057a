"""Billing: an organization's plan state, Checkout and the customer portal."""

from __future__ import annotations

from datetime import datetime

import strawberry

from kindrobots.billing.plans import Tier
from kindrobots.db.enums import Role
from kindrobots.resolvers import billing
from kindrobots.schema.base import Info
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.permissions import OrganizationArgument, granted, requires


@strawberry.type(name="Billing")
class BillingType:
    tier: Tier = strawberry.field(description="The tier whose limits apply now.")
    status: str = strawberry.field(
        description="The Stripe subscription status (active, trialing, past_due, canceled, "
        "unpaid, …), or `none` without a subscription."
    )
    current_period_end: datetime | None
    cancel_at_period_end: bool
    trial_end: datetime | None
    grace_ends_at: datetime | None = strawberry.field(
        description="While past due: when the tier lapses to Starter."
    )
    seats_used: int
    seat_limit: int | None
    tokens_used: int = strawberry.field(description="Tokens used in the current period.")
    token_allowance: int | None

    @classmethod
    def from_view(cls, view: billing.BillingView) -> BillingType:
        return cls(
            tier=view.tier,
            status=view.status,
            current_period_end=view.current_period_end,
            cancel_at_period_end=view.cancel_at_period_end,
            trial_end=view.trial_end,
            grace_ends_at=view.grace_ends_at,
            seats_used=view.seats_used,
            seat_limit=view.seat_limit,
            tokens_used=view.tokens_used,
            token_allowance=view.token_allowance,
        )


@strawberry.type
class CheckoutSession:
    url: str


@strawberry.type
class BillingPortalSession:
    url: str


@strawberry.input
class CheckoutInput:
    organization_id: strawberry.ID
    tier: Tier
    success_url: str
    cancel_url: str


@strawberry.type
class BillingMutation:
    @strawberry.mutation(
        extensions=requires(Role.OWNER, OrganizationArgument("input.organization_id")),
        directives=[RateLimit(limit=20, window=60, per=RateLimitKey.ORGANIZATION)],
    )
    async def create_checkout_session(self, info: Info, input: CheckoutInput) -> CheckoutSession:
        grant = granted(info)
        services = info.context.services
        gateway = billing.require_gateway(services.settings, services.stripe)
        url = await billing.create_checkout(
            services.read,
            services.write,
            gateway,
            grant.actor,
            info.now(),
            services.settings,
            grant.organization_id,
            Tier(input.tier),
            input.success_url,
            input.cancel_url,
        )
        return CheckoutSession(url=url)

    @strawberry.mutation(
        extensions=requires(Role.OWNER, OrganizationArgument("organization_id")),
        directives=[RateLimit(limit=20, window=60, per=RateLimitKey.ORGANIZATION)],
    )
    async def create_billing_portal_session(
        self, info: Info, organization_id: strawberry.ID, return_url: str
    ) -> BillingPortalSession:
        grant = granted(info)
        services = info.context.services
        gateway = billing.require_gateway(services.settings, services.stripe)
        url = await billing.create_portal(
            services.read,
            services.write,
            gateway,
            grant.actor,
            info.now(),
            services.settings,
            grant.organization_id,
            return_url,
        )
        return BillingPortalSession(url=url)
