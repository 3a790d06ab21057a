"""The subscription tiers and what each allows (SECURITY_POLICY.txt 5.1 for seats)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
    price_id: str | None


def plans(settings: Settings) -> list[Plan]:
    return [
        Plan(Tier.STARTER, "Starter", 1, 20, settings.stripe_price_starter),
        Plan(Tier.PROFESSIONAL, "Professional", 5, 120, settings.stripe_price_professional),
        Plan(Tier.ENTERPRISE, "Enterprise", None, 600, settings.stripe_price_enterprise),
    ]


def plan_for(settings: Settings, tier: Tier) -> Plan:
    return next(plan for plan in plans(settings) if plan.tier == tier)
