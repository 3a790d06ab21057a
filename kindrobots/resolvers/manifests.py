"""Manifests: OpenAPI documents an agent's tools come from. Each import is a new version."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from yarl import URL

from kindrobots.auth.principals import UserActor
from kindrobots.config import Settings
from kindrobots.db.bounds import MAX_OPERATIONS_PER_AGENT
from kindrobots.db.locks import lock_organization
from kindrobots.db.models import AgentManifest, Manifest, ManifestVersion
from kindrobots.db.pagination import Page
from kindrobots.errors import BadUserInput
from kindrobots.resolvers import audit, openapi, validation
from kindrobots.resolvers.access import delete_owned, organization_page, scoped_get
from kindrobots.security.ssrf import Limits, outbound_request


def _absolute_servers(servers: list[str], source_url: str | None) -> list[str]:
    """Relative ``servers`` entries are relative to where the document came from."""
    if not source_url:
        return servers
    base = URL(source_url)
    absolute = []
    for server in servers:
        try:
            absolute.append(str(base.join(URL(server))))
        except ValueError:
            raise BadUserInput("openapi", f"Server URL {server[:100]!r} is not valid.") from None
    return absolute


@dataclass(frozen=True)
class Document:
    """A parsed OpenAPI document, ready to store as a manifest version."""

    parsed: openapi.Document
    source_url: str | None = None


async def parse_document(text: str, source_url: str | None = None) -> Document:
    """Parse outside any transaction: a large document takes a while, and the event loop
    stays free meanwhile."""
    return Document(await asyncio.to_thread(openapi.parse, text), source_url)


async def fetch_document(settings: Settings, url: str) -> Document:
    """Download a document through the SSRF guard (before any transaction opens)."""
    response = await outbound_request(
        url.strip(),
        allow=settings.outbound_allow,
        headers={"Accept": "application/json, application/yaml, text/yaml, */*"},
        limits=Limits(max_bytes=openapi.MAX_DOCUMENT_BYTES),
        https_only=settings.is_production,
    )
    if response.status != 200:
        raise BadUserInput("url", f"The server answered with status {response.status}.")
    try:
        text = response.body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadUserInput("url", "The document is not UTF-8 text.") from None
    # Query strings of document URLs often carry access tokens; members may read sourceUrl.
    source_url = str(URL(response.url).with_query(None).with_fragment(None))
    return await parse_document(text, source_url)


async def _check_agents_fit(session: AsyncSession, manifest: Manifest, operations: int) -> None:
    """A new version must leave every agent that calls the manifest within its tools
    (``MAX_OPERATIONS_PER_AGENT``), counting the newest versions of its other manifests."""
    calls = aliased(AgentManifest)
    rows = (
        await session.execute(
            select(AgentManifest.agent_id, ManifestVersion.operations)
            .join(
                calls,
                and_(calls.agent_id == AgentManifest.agent_id, calls.manifest_id == manifest.id),
            )
            .join(Manifest, Manifest.id == AgentManifest.manifest_id)
            .join(
                ManifestVersion,
                and_(
                    ManifestVersion.manifest_id == Manifest.id,
                    ManifestVersion.version == Manifest.version,
                ),
            )
            .where(
                AgentManifest.organization_id == manifest.organization_id,
                AgentManifest.manifest_id != manifest.id,
            )
        )
    ).all()
    tools: dict[uuid.UUID, int] = {}
    for agent_id, others in rows:
        tools[agent_id] = tools.get(agent_id, operations) + len(others or ())
    if any(total > MAX_OPERATIONS_PER_AGENT for total in tools.values()):
        raise BadUserInput(
            "openapi",
            f"An agent that calls this manifest would have more than {MAX_OPERATIONS_PER_AGENT} "
            "operations; detach it from some agents first.",
        )


async def create_manifest(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    name: str,
    document: Document,
    *,
    forward_end_user_token: bool = False,
) -> Manifest:
    """Store a new manifest, or a new version of the one with this name. Each version
    says again whether tool calls carry the end user's token (``forward_end_user_token``)."""
    name = validation.text(name, "name", 100)
    source_url = document.source_url
    # Two imports under one name must become versions 1 and 2, not a unique-key error.
    await lock_organization(session, organization_id)
    manifest = await session.scalar(
        select(Manifest).where(Manifest.organization_id == organization_id, Manifest.name == name)
    )
    if manifest is None:
        manifest = Manifest(organization_id=organization_id, name=name, version=1)
        manifest.created_at = manifest.updated_at = now
        session.add(manifest)
        await session.flush()
    else:
        await _check_agents_fit(session, manifest, len(document.parsed.operations))
        manifest.version += 1
        manifest.updated_at = now
    manifest.forward_end_user_token = forward_end_user_token
    operations = document.parsed.operations
    session.add(
        ManifestVersion(
            manifest_id=manifest.id,
            organization_id=organization_id,
            version=manifest.version,
            source_url=source_url,
            servers=_absolute_servers(document.parsed.servers, source_url),
            operations=[operation.as_json() for operation in operations],
            created_at=now,
        )
    )
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="manifest.create" if manifest.version == 1 else "manifest.version",
        target=("Manifest", manifest.id),
        details={
            "name": name,
            "version": manifest.version,
            "operations": len(operations),
            "sourceUrl": source_url,
            "forwardEndUserToken": forward_end_user_token,
        },
    )
    return manifest


async def get_manifest(session: AsyncSession, actor: UserActor, manifest_id: uuid.UUID) -> Manifest:
    return await scoped_get(session, actor, Manifest, manifest_id)


async def delete_manifest(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    manifest_id: uuid.UUID,
) -> bool:
    # Ordered with createAgent/updateAgent, which check that their manifests exist.
    await lock_organization(session, organization_id)
    manifest = await scoped_get(session, actor, Manifest, manifest_id)
    await delete_owned(session, Manifest, manifest.id, organization_id)
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="manifest.delete",
        target=("Manifest", manifest.id),
        details={"name": manifest.name, "version": manifest.version},
    )
    return True


async def list_manifests(
    session: AsyncSession,
    actor: UserActor,
    organization_id: uuid.UUID,
    first: int,
    after: str | None,
) -> Page[Manifest]:
    return await organization_page(session, actor, Manifest, organization_id, first, after)
