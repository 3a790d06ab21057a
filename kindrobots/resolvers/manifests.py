"""Manifests: OpenAPI documents an agent's tools come from. Each import is a new version."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select
from yarl import URL

from kindrobots.auth.roles import Role
from kindrobots.context import RequestContext
from kindrobots.db.locks import lock_organization
from kindrobots.db.models import Manifest, ManifestVersion
from kindrobots.db.pagination import Page
from kindrobots.resolvers import audit, openapi, validation
from kindrobots.resolvers.access import (
    delete_owned,
    organization_page,
    require_role,
    require_viewer,
    scoped_get,
)
from kindrobots.security.errors import BadUserInput
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


async def create_manifest(
    ctx: RequestContext,
    organization_id: uuid.UUID,
    name: str,
    document_text: str,
    source_url: str | None = None,
) -> Manifest:
    """Store a new manifest, or a new version of the one with this name."""
    await require_role(ctx, organization_id, Role.EDITOR)
    viewer = await require_viewer(ctx)
    name = validation.text(name, "name", 100)
    # Parsing a large document takes a while; keep the event loop free meanwhile.
    document = await asyncio.to_thread(openapi.parse, document_text)
    now = ctx.now()
    async with ctx.services.write() as session:
        # Two imports under one name must become versions 1 and 2, not a unique-key error.
        await lock_organization(session, organization_id)
        manifest = await session.scalar(
            select(Manifest).where(
                Manifest.organization_id == organization_id, Manifest.name == name
            )
        )
        if manifest is None:
            manifest = Manifest(organization_id=organization_id, name=name, version=1)
            manifest.created_at = manifest.updated_at = now
            session.add(manifest)
            await session.flush()
        else:
            manifest.version += 1
            manifest.updated_at = now
        session.add(
            ManifestVersion(
                manifest_id=manifest.id,
                organization_id=organization_id,
                version=manifest.version,
                source_url=source_url,
                servers=_absolute_servers(document.servers, source_url),
                operations=[operation.as_json() for operation in document.operations],
                created_at=now,
            )
        )
        await audit.record(
            session,
            ctx,
            organization_id=organization_id,
            actor_id=viewer.user.id,
            action="manifest.create" if manifest.version == 1 else "manifest.version",
            target=("Manifest", manifest.id),
            details={
                "name": name,
                "version": manifest.version,
                "operations": len(document.operations),
                "sourceUrl": source_url,
            },
        )
    return manifest


async def import_manifest(
    ctx: RequestContext, organization_id: uuid.UUID, name: str, url: str
) -> Manifest:
    await require_role(ctx, organization_id, Role.EDITOR)
    response = await outbound_request(
        url.strip(),
        allow=ctx.settings.outbound_allow,
        headers={"Accept": "application/json, application/yaml, text/yaml, */*"},
        limits=Limits(max_bytes=openapi.MAX_DOCUMENT_BYTES),
        https_only=ctx.settings.is_production,
    )
    if response.status != 200:
        raise BadUserInput("url", f"The server answered with status {response.status}.")
    try:
        text = response.body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadUserInput("url", "The document is not UTF-8 text.") from None
    # Query strings of document URLs often carry access tokens; members may read sourceUrl.
    source_url = str(URL(response.url).with_query(None).with_fragment(None))
    return await create_manifest(ctx, organization_id, name, text, source_url=source_url)


async def _scoped(ctx: RequestContext, manifest_id: uuid.UUID) -> Manifest:
    async with ctx.services.read() as session:
        return await scoped_get(session, ctx, Manifest, manifest_id)


async def get_manifest(ctx: RequestContext, manifest_id: uuid.UUID) -> Manifest:
    return await _scoped(ctx, manifest_id)


async def delete_manifest(ctx: RequestContext, manifest_id: uuid.UUID) -> bool:
    manifest = await _scoped(ctx, manifest_id)
    await require_role(ctx, manifest.organization_id, Role.EDITOR)
    viewer = await require_viewer(ctx)
    async with ctx.services.write() as session:
        # Ordered with createAgent/updateAgent, which check that their manifests exist.
        await lock_organization(session, manifest.organization_id)
        await delete_owned(session, Manifest, manifest.id, manifest.organization_id)
        await audit.record(
            session,
            ctx,
            organization_id=manifest.organization_id,
            actor_id=viewer.user.id,
            action="manifest.delete",
            target=("Manifest", manifest.id),
            details={"name": manifest.name, "version": manifest.version},
        )
    return True


async def list_manifests(
    ctx: RequestContext, organization_id: uuid.UUID, first: int, after: str | None
) -> Page[Manifest]:
    return await organization_page(ctx, Manifest, organization_id, Role.VIEWER, first, after)
