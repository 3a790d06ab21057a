"""Chat usage per project and UTC day, and the token budgets checked against it.

Usage is counted in the database, in the transaction that stores each reply, so every
instance checks the same numbers; the chat target reads today's and this month's
totals in the statement it already makes, so a budget costs no statement of its own.
The check happens before the upstream call: a spent budget costs the customer nothing.
Replies in flight when a budget runs out still land (at most the project's per-minute
chat limit of them), so a budget can be overshot by those replies, never by more.

A budget the customer set (``dailyTokenBudget``, ``monthlyTokenBudget``, below the plan's)
refuses with RATE_LIMITED until the period ends; the plan's own budget refuses with
PAYMENT_REQUIRED (an upgrade helps, waiting does too: ``retryAfter`` says how long).
The owner hears of a spent budget once per project and period (``budget.exhausted``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import WidgetActor
from kindrobots.billing.plans import Plan
from kindrobots.db.models import BudgetAlert, Project, ProjectUsage
from kindrobots.errors import BadUserInput, PaymentRequired, PublicError, RateLimited
from kindrobots.resolvers import security_events

BUDGET_EXHAUSTED = "budget.exhausted"
MAX_USAGE_DAYS = 366


def _upsert(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


async def count(
    session: AsyncSession,
    now: datetime,
    project_id: uuid.UUID,
    organization_id: uuid.UUID,
    *,
    messages: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    refusals: int = 0,
) -> None:
    """Add to the project's usage of ``now``'s UTC day: one upsert, whoever is first."""
    statement = _upsert(session)(ProjectUsage).values(
        project_id=project_id,
        day=now.astimezone(UTC).date(),
        organization_id=organization_id,
        messages=messages,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        refusals=refusals,
    )
    added = statement.excluded
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["project_id", "day"],
            set_={
                "messages": ProjectUsage.messages + added.messages,
                "input_tokens": ProjectUsage.input_tokens + added.input_tokens,
                "output_tokens": ProjectUsage.output_tokens + added.output_tokens,
                "refusals": ProjectUsage.refusals + added.refusals,
            },
        )
    )


@dataclass(frozen=True)
class Budget:
    """One period's token budget in force: the lower of the plan's and the customer's."""

    name: str  # the project field: dailyTokenBudget, monthlyTokenBudget
    limit: int
    from_plan: bool  # the plan's own budget (an upgrade raises it)


def _in_force(name: str, plan_limit: int | None, own: int | None) -> Budget | None:
    if own is not None and (plan_limit is None or own < plan_limit):
        return Budget(name, own, from_plan=False)
    if plan_limit is None:
        return None
    return Budget(name, plan_limit, from_plan=True)


def daily_budget(plan: Plan, project: Project) -> Budget | None:
    return _in_force("dailyTokenBudget", plan.daily_token_budget, project.daily_token_budget)


def monthly_budget(plan: Plan, project: Project) -> Budget | None:
    return _in_force("monthlyTokenBudget", plan.monthly_tokens, project.monthly_token_budget)


def _next_month(today: date) -> date:
    return (today.replace(day=1) + timedelta(days=32)).replace(day=1)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True)
class Refusal:
    """A chat message refused by a spent budget (or cap): the error for the caller, and
    what the usage and the owner's security event record."""

    error: PublicError
    budget: str
    period: str | None = None  # day:YYYY-MM-DD / month:YYYY-MM; None: no owner event
    limit: int = 0
    used: int = 0
    from_plan: bool = False


def _refuse(budget: Budget, used: int, period: str, until: datetime, now: datetime) -> Refusal:
    retry_after = max(1, int((until - now).total_seconds()))
    word = "today" if budget.name == "dailyTokenBudget" else "this month"
    error: PublicError
    if budget.from_plan:
        error = PaymentRequired(
            f"This chat has used its plan's token allowance for {word}; the site owner "
            "can upgrade the plan.",
            retryAfter=retry_after,
            limit=budget.name,
        )
    else:
        error = RateLimited(
            retry_after,
            f"This chat has used its token budget for {word}; try again in {retry_after} s.",
            limit=budget.name,
        )
    return Refusal(error, budget.name, period, budget.limit, used, budget.from_plan)


def check_budgets(
    plan: Plan, project: Project, day_tokens: int, month_tokens: int, now: datetime
) -> Refusal | None:
    """The refusal when this month's or today's budget is spent, else None (no I/O)."""
    today = now.astimezone(UTC).date()
    monthly = monthly_budget(plan, project)
    if monthly is not None and month_tokens >= monthly.limit:
        until = _midnight(_next_month(today))
        return _refuse(monthly, month_tokens, f"month:{today:%Y-%m}", until, now)
    daily = daily_budget(plan, project)
    if daily is not None and day_tokens >= daily.limit:
        until = _midnight(today + timedelta(days=1))
        return _refuse(daily, day_tokens, f"day:{today.isoformat()}", until, now)
    return None


def cap_refusal(error: PublicError, project: Project) -> Refusal:
    return Refusal(error, "conversationTokenCap", None, project.conversation_token_cap or 0)


async def record_refusal(
    session: AsyncSession, actor: WidgetActor, now: datetime, refusal: Refusal
) -> bool:
    """Count the refused message; tell the owner about a spent budget once per project
    and period (the alert's primary key decides, on every instance). True when told."""
    await count(session, now, actor.project_id, actor.organization_id, refusals=1)
    if refusal.period is None:
        return False
    inserted = await session.execute(
        _upsert(session)(BudgetAlert)
        .values(project_id=actor.project_id, period=refusal.period, occurred_at=now)
        .on_conflict_do_nothing(index_elements=["project_id", "period"])
    )
    if not inserted.rowcount:  # type: ignore[attr-defined]
        return False
    await security_events.record(
        session,
        actor,
        now,
        BUDGET_EXHAUSTED,
        organization_id=actor.organization_id,
        details={
            "projectId": str(actor.project_id),
            "budget": refusal.budget,
            "period": refusal.period,
            "limit": refusal.limit,
            "used": refusal.used,
            "fromPlan": refusal.from_plan,
        },
    )
    return True


@dataclass(frozen=True)
class UsageDay:
    day: date
    messages: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    refusals: int = 0


def usage_days(rows: list[ProjectUsage], days: int, today: date) -> list[UsageDay]:
    """The last ``days`` UTC days up to ``today``, oldest first, a zero row for a day
    without chat."""
    found = {row.day: row for row in rows}
    first = today - timedelta(days=days - 1)
    result = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = found.get(day)
        result.append(
            UsageDay(day, row.messages, row.input_tokens, row.output_tokens, row.refusals)
            if row
            else UsageDay(day)
        )
    return result


def check_days(days: int) -> int:
    if not 1 <= days <= MAX_USAGE_DAYS:
        raise BadUserInput("days", f"days is 1 to {MAX_USAGE_DAYS}.")
    return days
