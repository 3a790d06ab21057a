"""Permission classes: every root field declares one, or sits on ``PUBLIC_FIELDS``.

A role check needs the organization; it comes from the field's source object
(``organization_id`` on types that belong to one), from the arguments
(``organizationId`` or ``input.organizationId``), or from the object an ``id``
argument names (looked up within the caller's organizations). Outsiders get NOT_FOUND, members
whose role is too weak get FORBIDDEN (see ``resolvers.access.require_role``).
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from strawberry.permission import BasePermission

from kindrobots.auth.roles import Role
from kindrobots.ids import from_global_id, parse_global_id
from kindrobots.resolvers.access import organization_of, require_role, require_viewer
from kindrobots.resolvers.chat import require_widget
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


async def _organization_of(info: Info, source: Any, arguments: dict[str, Any]) -> uuid.UUID:
    owned = getattr(source, "organization_id", None)
    if isinstance(owned, uuid.UUID):
        return owned
    data = arguments.get("input")
    global_id = arguments.get("organization_id") or getattr(data, "organization_id", None)
    if isinstance(global_id, str):
        return from_global_id(global_id, "Organization")
    object_id = arguments.get("id") or arguments.get("project_id") or getattr(data, "id", None)
    if isinstance(object_id, str):
        type_name, raw_id = parse_global_id(object_id)
        return await organization_of(info.context, type_name, raw_id)
    raise TypeError("role permission on a field without an organization")


class HasRole(BasePermission):
    role: ClassVar[Role]

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        organization_id = await _organization_of(info, source, kwargs)
        await require_role(info.context, organization_id, self.role)
        return True


class IsWidget(BasePermission):
    """A widget or API client that presented a valid project key (and end-user token)."""

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        require_widget(info.context)
        return True


class IsViewer(HasRole):
    role = Role.VIEWER


class IsEditor(HasRole):
    role = Role.EDITOR


class IsAdmin(HasRole):
    role = Role.ADMIN


class IsOwner(HasRole):
    role = Role.OWNER
