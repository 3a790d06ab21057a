"""Data rights (SECURITY_POLICY section 10, GDPR): an organization's export, its deletion,
one end user's erasure, and the conversation retention purge.

Deletion is driven by the ORM metadata rather than a hand-kept list, so a table another
change adds is removed with its organization too: every table with an
``organization_id`` column, every table that reaches such rows through a foreign key,
children before parents, and the organization's audit chain head (which has no
foreign key). Only the platform chain keeps a trace: a tombstone without personal data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    delete,
    distinct,
    func,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import Actor, SystemActor
from kindrobots.db import audit_chain
from kindrobots.db.models import (
    Agent,
    AgentManifest,
    AuditEvent,
    AuditHead,
    Base,
    BillingAccount,
    Conversation,
    Invitation,
    LlmCredential,
    Manifest,
    ManifestVersion,
    Membership,
    Message,
    Organization,
    Project,
    User,
)
from kindrobots.errors import BadUserInput, Conflict, NotFound
from kindrobots.ids import to_global_id
from kindrobots.resolvers import audit
from kindrobots.resolvers.access import locked_organization

EXPORT_FORMAT = 1
RETENTION = SystemActor("retention")

ORGANIZATION_EXPORTED = "organization.exported"
ORGANIZATION_DELETED = "organization.deleted"
ORGANIZATION_UPDATED = "organization.updated"
END_USER_DATA_DELETED = "end_user.data_deleted"
CONVERSATIONS_PURGED = "conversations.purged"

MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 3650
MAX_SUBJECT_LENGTH = 255

DELETED_REASON = "This organization was deleted."
BILLED_STATUSES = ("active", "trialing", "past_due", "unpaid", "incomplete")
SUBSCRIPTION_LIVE = "Cancel the organization's subscription before deleting it."


# Deletion plans


def _deletion_plan(
    root: Table, condition: ColumnElement[bool], organization_id: uuid.UUID | None
) -> list[tuple[Table, ColumnElement[bool]]]:
    """(table, rows to delete) for ``root``'s matching rows and everything that hangs on
    them, children first.

    With ``organization_id``, every table with that column is the organization's outright.
    Otherwise a table is reached through a foreign key to a table already in the plan,
    unless the key is ``SET NULL``: such rows outlive their parent by design (the
    database clears the reference).
    """
    scoped: dict[Table, ColumnElement[bool]] = {root: condition}
    tables = Base.metadata.sorted_tables  # parents before children
    for table in tables:
        if table is root:
            continue
        if organization_id is not None and "organization_id" in table.c:
            scoped[table] = table.c.organization_id == organization_id
            continue
        clauses = [
            key.parent.in_(select(key.column).where(scoped[key.column.table]))
            for key in table.foreign_keys
            if key.column.table in scoped and (key.ondelete or "").upper() != "SET NULL"
        ]
        if clauses:
            scoped[table] = or_(*clauses)
    return [(table, scoped[table]) for table in reversed(tables) if table in scoped]


async def _execute_plan(
    session: AsyncSession, plan: Iterable[tuple[Table, ColumnElement[bool]]]
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table, condition in plan:
        result = await session.execute(delete(table).where(condition))
        counts[table.name] = int(result.rowcount)  # type: ignore[attr-defined]
    return counts


# Counts of what an organization holds (export bound, incident report, tombstone)


@dataclass(frozen=True)
class DataCounts:
    members: int
    invitations: int
    end_users: int
    conversations: int
    messages: int
    llm_credentials: int
    projects: int
    agents: int
    manifests: int
    audit_events: int

    @property
    def rows(self) -> int:
        return sum(vars(self).values())


async def data_counts(session: AsyncSession, organization_id: uuid.UUID) -> DataCounts:
    """How many of each kind of data the organization holds, in one statement."""

    def count(model: Any, column: Any = None) -> Any:
        counted = func.count(distinct(column)) if column is not None else func.count()
        return select(counted).where(model.organization_id == organization_id).scalar_subquery()

    row = (
        await session.execute(
            select(
                count(Membership),
                count(Invitation),
                count(Conversation, Conversation.end_user),
                count(Conversation),
                count(Message),
                count(LlmCredential),
                count(Project),
                count(Agent),
                count(Manifest),
                count(AuditEvent),
            )
        )
    ).one()
    return DataCounts(*(int(value) for value in row))


# Export


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _gid(type_name: str, value: uuid.UUID | None) -> str | None:
    return to_global_id(type_name, value) if value is not None else None


def _hint(key: str) -> str:
    return f"…{key[-4:]}"


@dataclass
class OrganizationExport:
    """The archive as a header and sections of rows, each read in batches when iterated
    (``json_chunks`` streams it; ``collect`` builds it in memory for the API)."""

    header: dict[str, Any]
    sections: list[tuple[str, Callable[[], AsyncIterator[dict[str, Any]]]]] = field(
        default_factory=list
    )


async def record_export(
    session: AsyncSession, actor: Actor, now: datetime, organization_id: uuid.UUID
) -> None:
    """Audit an export before any data leaves (the caller commits it, then reads)."""
    await locked_organization(session, organization_id)
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action=ORGANIZATION_EXPORTED,
        target=("Organization", organization_id),
        details={"format": EXPORT_FORMAT},
    )


async def export_organization(
    session: AsyncSession, now: datetime, organization_id: uuid.UUID, batch: int = 500
) -> OrganizationExport:
    """The organization's data; secrets never (credentials and keys as hints only).

    On PostgreSQL the session reads one snapshot (REPEATABLE READ), so the sections
    agree with one another even while the organization keeps working.
    """
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    found = (
        await session.execute(
            select(Organization, BillingAccount)
            .outerjoin(BillingAccount, BillingAccount.organization_id == Organization.id)
            .where(Organization.id == organization_id)
        )
    ).first()
    if found is None:
        raise NotFound()
    organization, billing = found
    header: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "exportedAt": now.isoformat(),
        "organization": {
            "id": to_global_id("Organization", organization.id),
            "name": organization.name,
            "slug": organization.slug,
            "tier": organization.tier,
            "conversationRetentionDays": organization.conversation_retention_days,
            "createdAt": _time(organization.created_at),
        },
        "billing": None
        if billing is None
        else {
            "status": billing.status,
            "tier": billing.tier,
            "currentPeriodStart": _time(billing.current_period_start),
            "currentPeriodEnd": _time(billing.current_period_end),
            "cancelAtPeriodEnd": billing.cancel_at_period_end,
            "trialEnd": _time(billing.trial_end),
        },
    }

    def rows(statement: Any) -> AsyncIterator[Any]:
        async def stream() -> AsyncIterator[Any]:
            result = await session.stream(statement.execution_options(yield_per=batch))
            async for row in result:
                yield row

        return stream()

    async def members() -> AsyncIterator[dict[str, Any]]:
        async for m, u in rows(
            select(Membership, User)
            .join(User, User.id == Membership.user_id)
            .where(Membership.organization_id == organization_id)
            .order_by(Membership.created_at, Membership.id)
        ):
            yield {
                "userId": to_global_id("User", u.id),
                "email": u.email,
                "displayName": u.display_name,
                "role": m.role,
                "joinedAt": _time(m.created_at),
            }

    async def invitations() -> AsyncIterator[dict[str, Any]]:
        async for (i,) in rows(
            select(Invitation)
            .where(Invitation.organization_id == organization_id)
            .order_by(Invitation.created_at, Invitation.id)
        ):
            yield {
                "id": to_global_id("Invitation", i.id),
                "email": i.email,
                "role": i.role,
                "invitedBy": _gid("User", i.invited_by_id),
                "expiresAt": _time(i.expires_at),
                "acceptedAt": _time(i.accepted_at),
                "createdAt": _time(i.created_at),
            }

    async def credentials() -> AsyncIterator[dict[str, Any]]:
        async for (c,) in rows(
            select(LlmCredential)
            .where(LlmCredential.organization_id == organization_id)
            .order_by(LlmCredential.created_at, LlmCredential.id)
        ):
            yield {
                "id": to_global_id("LlmCredential", c.id),
                "provider": c.provider,
                "label": c.label,
                "baseUrl": c.base_url,
                "keyHint": c.key_hint,
                "createdAt": _time(c.created_at),
            }

    async def manifests() -> AsyncIterator[dict[str, Any]]:
        current: dict[str, Any] | None = None
        async for m, v in rows(
            select(Manifest, ManifestVersion)
            .outerjoin(ManifestVersion, ManifestVersion.manifest_id == Manifest.id)
            .where(Manifest.organization_id == organization_id)
            .order_by(Manifest.created_at, Manifest.id, ManifestVersion.version)
        ):
            gid = to_global_id("Manifest", m.id)
            if current is None or current["id"] != gid:
                if current is not None:
                    yield current
                current = {
                    "id": gid,
                    "name": m.name,
                    "version": m.version,
                    "createdAt": _time(m.created_at),
                    "versions": [],
                }
            if v is not None:
                current["versions"].append(
                    {
                        "version": v.version,
                        "sourceUrl": v.source_url,
                        "servers": v.servers,
                        "operations": v.operations,
                        "createdAt": _time(v.created_at),
                    }
                )
        if current is not None:
            yield current

    async def agents() -> AsyncIterator[dict[str, Any]]:
        current: dict[str, Any] | None = None
        async for a, link in rows(
            select(Agent, AgentManifest)
            .outerjoin(AgentManifest, AgentManifest.agent_id == Agent.id)
            .where(Agent.organization_id == organization_id)
            .order_by(Agent.created_at, Agent.id, AgentManifest.position)
        ):
            gid = to_global_id("Agent", a.id)
            if current is None or current["id"] != gid:
                if current is not None:
                    yield current
                current = {
                    "id": gid,
                    "name": a.name,
                    "systemPrompt": a.system_prompt,
                    "model": a.model,
                    "temperature": a.temperature,
                    "llmCredentialId": _gid("LlmCredential", a.llm_credential_id),
                    "manifestIds": [],
                    "createdAt": _time(a.created_at),
                    "updatedAt": _time(a.updated_at),
                }
            if link is not None:
                current["manifestIds"].append(to_global_id("Manifest", link.manifest_id))
        if current is not None:
            yield current

    async def projects() -> AsyncIterator[dict[str, Any]]:
        async for (p,) in rows(
            select(Project)
            .where(Project.organization_id == organization_id)
            .order_by(Project.created_at, Project.id)
        ):
            yield {
                "id": to_global_id("Project", p.id),
                "name": p.name,
                "agentId": to_global_id("Agent", p.agent_id),
                # A credential in effect (it opens the widget): the archive says which
                # one without handing it out again.
                "publishableKeyHint": _hint(p.publishable_key),
                "allowedOrigins": p.allowed_origins,
                "accessMode": p.access_mode,
                "jwksUrl": p.jwks_url,
                "jwtIssuer": p.jwt_issuer,
                "jwtAudience": p.jwt_audience,
                "createdAt": _time(p.created_at),
            }

    async def conversations() -> AsyncIterator[dict[str, Any]]:
        current: dict[str, Any] | None = None
        async for c, m in rows(
            select(Conversation, Message)
            .outerjoin(Message, Message.conversation_id == Conversation.id)
            .where(Conversation.organization_id == organization_id)
            .order_by(Conversation.created_at, Conversation.id, Message.created_at, Message.id)
        ):
            gid = to_global_id("Conversation", c.id)
            if current is None or current["id"] != gid:
                if current is not None:
                    yield current
                current = {
                    "id": gid,
                    "projectId": to_global_id("Project", c.project_id),
                    "endUser": c.end_user,
                    "createdAt": _time(c.created_at),
                    "updatedAt": _time(c.updated_at),
                    "messages": [],
                }
            if m is not None:
                current["messages"].append(
                    {
                        "id": to_global_id("Message", m.id),
                        "role": m.role,
                        "content": m.content,
                        "partial": m.partial,
                        "toolCalls": m.tool_calls,
                        "inputTokens": m.input_tokens,
                        "outputTokens": m.output_tokens,
                        "createdAt": _time(m.created_at),
                    }
                )
        if current is not None:
            yield current

    async def audit_log() -> AsyncIterator[dict[str, Any]]:
        async for (e,) in rows(
            select(AuditEvent)
            .where(AuditEvent.organization_id == organization_id)
            .order_by(AuditEvent.sequence)
        ):
            yield {
                "id": to_global_id("AuditEvent", e.id),
                "sequence": e.sequence,
                "actorKind": e.actor_kind,
                "actor": e.actor,
                "action": e.action,
                "targetType": e.target_type,
                "targetId": e.target_id,
                "metadata": e.details,
                "ip": e.ip,
                "createdAt": _time(e.created_at),
                "hash": e.hash,
            }

    return OrganizationExport(
        header,
        [
            ("members", members),
            ("invitations", invitations),
            ("llmCredentials", credentials),
            ("manifests", manifests),
            ("agents", agents),
            ("projects", projects),
            ("conversations", conversations),
            ("auditLog", audit_log),
        ],
    )


async def json_chunks(export: OrganizationExport) -> AsyncIterator[str]:
    """The archive as JSON text, one row at a time: memory stays flat however large."""
    head = json.dumps(export.header, ensure_ascii=False)
    yield head[:-1]
    for name, section in export.sections:
        yield f", {json.dumps(name)}: ["
        separator = ""
        async for row in section():
            yield separator + json.dumps(row, ensure_ascii=False)
            separator = ", "
        yield "]"
    yield "}\n"


async def collect(export: OrganizationExport) -> dict[str, Any]:
    """The archive as one document (callers bound its size first, by ``data_counts``)."""
    document = dict(export.header)
    for name, section in export.sections:
        document[name] = [row async for row in section()]
    return document


# Organization deletion


@dataclass(frozen=True)
class OrganizationDeletion:
    organization_id: uuid.UUID
    rows: dict[str, int]


def confirmation_matches(organization: Organization, confirmation: str) -> bool:
    typed = confirmation.strip()
    return typed != "" and typed in (organization.slug, organization.name)


async def delete_organization(
    session: AsyncSession,
    actor: Actor,
    now: datetime,
    organization_id: uuid.UUID,
    confirmation: str,
) -> OrganizationDeletion:
    """Remove the organization and everything of it, once its slug or name is typed back.

    The platform chain records a tombstone: the organization's ID, the time, the kind of
    actor and how many rows of each table went, nothing that names a person. After the
    commit the caller publishes :func:`containment.organization_deleted` so open connections end.
    """
    organization = await locked_organization(session, organization_id)
    if not confirmation_matches(organization, confirmation):
        raise BadUserInput(
            "confirmation", "Type the organization's slug or name to confirm the deletion."
        )
    subscription = await session.scalar(
        select(BillingAccount.status).where(
            BillingAccount.organization_id == organization_id,
            BillingAccount.stripe_subscription_id.is_not(None),
            BillingAccount.cancel_at_period_end.is_(False),
        )
    )
    if subscription in BILLED_STATUSES:
        # Stripe would keep charging a customer whose organization no longer exists.
        raise Conflict(SUBSCRIPTION_LIVE)
    root = Organization.__table__
    assert isinstance(root, Table)
    counts = await _execute_plan(
        session, _deletion_plan(root, root.c.id == organization_id, organization_id)
    )
    head = await session.execute(delete(AuditHead).where(AuditHead.chain_id == organization_id))
    counts["audit_heads"] = int(head.rowcount)  # type: ignore[attr-defined]
    session.expunge(organization)
    tombstone = AuditEvent(
        organization_id=None,
        actor_kind=actor.kind,
        # A system job's name is no one's; a person is kept out of what outlives the data.
        actor=actor.name if isinstance(actor, SystemActor) else actor.kind,
        actor_id=None,
        action=ORGANIZATION_DELETED,
        target_type="Organization",
        target_id=to_global_id("Organization", organization_id),
        details={
            "organizationId": str(organization_id),
            "rows": {name: count for name, count in sorted(counts.items()) if count},
        },
        ip=None,
        created_at=now,
    )
    await audit_chain.append(session, tombstone, audit_chain.session_key(session))
    return OrganizationDeletion(organization_id, counts)


# One end user's conversations


@dataclass(frozen=True)
class EndUserDeletion:
    conversations: int
    messages: int


def subject_digest(key: bytes, organization_id: uuid.UUID, subject: str) -> str:
    """A keyed hash of an end-user subject: the audit log can tell two erasures of one
    subject apart from two subjects without holding the subject itself."""
    message = f"{organization_id}:{subject}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _conversation_plan(condition: ColumnElement[bool]) -> list[tuple[Table, ColumnElement[bool]]]:
    root = Conversation.__table__
    assert isinstance(root, Table)
    return _deletion_plan(root, condition, None)


async def _delete_conversations(
    session: AsyncSession, condition: ColumnElement[bool]
) -> EndUserDeletion:
    counts = await _execute_plan(session, _conversation_plan(condition))
    return EndUserDeletion(counts.get("conversations", 0), counts.get("messages", 0))


async def delete_end_user_data(
    session: AsyncSession,
    actor: Actor,
    now: datetime,
    organization_id: uuid.UUID,
    subject: str,
    project_id: uuid.UUID | None = None,
) -> EndUserDeletion:
    """Erase one end user's conversations (and everything hanging on them) by subject."""
    if not subject or len(subject) > MAX_SUBJECT_LENGTH:
        raise BadUserInput("subject", f"Give the end user's subject (1-{MAX_SUBJECT_LENGTH}).")
    await locked_organization(session, organization_id)
    conditions = [Conversation.organization_id == organization_id, Conversation.end_user == subject]
    if project_id is not None:
        owned = await session.scalar(
            select(Project.id).where(
                Project.id == project_id, Project.organization_id == organization_id
            )
        )
        if owned is None:
            raise NotFound()
        conditions.append(Conversation.project_id == project_id)
    deleted = await _delete_conversations(session, and_(*conditions))
    details: dict[str, Any] = {
        "subjectHash": subject_digest(audit_chain.session_key(session), organization_id, subject),
        "conversations": deleted.conversations,
        "messages": deleted.messages,
    }
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action=END_USER_DATA_DELETED,
        target=("Project", project_id) if project_id is not None else None,
        details=details,
    )
    return deleted


