"""The AuditEvent type."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from kindrobots.db import models
from kindrobots.ids import to_global_id
from kindrobots.schema.base import Info, Node
from kindrobots.schema.loaders import loaders
from kindrobots.schema.users import UserType


@strawberry.type(name="AuditEvent")
class AuditEventType(Node):
    action: str
    target_type: str | None
    target_id: str | None
    metadata: JSON
    ip: str | None
    created_at: datetime
    actor_id: strawberry.Private[uuid.UUID | None]
    organization_id: strawberry.Private[uuid.UUID | None]  # None: a platform event

    @strawberry.field
    async def actor(self, info: Info) -> UserType | None:
        if self.actor_id is None:
            return None
        user = await loaders(info).user.load(self.actor_id)
        return UserType.from_row(user) if user else None

    @classmethod
    def from_row(cls, row: models.AuditEvent) -> AuditEventType:
        return cls(
            id=strawberry.ID(to_global_id("AuditEvent", row.id)),
            action=row.action,
            target_type=row.target_type,
            target_id=row.target_id,
            metadata=JSON(row.details),
            ip=row.ip,
            created_at=row.created_at,
            actor_id=row.actor_id,
            organization_id=row.organization_id,
        )
