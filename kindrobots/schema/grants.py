"""What a field's permission establishes and hands to its resolver (``Info.grant``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from kindrobots.auth.principals import StaffActor, UserActor, WidgetActor
from kindrobots.db.enums import Role
from kindrobots.resolvers.chat import ChatTarget


@dataclass(frozen=True)
class RoleGrant:
    actor: UserActor
    organization_id: uuid.UUID
    role: Role  # the role the actor holds there
    required: Role  # the role the field declared


@dataclass(frozen=True)
class WidgetGrant:
    actor: WidgetActor
    target: ChatTarget


Grant = RoleGrant | WidgetGrant | UserActor | StaffActor
