"""The User type."""

from __future__ import annotations

from datetime import datetime

import strawberry

from kindrobots.db import models
from kindrobots.ids import to_global_id
from kindrobots.schema.base import Node


@strawberry.type(name="User")
class UserType(Node):
    email: str
    display_name: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.User) -> UserType:
        return cls(
            id=strawberry.ID(to_global_id("User", row.id)),
            email=row.email,
            display_name=row.display_name,
            created_at=row.created_at,
        )
