"""Customer LLM credentials: sealed before they touch the database, never shown again."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select

from kindrobots.auth.roles import Role
from kindrobots.context import RequestContext, Services
from kindrobots.db.locks import lock_organization
from kindrobots.db.models import LlmCredential
from kindrobots.resolvers import audit, validation
from kindrobots.resolvers.access import (
    delete_owned,
    member_organizations,
    require_role,
    require_viewer,
    scoped_get,
)
from kindrobots.security.crypto import DecryptionError, KeyRing, Sealed
from kindrobots.security.errors import BadUserInput
from kindrobots.security.redaction import register_secret
from kindrobots.security.ssrf import check_url

MIN_KEY = 8
MAX_KEY = 1000


class LlmProvider(enum.Enum):
    OPENAI = "OPENAI"
    ANTHROPIC = "ANTHROPIC"
    OPENAI_COMPATIBLE = "OPENAI_COMPATIBLE"
    DEMO = "DEMO"


def associated_data(organization_id: uuid.UUID, credential_id: uuid.UUID) -> bytes:
    """Binds a ciphertext to its row: copied to another row or organization, it fails."""
    return f"llm_credential:{organization_id}:{credential_id}".encode()


def open_api_key(keyring: KeyRing, row: LlmCredential) -> str:
    return keyring.open(
        Sealed(row.key_id, row.nonce, row.ciphertext), associated_data(row.organization_id, row.id)
    )


async def add_credential(
    ctx: RequestContext,
    organization_id: uuid.UUID,
    provider: LlmProvider,
    api_key: str,
    label: str,
    base_url: str | None,
) -> LlmCredential:
    register_secret(api_key)
    await require_role(ctx, organization_id, Role.ADMIN)
    viewer = await require_viewer(ctx)
    api_key = api_key.strip()
    if not MIN_KEY <= len(api_key) <= MAX_KEY:
        raise BadUserInput("apiKey", f"API keys must be {MIN_KEY} to {MAX_KEY} characters long.")
    label = validation.text(label, "label", 100)
    if provider is LlmProvider.OPENAI_COMPATIBLE and not base_url:
        raise BadUserInput("baseUrl", "OpenAI-compatible providers need a base URL.")
    if base_url:
        base_url = await check_url(
            base_url.strip(),
            ctx.settings.outbound_allow,
            "baseUrl",
            https_only=ctx.settings.is_production,
        )
    credential_id = uuid.uuid4()
    sealed = ctx.services.keyring.seal(api_key, associated_data(organization_id, credential_id))
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
        created_at=ctx.now(),
    )
    async with ctx.services.write() as session:
        session.add(row)
        await session.flush()
        await audit.record(
            session,
            ctx,
            organization_id=organization_id,
            actor_id=viewer.user.id,
            action="llm_credential.add",
            target=("LlmCredential", credential_id),
            details={"provider": provider.value, "label": label, "keyHint": row.key_hint},
        )
    return row


async def _scoped(ctx: RequestContext, credential_id: uuid.UUID) -> LlmCredential:
    async with ctx.services.read() as session:
        return await scoped_get(session, ctx, LlmCredential, credential_id)


async def delete_credential(ctx: RequestContext, credential_id: uuid.UUID) -> bool:
    row = await _scoped(ctx, credential_id)
    await require_role(ctx, row.organization_id, Role.ADMIN)
    viewer = await require_viewer(ctx)
    async with ctx.services.write() as session:
        # Ordered with createAgent/updateAgent, which check that their credential exists.
        await lock_organization(session, row.organization_id)
        await delete_owned(session, LlmCredential, row.id, row.organization_id)
        await audit.record(
            session,
            ctx,
            organization_id=row.organization_id,
            actor_id=viewer.user.id,
            action="llm_credential.delete",
            target=("LlmCredential", row.id),
            details={"label": row.label, "keyHint": row.key_hint},
        )
    return True


async def get_credential(ctx: RequestContext, credential_id: uuid.UUID) -> LlmCredential:
    row = await _scoped(ctx, credential_id)
    await require_role(ctx, row.organization_id, Role.ADMIN)
    return row


async def list_credentials(ctx: RequestContext, organization_id: uuid.UUID) -> list[LlmCredential]:
    await require_role(ctx, organization_id, Role.ADMIN)
    viewer = await require_viewer(ctx)
    async with ctx.services.read() as session:
        rows = await session.scalars(
            select(LlmCredential)
            .where(
                LlmCredential.organization_id == organization_id,
                LlmCredential.organization_id.in_(member_organizations(viewer)),
            )
            .order_by(LlmCredential.created_at, LlmCredential.id)
        )
        return list(rows.all())


@dataclass
class RotationReport:
    rotated: int = 0
    current: int = 0
    failed: int = 0


async def rotate_keys(services: Services, batch_size: int = 100) -> RotationReport:
    """Re-seal every secret under the first key, one committed batch at a time.

    Only rows not yet under the active key are selected, so an interrupted run
    simply continues where it stopped when started again.
    """
    keyring = services.keyring
    report = RotationReport()
    failed: set[uuid.UUID] = set()
    async with services.read() as session:
        report.current = (
            await session.scalar(
                select(func.count())
                .select_from(LlmCredential)
                .where(LlmCredential.key_id == keyring.active_key_id)
            )
        ) or 0
    while True:
        async with services.write() as session:
            rows = (
                await session.scalars(
                    select(LlmCredential)
                    .where(
                        LlmCredential.key_id != keyring.active_key_id,
                        LlmCredential.id.not_in(failed),
                    )
                    .order_by(LlmCredential.id)
                    .limit(batch_size)
                    # Wait for a row in use (an agent being saved with it locks it); skipping
                    # it would leave it under the old key while the run reports success.
                    .with_for_update()
                )
            ).all()
            if not rows:
                return report
            for row in rows:
                aad = associated_data(row.organization_id, row.id)
                try:
                    plaintext = keyring.open(Sealed(row.key_id, row.nonce, row.ciphertext), aad)
                except DecryptionError:
                    failed.add(row.id)
                    report.failed += 1
                    continue
                sealed = keyring.seal(plaintext, aad)
                row.key_id, row.nonce, row.ciphertext = (
                    sealed.key_id,
                    sealed.nonce,
                    sealed.ciphertext,
                )
                report.rotated += 1
