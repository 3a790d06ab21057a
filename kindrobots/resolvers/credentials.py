"""Customer LLM credentials: sealed before they touch the database, never shown again."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import Actor, UserActor
from kindrobots.config import Settings
from kindrobots.db.enums import LlmProvider
from kindrobots.db.locks import lock_organization
from kindrobots.db.models import LlmCredential
from kindrobots.errors import BadUserInput
from kindrobots.resolvers import audit, validation
from kindrobots.resolvers.access import delete_owned, member_organizations, scoped_get
from kindrobots.security.crypto import DecryptionError, KeyRing, Sealed
from kindrobots.security.redaction import register_secret
from kindrobots.security.ssrf import check_url

MIN_KEY = 8
MAX_KEY = 1000


def associated_data(organization_id: uuid.UUID, credential_id: uuid.UUID) -> bytes:
    """Binds a ciphertext to its row: copied to another row or organization, it fails."""
    return f"llm_credential:{organization_id}:{credential_id}".encode()


def open_api_key(keyring: KeyRing, row: LlmCredential) -> str:
    return keyring.open(
        Sealed(row.key_id, row.nonce, row.ciphertext), associated_data(row.organization_id, row.id)
    )


@dataclass
class NewCredential:
    """A checked credential, sealed and ready to store (see :func:`prepare`)."""

    row: LlmCredential


async def prepare(
    settings: Settings,
    keyring: KeyRing,
    now: datetime,
    organization_id: uuid.UUID,
    provider: LlmProvider,
    api_key: str,
    label: str,
    base_url: str | None,
) -> NewCredential:
    """Check and seal a new credential. The base URL resolves DNS, so this runs before
    the transaction that stores it opens."""
    register_secret(api_key)
    api_key = api_key.strip()
    if not MIN_KEY <= len(api_key) <= MAX_KEY:
        raise BadUserInput("apiKey", f"API keys must be {MIN_KEY} to {MAX_KEY} characters long.")
    label = validation.text(label, "label", 100)
    if provider is LlmProvider.OPENAI_COMPATIBLE and not base_url:
        raise BadUserInput("baseUrl", "OpenAI-compatible providers need a base URL.")
    if base_url:
        base_url = await check_url(
            base_url.strip(),
            settings.outbound_allow,
            "baseUrl",
            https_only=settings.is_production,
        )
    credential_id = uuid.uuid4()
    sealed = keyring.seal(api_key, associated_data(organization_id, credential_id))
    row = LlmCredential(
        id=credential_id,
        organization_id=organization_id,
        provider=provider.value,
        label=label,
        base_url=base_url,
        key_id=sealed.key_id,
        nonce=sealed.nonce,
        ciphertext=sealed.ciphertext,
        key_hint=api_key[-4:],
        created_at=now,
    )
    return NewCredential(row)


async def add_credential(
    session: AsyncSession, actor: UserActor, now: datetime, credential: NewCredential
) -> LlmCredential:
    row = credential.row
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        actor,
        now,
        organization_id=row.organization_id,
        action="llm_credential.add",
        target=("LlmCredential", row.id),
        details={"provider": row.provider, "label": row.label, "keyHint": row.key_hint},
    )
    return row


async def delete_credential(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    credential_id: uuid.UUID,
) -> bool:
    # Ordered with createAgent/updateAgent, which check that their credential exists.
    await lock_organization(session, organization_id)
    row = await scoped_get(session, actor, LlmCredential, credential_id)
    await delete_owned(session, LlmCredential, row.id, organization_id)
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="llm_credential.delete",
        target=("LlmCredential", row.id),
        details={"label": row.label, "keyHint": row.key_hint},
    )
    return True


async def get_credential(
    session: AsyncSession, actor: UserActor, credential_id: uuid.UUID
) -> LlmCredential:
    return await scoped_get(session, actor, LlmCredential, credential_id)


async def list_credentials(
    session: AsyncSession, actor: UserActor, organization_id: uuid.UUID
) -> list[LlmCredential]:
    rows = await session.scalars(
        select(LlmCredential)
        .where(
            LlmCredential.organization_id == organization_id,
            LlmCredential.organization_id.in_(member_organizations(actor)),
        )
        .order_by(LlmCredential.created_at, LlmCredential.id)
    )
    return list(rows.all())


@dataclass
class RotationBatch:
    rotated: int = 0
    failed: list[uuid.UUID] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not self.rotated and not self.failed


async def count_under_active_key(session: AsyncSession, keyring: KeyRing) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(LlmCredential)
        .where(LlmCredential.key_id == keyring.active_key_id)
    )
    return count or 0


async def rotate_batch(
    session: AsyncSession,
    actor: Actor,
    now: datetime,
    keyring: KeyRing,
    batch_size: int,
    skip: set[uuid.UUID],
) -> RotationBatch:
    """Re-seal up to ``batch_size`` secrets not yet under the first key (except ``skip``,
    those that failed before) and audit the batch on the platform chain.

    The caller commits each batch and calls again until one is ``done``; only rows
    not yet under the active key are selected, so an interrupted run simply continues
    where it stopped when started again.
    """
    rows = (
        await session.scalars(
            select(LlmCredential)
            .where(LlmCredential.key_id != keyring.active_key_id, LlmCredential.id.not_in(skip))
            .order_by(LlmCredential.id)
            .limit(batch_size)
            # Wait for a row in use (an agent being saved with it locks it); skipping
            # it would leave it under the old key while the run reports success.
            .with_for_update()
        )
    ).all()
    batch = RotationBatch()
    for row in rows:
        aad = associated_data(row.organization_id, row.id)
        try:
            plaintext = keyring.open(Sealed(row.key_id, row.nonce, row.ciphertext), aad)
        except DecryptionError:
            batch.failed.append(row.id)
            continue
        sealed = keyring.seal(plaintext, aad)
        row.key_id, row.nonce, row.ciphertext = sealed.key_id, sealed.nonce, sealed.ciphertext
        batch.rotated += 1
    if not batch.done:
        await audit.record(
            session,
            actor,
            now,
            organization_id=None,
            action="keys.rotate",
            details={
                "keyId": keyring.active_key_id,
                "rotated": batch.rotated,
                "failed": len(batch.failed),
            },
        )
    return batch
