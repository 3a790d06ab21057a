"""What a breach notification needs (SECURITY_POLICY section 8.3), for one organization and
one window: whom to notify, what data is held, what happened, and by when to tell them.

:func:`incident_report` reads; :func:`to_document` is the stable JSON shape
(``report`` version 1) and :func:`to_markdown` the same for a person to read.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.db.enums import Role
from kindrobots.db.models import AuditEvent, Membership, Organization, SecurityEvent, User
from kindrobots.errors import BadUserInput
from kindrobots.ids import to_global_id
from kindrobots.resolvers.data_rights import DataCounts, data_counts

REPORT_VERSION = 1
NOTIFICATION_WINDOW = timedelta(hours=72)
EVENT_LIMIT = 1000
"""Events listed per kind; the totals count them all."""


@dataclass(frozen=True)
class Owner:
    user_id: uuid.UUID
    email: str
    display_name: str


@dataclass(frozen=True)
class IncidentReport:
    organization: Organization
    since: datetime
    until: datetime
    confirmed_at: datetime
    generated_at: datetime
    owners: list[Owner]
    counts: DataCounts
    security_events: Sequence[tuple[SecurityEvent, str | None]]
    security_event_total: int
    audit_events: list[AuditEvent]
    audit_event_total: int

    @property
    def deadline(self) -> datetime:
        return self.confirmed_at + NOTIFICATION_WINDOW


async def incident_report(
    session: AsyncSession,
    now: datetime,
    organization: Organization,
    since: datetime,
    until: datetime | None = None,
    confirmed_at: datetime | None = None,
    limit: int = EVENT_LIMIT,
) -> IncidentReport:
    """The report for ``[since, until)`` (until defaults to now); the 72-hour deadline
    runs from ``confirmed_at`` (default now).

    Security events count when they name the organization or one of its members (a
    member's sign-in failures concern every organization the member can open).
    """
    until = until or now
    confirmed_at = confirmed_at or now
    if since >= until:
        raise BadUserInput("since", "--since must be before --until.")
    organization_id = organization.id
    owners = [
        Owner(*row)
        for row in await session.execute(
            select(User.id, User.email, User.display_name)
            .join(Membership, Membership.user_id == User.id)
            .where(
                Membership.organization_id == organization_id,
                Membership.role == Role.OWNER.value,
            )
            .order_by(User.email)
        )
    ]
    members = select(Membership.user_id).where(Membership.organization_id == organization_id)
    security_scope = (
        SecurityEvent.occurred_at >= since,
        SecurityEvent.occurred_at < until,
        or_(
            SecurityEvent.organization_id == organization_id,
            SecurityEvent.user_id.in_(members),
        ),
    )
    audit_scope = (
        AuditEvent.organization_id == organization_id,
        AuditEvent.created_at >= since,
        AuditEvent.created_at < until,
    )
    security_total, audit_total = (
        await session.execute(
            select(
                select(func.count()).where(*security_scope).scalar_subquery(),
                select(func.count()).select_from(AuditEvent).where(*audit_scope).scalar_subquery(),
            )
        )
    ).one()
    security_events = [
        (event, email)
        for event, email in await session.execute(
            select(SecurityEvent, User.email)
            .outerjoin(User, User.id == SecurityEvent.user_id)
            .where(*security_scope)
            .order_by(SecurityEvent.occurred_at, SecurityEvent.id)
            .limit(limit)
        )
    ]
    audit_events = list(
        await session.scalars(
            select(AuditEvent)
            .where(*audit_scope)
            .order_by(AuditEvent.created_at, AuditEvent.sequence)
            .limit(limit)
        )
    )
    return IncidentReport(
        organization=organization,
        since=since,
        until=until,
        confirmed_at=confirmed_at,
        generated_at=now,
        owners=owners,
        counts=await data_counts(session, organization_id),
        security_events=security_events,
        security_event_total=int(security_total),
        audit_events=audit_events,
        audit_event_total=int(audit_total),
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def to_document(report: IncidentReport) -> dict[str, Any]:
    """The report as JSON-able data; keys and nesting are stable (``report`` version)."""
    organization = report.organization
    return {
        "report": REPORT_VERSION,
        "generatedAt": report.generated_at.isoformat(),
        "organization": {
            "id": to_global_id("Organization", organization.id),
            "uuid": str(organization.id),
            "name": organization.name,
            "slug": organization.slug,
            "tier": organization.tier,
        },
        "window": {"since": report.since.isoformat(), "until": report.until.isoformat()},
        "confirmedAt": report.confirmed_at.isoformat(),
        "notificationDeadline": report.deadline.isoformat(),
        "ownersToNotify": [
            {
                "userId": to_global_id("User", owner.user_id),
                "email": owner.email,
                "displayName": owner.display_name,
            }
            for owner in report.owners
        ],
        "dataHeld": {_camel(name): count for name, count in asdict(report.counts).items()},
        "securityEvents": {
            "total": report.security_event_total,
            "truncated": report.security_event_total > len(report.security_events),
            "events": [
                {
                    "id": str(event.id),
                    "event": event.event,
                    "occurredAt": event.occurred_at.isoformat(),
                    "userId": to_global_id("User", event.user_id) if event.user_id else None,
                    "userEmail": email,
                    "ip": event.ip,
                    "details": event.details,
                }
                for event, email in report.security_events
            ],
        },
        "auditEvents": {
            "total": report.audit_event_total,
            "truncated": report.audit_event_total > len(report.audit_events),
            "events": [
                {
                    "id": to_global_id("AuditEvent", event.id),
                    "sequence": event.sequence,
                    "action": event.action,
                    "actorKind": event.actor_kind,
                    "actor": event.actor,
                    "targetType": event.target_type,
                    "targetId": event.target_id,
                    "ip": event.ip,
                    "createdAt": event.created_at.isoformat(),
                    "metadata": event.details,
                }
                for event in report.audit_events
            ],
        },
    }


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(document: dict[str, Any]) -> str:
    """The JSON document (:func:`to_document`) as a report for people."""
    organization = document["organization"]
    lines = [
        f"# Incident report: {organization['name']} ({organization['slug']})",
        "",
        f"- Organization ID: {organization['id']} ({organization['uuid']})",
        f"- Window: {document['window']['since']} to {document['window']['until']}",
        f"- Breach confirmed: {document['confirmedAt']}",
        f"- **Notify affected customers by: {document['notificationDeadline']}** "
        "(72 hours from confirmation, SECURITY_POLICY 8.3)",
        f"- Generated: {document['generatedAt']}",
        "",
        "## Owners to notify",
        "",
    ]
    lines += [
        f"- {_cell(owner['displayName'])} <{owner['email']}>"
        for owner in document["ownersToNotify"]
    ] or ["- (none)"]
    lines += ["", "## Data held", "", "| category | count |", "|---|---|"]
    lines += [f"| {name} | {count} |" for name, count in document["dataHeld"].items()]
    security = document["securityEvents"]
    lines += [
        "",
        f"## Security events in the window ({security['total']})",
        "",
        "| time | event | user | ip |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {e['occurredAt']} | {_cell(e['event'])} | {_cell(e['userEmail'])} | {_cell(e['ip'])} |"
        for e in security["events"]
    ]
    if security["truncated"]:
        lines.append(f"\n(first {len(security['events'])} of {security['total']} listed)")
    audit = document["auditEvents"]
    lines += [
        "",
        f"## Audit events in the window ({audit['total']})",
        "",
        "| time | action | actor | target |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {e['createdAt']} | {_cell(e['action'])} | {e['actorKind']}:{_cell(e['actor'])} "
        f"| {_cell(e['targetType'])} {_cell(e['targetId'])} |"
        for e in audit["events"]
    ]
    if audit["truncated"]:
        lines.append(f"\n(first {len(audit['events'])} of {audit['total']} listed)")
    return "\n".join(lines) + "\n"
