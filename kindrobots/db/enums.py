"""The enumerations stored in the models' string columns, beside those models.

The GraphQL enums of the same names are these classes, registered by ``schema``.
"""

from __future__ import annotations

import enum


class Role(enum.Enum):
    """Roles inside an organization, strongest first (DESIGN.md, tenancy)."""

    OWNER = "OWNER"
    ADMIN = "ADMIN"
    EDITOR = "EDITOR"
    VIEWER = "VIEWER"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.VIEWER: 1, Role.EDITOR: 2, Role.ADMIN: 3, Role.OWNER: 4}


class AccessMode(enum.Enum):
    PUBLIC = "PUBLIC"
    AUTHENTICATED = "AUTHENTICATED"


class LlmProvider(enum.Enum):
    OPENAI = "OPENAI"
    ANTHROPIC = "ANTHROPIC"
    OPENAI_COMPATIBLE = "OPENAI_COMPATIBLE"
    DEMO = "DEMO"
