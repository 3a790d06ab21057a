"""Who is acting: the typed actors every business rule takes (DESIGN.md, "Business rules").

A rule never asks *how* a caller reached it (HTTP, WebSocket, webhook, command line);
it asks *who* the caller is. The audit log records every actor by kind and name.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from kindrobots.db.enums import Role
from kindrobots.db.models import User

ActorKind = Literal["user", "staff", "system", "widget"]


@dataclass(frozen=True)
class UserActor:
    """A signed-in member of the dashboard, as of this operation."""

    kind: ClassVar[ActorKind] = "user"
    user: User
    session_id: uuid.UUID
    roles: Mapping[uuid.UUID, Role] = field(default_factory=dict)
    ip: str | None = None
    # Organizations of ``roles`` that staff suspended: members are told so, not let in.
    suspended: frozenset[uuid.UUID] = frozenset()

    @property
    def name(self) -> str:
        return str(self.user.id)

    @property
    def user_id(self) -> uuid.UUID:
        return self.user.id


@dataclass(frozen=True)
class WidgetActor:
    """A widget or external API client speaking for an end user of one project."""

    kind: ClassVar[ActorKind] = "widget"
    project_id: uuid.UUID
    organization_id: uuid.UUID
    end_user: str | None
    # What was checked when the connection opened, checked again before every message, so
    # that a rotated key, a removed origin or an expired token ends an open connection too.
    project_key: str = ""
    origin: str | None = None
    expires_at: float | None = None
    ip: str | None = None
    # The verified end-user JWT itself, kept only for the connection's lifetime, for tool
    # calls of manifests that opted in; never stored, logged or shown (hence repr=False).
    end_user_token: str | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return str(self.project_id)

    @property
    def user_id(self) -> None:
        return None


@dataclass(frozen=True)
class StaffActor:
    """A Kind Robots team member acting through a staff surface."""

    kind: ClassVar[ActorKind] = "staff"
    user_id: uuid.UUID
    email: str
    ip: str | None = None

    @property
    def name(self) -> str:
        return str(self.user_id)


@dataclass(frozen=True)
class SystemActor:
    """A named job of the platform itself: ``cli``, ``stripe-webhook``, ``retention``."""

    kind: ClassVar[ActorKind] = "system"
    name: str
    ip: None = None

    @property
    def user_id(self) -> None:
        return None


Actor = UserActor | WidgetActor | StaffActor | SystemActor

CLI = SystemActor("cli")
