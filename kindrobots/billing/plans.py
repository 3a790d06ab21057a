"""The subscription tiers and what each allows (SECURITY_POLICY.txt 5.1 for seats).

This table is the one place plan facts live: seats (invitations), the chat rate limit
(``@rateLimit(fromPlan: true)``), the monthly token allowance and the Stripe price of
each tier. Which tier applies *now* is :func:`effective_tier`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from kindrobots.config import Settings


class Tier(enum.Enum):
    STARTER = "STARTER"
    PROFESSIONAL = "PROFESSIONAL"
    ENTERPRISE = "ENTERPRISE"


@dataclass(frozen=True)
class Plan:
    tier: Tier
    name: str
    admin_seats: int | None  # None: unlimited
    chat_messages_per_minute: int
    monthly_tokens: int | None  # None: unlimited
    price_id: str | None
    # Each project's default token budget per UTC day (None: unlimited); its monthly
    # default is ``monthly_tokens``. A customer may set lower ones, never higher.
    daily_token_budget: int | None = None


# Each project's token budgets per UTC day and month on each tier (None: unlimited);
# no setting changes them, so the rules that check a project's own budgets need none.
TOKEN_BUDGETS: dict[Tier, tuple[int | None, int | None]] = {
    Tier.STARTER: (20_000, 200_000),
    Tier.PROFESSIONAL: (500_000, 5_000_000),
    Tier.ENTERPRISE: (None, None),
}


def plans(settings: Settings) -> list[Plan]:
    return [
        Plan(
            Tier.STARTER,
            "Starter",
            1,
            20,
            TOKEN_BUDGETS[Tier.STARTER][1],
            settings.stripe_price_starter,
            daily_token_budget=TOKEN_BUDGETS[Tier.STARTER][0],
        ),
        Plan(
            Tier.PROFESSIONAL,
            "Professional",
            5,
            120,
            TOKEN_BUDGETS[Tier.PROFESSIONAL][1],
            settings.stripe_price_professional,
            daily_token_budget=TOKEN_BUDGETS[Tier.PROFESSIONAL][0],
        ),
        Plan(Tier.ENTERPRISE, "Enterprise", None, 600, None, settings.stripe_price_enterprise),
    ]


def plan_for(settings: Settings, tier: Tier) -> Plan:
    return next(plan for plan in plans(settings) if plan.tier == tier)


def tier_for_price(settings: Settings, price_id: str | None) -> Tier | None:
    """The tier a Stripe price buys; None for a price that is none of ours."""
    if not price_id:
        return None
    return next((plan.tier for plan in plans(settings) if plan.price_id == price_id), None)


def effective_tier(tier: str | Tier, grace_until: datetime | None, now: datetime) -> Tier:
    """The tier whose limits apply at ``now``: the granted tier, except that a past-due
    subscription's grace period (``grace_until``) has run out, when Starter applies."""
    granted = tier if isinstance(tier, Tier) else Tier(tier)
    if grace_until is not None and now >= grace_until:
        return Tier.STARTER
    return granted
