"""Manifests and their operations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from kindrobots.db.enums import Role
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import manifests
from kindrobots.resolvers.loaders import ManifestColumns, VersionRow
from kindrobots.schema.base import Info, Node
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.loaders import loaders
from kindrobots.schema.permissions import (
    ObjectArgument,
    OrganizationArgument,
    granted,
    requires,
)
from kindrobots.schema.plain import UNLOADED, Unloaded, preloaded


@strawberry.type
class ManifestOperation:
    operation_id: str
    method: str
    path: str
    summary: str | None
    parameters: JSON = strawberry.field(description="JSON Schema of the call's arguments.")


@strawberry.type(name="Manifest")
class ManifestType(Node):
    name: str
    version: int
    created_at: datetime
    forward_end_user_token: bool = strawberry.field(
        description="Tool calls of AUTHENTICATED projects carry the end user's verified token "
        "(Authorization: Bearer) to this manifest's servers."
    )
    organization_id: strawberry.Private[uuid.UUID]
    manifest_id: strawberry.Private[uuid.UUID]
    # Filled in by a list that preloaded its manifests' newest versions (schema.plain).
    preloaded_source_url: strawberry.Private[str | Unloaded | None] = UNLOADED
    preloaded_operations: strawberry.Private[list[ManifestOperation] | Unloaded] = UNLOADED

    @strawberry.field(
        description="Where the newest version was imported from.",
        metadata=preloaded("preloaded_source_url"),
    )
    async def source_url(self, info: Info) -> str | None:
        if self.preloaded_source_url is not UNLOADED:
            return self.preloaded_source_url
        latest = await loaders(info).latest_version.load(self.manifest_id)
        return latest.source_url if latest else None

    @strawberry.field(
        description="The operations of the newest version.",
        metadata=preloaded("preloaded_operations"),
    )
    async def operations(self, info: Info) -> list[ManifestOperation]:
        if self.preloaded_operations is not UNLOADED:
            return self.preloaded_operations
        latest = await loaders(info).latest_version.load(self.manifest_id)
        return operations_of(latest.operations if latest else [])

    @classmethod
    def from_row(cls, row: ManifestColumns) -> ManifestType:
        return cls(
            id=strawberry.ID(to_global_id("Manifest", row.id)),
            name=row.name,
            version=row.version,
            created_at=row.created_at,
            forward_end_user_token=row.forward_end_user_token,
            organization_id=row.organization_id,
            manifest_id=row.id,
        )


def operations_of(operations: list[dict[str, Any]]) -> list[ManifestOperation]:
    return [
        ManifestOperation(
            operation_id=op["operationId"],
            method=op["method"],
            path=op["path"],
            summary=op.get("summary"),
            parameters=JSON(op["parameters"]),
        )
        for op in operations
    ]


def preload_versions(manifests: list[ManifestType], versions: dict[uuid.UUID, VersionRow]) -> None:
    """Give preloaded manifests their newest versions (a manifest without one has none)."""
    for manifest in manifests:
        version = versions.get(manifest.manifest_id)
        manifest.preloaded_source_url = version.source_url if version else None
        manifest.preloaded_operations = operations_of(version.operations) if version else []


FORWARD = (
    "Opt in: on AUTHENTICATED projects, tool calls carry the end user's verified token "
    "(Authorization: Bearer), only to this manifest's servers; never on PUBLIC projects."
)


@strawberry.input
class CreateManifestInput:
    organization_id: strawberry.ID
    name: str
    openapi: str = strawberry.field(description="An OpenAPI 3.0 or 3.1 document, JSON or YAML.")
    forward_end_user_token: bool = strawberry.field(default=False, description=FORWARD)


@strawberry.input
class ImportManifestInput:
    organization_id: strawberry.ID
    name: str
    url: str
    forward_end_user_token: bool = strawberry.field(default=False, description=FORWARD)


@strawberry.type
class ManifestMutation:
    @strawberry.mutation(
        extensions=requires(Role.EDITOR, OrganizationArgument("input.organization_id")),
        directives=[RateLimit(limit=30, window=60, per=RateLimitKey.ORGANIZATION)],
    )
    async def create_manifest(self, info: Info, input: CreateManifestInput) -> ManifestType:
        grant = granted(info)
        document = await manifests.parse_document(input.openapi)
        async with info.context.services.write() as session:
            row = await manifests.create_manifest(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                input.name,
                document,
                forward_end_user_token=input.forward_end_user_token,
            )
        return ManifestType.from_row(row)

    @strawberry.mutation(
        extensions=requires(Role.EDITOR, OrganizationArgument("input.organization_id")),
        directives=[RateLimit(limit=10, window=60, per=RateLimitKey.ORGANIZATION)],
    )
    async def import_manifest(self, info: Info, input: ImportManifestInput) -> ManifestType:
        grant = granted(info)
        document = await manifests.fetch_document(info.context.settings, input.url)
        async with info.context.services.write() as session:
            row = await manifests.create_manifest(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                input.name,
                document,
                forward_end_user_token=input.forward_end_user_token,
            )
        return ManifestType.from_row(row)

    @strawberry.mutation(extensions=requires(Role.EDITOR, ObjectArgument("id", "Manifest")))
    async def delete_manifest(self, info: Info, id: strawberry.ID) -> bool:
        grant = granted(info)
        async with info.context.services.write() as session:
            return await manifests.delete_manifest(
                session,
                grant.actor,
                info.now(),
                grant.organization_id,
                from_global_id(id, "Manifest"),
            )
