"""Permission classes: every root field declares one, or sits on ``PUBLIC_FIELDS``.

A role check needs the organization; it comes from the field's source object
(``organization_id`` on types that belong to one) or from the arguments
(``organizationId`` or ``input.organizationId``). Outsiders get NOT_FOUND, members
whose role is too weak get FORBIDDEN (see ``resolvers.access.require_role``).
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from strawberry.permission import BasePermission

from kindrobots.auth.roles import Role
from kindrobots.ids import from_global_id
from kindrobots.resolvers.access import require_role, require_viewer
from kindrobots.schema.base import Info

# Root fields anyone may call, signed in or not. Everything else needs a permission class.
PUBLIC_FIELDS = frozenset(
    {
        "Query.me",
        "Query.plans",
        "Mutation.signUp",
        "Mutation.signIn",
        "Mutation.refreshSession",
        "Mutation.signOut",
    }
)


class IsAuthenticated(BasePermission):
    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        await require_viewer(info.context)
        return True


def _organization_of(source: Any, arguments: dict[str, Any]) -> uuid.UUID:
    owned = getattr(source, "organization_id", None)
    if isinstance(owned, uuid.UUID):
        return owned
    global_id = arguments.get("organization_id")
    if global_id is None and "input" in arguments:
        global_id = getattr(arguments["input"], "organization_id", None)
    if not isinstance(global_id, str):
        raise TypeError("role permission on a field without an organization")
    return from_global_id(global_id, "Organization")


class HasRole(BasePermission):
    role: ClassVar[Role]

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        await require_role(info.context, _organization_of(source, kwargs), self.role)
        return True


class IsViewer(HasRole):
    role = Role.VIEWER


class IsEditor(HasRole):
    role = Role.EDITOR


class IsAdmin(HasRole):
    role = Role.ADMIN


class IsOwner(HasRole):
    role = Role.OWNER