# Retention


def validate_retention_days(days: int | None) -> int | None:
    if days is not None and not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS:
        raise BadUserInput(
            "conversationRetentionDays",
            f"Keep conversations {MIN_RETENTION_DAYS}-{MAX_RETENTION_DAYS} days, or null "
            "to keep them.",
        )
    return days


async def set_conversation_retention(
    session: AsyncSession,
    actor: Actor,
    now: datetime,
    organization_id: uuid.UUID,
    days: int | None,
) -> Organization:
    """Set how long idle conversations are kept (None: for good); audited when changed."""
    validate_retention_days(days)
    organization = await locked_organization(session, organization_id)
    previous = organization.conversation_retention_days
    if previous != days:
        organization.conversation_retention_days = days
        await audit.record(
            session,
            actor,
            now,
            organization_id=organization_id,
            action=ORGANIZATION_UPDATED,
            target=("Organization", organization_id),
            details={"conversationRetentionDays": {"from": previous, "to": days}},
        )
    return organization


async def organizations_with_retention(
    session: AsyncSession, after: uuid.UUID | None, limit: int
) -> list[uuid.UUID]:
    """One page (by ID) of the organizations that have a retention setting."""
    statement = select(Organization.id).where(Organization.conversation_retention_days.is_not(None))
    if after is not None:
        statement = statement.where(Organization.id > after)
    return list(await session.scalars(statement.order_by(Organization.id).limit(limit)))


@dataclass
class PurgeBatch:
    conversations: int = 0
    messages: int = 0
    done: bool = True


async def purge_conversations_batch(
    session: AsyncSession,
    actor: Actor,
    now: datetime,
    organization_id: uuid.UUID,
    batch_size: int,
    purged_before: EndUserDeletion,
) -> PurgeBatch:
    """Delete up to ``batch_size`` of the organization's conversations idle past its
    retention, under the organization's lock.

    The lock serialises concurrent runs (cron on every instance): each conversation
    goes in exactly one batch of one run, and the lock order (organization, then its
    rows) is the one every other rule takes, so runs never deadlock with them or each
    other. The batch that finds the organization done audits the run's totals
    (``purged_before`` plus its own) once, if it removed anything.
    """
    try:
        organization = await locked_organization(session, organization_id)
    except NotFound:
        return PurgeBatch()
    days = organization.conversation_retention_days
    if days is None:
        return PurgeBatch()
    cutoff = now - timedelta(days=days)
    ids = list(
        await session.scalars(
            select(Conversation.id)
            .where(
                Conversation.organization_id == organization_id,
                Conversation.updated_at < cutoff,
            )
            .order_by(Conversation.updated_at, Conversation.id)
            .limit(batch_size)
        )
    )
    deleted = (
        await _delete_conversations(session, Conversation.id.in_(ids))
        if ids
        else EndUserDeletion(0, 0)
    )
    batch = PurgeBatch(deleted.conversations, deleted.messages, done=len(ids) < batch_size)
    total_conversations = purged_before.conversations + batch.conversations
    if batch.done and total_conversations:
        await audit.record(
            session,
            actor,
            now,
            organization_id=organization_id,
            action=CONVERSATIONS_PURGED,
            details={
                "conversations": total_conversations,
                "messages": purged_before.messages + batch.messages,
                "retentionDays": days,
                "cutoff": cutoff.isoformat(),
            },
        )
    return batch
