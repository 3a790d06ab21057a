"""One authorization point per field.

Every root field declares its permission (or sits on ``PUBLIC_FIELDS``), and so does
every nested field that needs a stronger role than the object it is on. A role
permission names the role and where the organization comes from:

* :class:`OnSource` — the object the field is on (it carries ``organization_id``);
* :class:`OrganizationArgument` — an argument holding an Organization ID;
* :class:`ObjectArgument` — an argument holding the ID of an organization's object,
  looked up within the caller's organizations (in SQL).

It resolves ``(organization, role)`` once, refuses outsiders with NOT_FOUND (exactly
as for an ID that does not exist) and weaker roles with FORBIDDEN, and hands the
result to the resolver as ``info.grant``. Resolvers do not check again. A source that
does not exist on the field is a ``SchemaError`` when the schema is built.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import strawberry
from strawberry.extensions import FieldExtension
from strawberry.permission import BasePermission, PermissionExtension
from strawberry.types.base import StrawberryObjectDefinition, get_object_definition
from strawberry.types.field import StrawberryField

from kindrobots.auth.principals import StaffActor, UserActor, WidgetActor
from kindrobots.db.enums import Role
from kindrobots.errors import Forbidden, Unauthenticated
from kindrobots.ids import from_global_id
from kindrobots.resolvers import chat
from kindrobots.resolvers.access import OWNED_MODELS, organization_of, require_role
from kindrobots.schema.base import Info
from kindrobots.schema.grants import RoleGrant, WidgetGrant
from kindrobots.security.events import PERMISSION_DENIED

# Root fields anyone may call, signed in or not. Everything else needs a permission.
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


class SchemaError(Exception):
    """A permission that cannot work on the field it is declared on."""


def _info(info: strawberry.Info[Any, Any]) -> Info:
    assert isinstance(info, Info), "build_schema installs kindrobots.schema.base.Info"
    return info


def granted(info: Info) -> RoleGrant:
    """What the field's role permission established."""
    assert isinstance(info.grant, RoleGrant), "the field declares no role permission"
    return info.grant


def signed_in(info: Info) -> UserActor:
    """The signed-in caller of a field declared ``authenticated()`` (or a role)."""
    grant = info.grant
    actor = grant.actor if isinstance(grant, RoleGrant) else grant
    assert isinstance(actor, UserActor), "the field declares no user permission"
    return actor


def staff_caller(info: Info) -> StaffActor:
    """The staff member behind a field declared ``staff()``."""
    assert isinstance(info.grant, StaffActor), "the field is not declared for staff"
    return info.grant


def widget(info: Info) -> WidgetGrant:
    assert isinstance(info.grant, WidgetGrant), "the field is not declared for widgets"
    return info.grant


def user_caller(info: Info) -> UserActor:
    """The signed-in caller, for fields under an object the caller already reached."""
    caller = info.context.caller
    if not isinstance(caller, UserActor):
        raise Unauthenticated()
    return caller


class OrganizationSource(Protocol):
    def check(self, field: StrawberryField, owner: StrawberryObjectDefinition) -> None:
        """Raise SchemaError when this source cannot exist on ``field`` of ``owner``."""

    async def organization(
        self, info: Info, source: Any, arguments: dict[str, Any], actor: UserActor
    ) -> uuid.UUID: ...


@dataclass(frozen=True)
class OnSource:
    """The organization of the object the field is on."""

    def check(self, field: StrawberryField, owner: StrawberryObjectDefinition) -> None:
        names = {f.name for f in dataclasses.fields(owner.origin)}
        if "organization_id" not in names:
            raise SchemaError(
                f"{owner.name}.{field.python_name}: {owner.name} has no organization_id"
            )

    async def organization(
        self, info: Info, source: Any, arguments: dict[str, Any], actor: UserActor
    ) -> uuid.UUID:
        organization_id = source.organization_id
        assert isinstance(organization_id, uuid.UUID)
        return organization_id


def _check_path(path: str, field: StrawberryField, owner: StrawberryObjectDefinition) -> None:
    first, *rest = path.split(".")
    where = f"{owner.name}.{field.python_name}"
    argument = next((a for a in field.arguments if a.python_name == first), None)
    if argument is None:
        raise SchemaError(f"{where}: no argument {first!r} for the organization")
    current: Any = argument.type
    for name in rest:
        definition = get_object_definition(current)
        found = definition and next((f for f in definition.fields if f.python_name == name), None)
        if not found:
            raise SchemaError(f"{where}: {path!r} does not exist in the arguments")
        current = found.type


def _follow(path: str, arguments: dict[str, Any]) -> Any:
    first, *rest = path.split(".")
    value = arguments.get(first)
    for name in rest:
        value = getattr(value, name, None)
    return value


@dataclass(frozen=True)
class OrganizationArgument:
    """An argument (``input.organization_id`` style path) holding an Organization ID."""

    path: str

    def check(self, field: StrawberryField, owner: StrawberryObjectDefinition) -> None:
        _check_path(self.path, field, owner)

    async def organization(
        self, info: Info, source: Any, arguments: dict[str, Any], actor: UserActor
    ) -> uuid.UUID:
        return from_global_id(str(_follow(self.path, arguments)), "Organization")


@dataclass(frozen=True)
class ObjectArgument:
    """An argument holding the ID of an object of ``type_name``; its organization, if the
    caller belongs to it (filtered in SQL)."""

    path: str
    type_name: str

    def check(self, field: StrawberryField, owner: StrawberryObjectDefinition) -> None:
        _check_path(self.path, field, owner)
        if self.type_name not in OWNED_MODELS:
            raise SchemaError(f"{owner.name}.{field.python_name}: {self.type_name} is not owned")

    async def organization(
        self, info: Info, source: Any, arguments: dict[str, Any], actor: UserActor
    ) -> uuid.UUID:
        row_id = from_global_id(str(_follow(self.path, arguments)), self.type_name)
        async with info.context.services.read() as session:
            return await organization_of(session, actor, OWNED_MODELS[self.type_name], row_id)


class HasRole(BasePermission):
    def __init__(self, role: Role, organization: OrganizationSource) -> None:
        self.role = role
        self.source = organization

    async def has_permission(
        self, source: Any, info: strawberry.Info[Any, Any], **kwargs: Any
    ) -> bool:
        info = _info(info)
        actor = user_caller(info)
        organization_id = await self.source.organization(info, source, kwargs, actor)
        try:
            role = require_role(actor, organization_id, self.role)
        except Forbidden:
            # A member below the role: worth a security event. Outsiders get NOT_FOUND and
            # none (the same as an unknown ID). Names the field and roles, never an ID.
            field = f"{info.path.typename}.{info.field_name}"
            held = actor.roles.get(organization_id)
            info.context.services.refused(
                PERMISSION_DENIED,
                source=f"{field}:{actor.user.id}",
                ip=info.context.ip,
                user_id=actor.user.id,
                details={
                    "field": field,
                    "requiredRole": self.role.value,
                    "role": held.value if held is not None else None,
                },
            )
            raise
        info.grant = RoleGrant(actor, organization_id, role, self.role)
        return True


class IsAuthenticated(BasePermission):
    async def has_permission(
        self, source: Any, info: strawberry.Info[Any, Any], **kwargs: Any
    ) -> bool:
        info = _info(info)
        info.grant = user_caller(info)
        return True


class IsStaff(BasePermission):
    """A signed-in user with the platform flag (set only by ``kindrobots staff grant``),
    acting as staff: the grant is a :class:`StaffActor`, audited as such."""

    async def has_permission(
        self, source: Any, info: strawberry.Info[Any, Any], **kwargs: Any
    ) -> bool:
        info = _info(info)
        actor = user_caller(info)
        if not actor.user.is_staff:
            raise Forbidden("This needs Kind Robots staff.")
        info.grant = StaffActor(actor.user.id, actor.user.email, actor.ip)
        return True


class IsWidget(BasePermission):
    """A widget or API client whose project still admits it. Every widget field chats, so
    the project is read with what a message needs (one statement): the chat target."""

    async def has_permission(
        self, source: Any, info: strawberry.Info[Any, Any], **kwargs: Any
    ) -> bool:
        info = _info(info)
        context = info.context
        actor = context.caller
        if not isinstance(actor, WidgetActor):
            if context.widget_refusal is not None:
                raise context.widget_refusal.as_error()
            raise Unauthenticated("Connect with a project key to chat.")
        async with context.services.read() as session:
            target = await chat.load_target(session, actor, info.now())
        info.grant = WidgetGrant(actor, target)
        return True


def requires(role: Role, organization: OrganizationSource) -> list[FieldExtension]:
    """The extensions of a field that needs ``role`` in the organization ``organization``."""
    return [PermissionExtension(permissions=[HasRole(role, organization)], use_directives=False)]


def authenticated() -> list[FieldExtension]:
    return [PermissionExtension(permissions=[IsAuthenticated()], use_directives=False)]


def staff() -> list[FieldExtension]:
    return [PermissionExtension(permissions=[IsStaff()], use_directives=False)]


def widgets() -> list[FieldExtension]:
    return [PermissionExtension(permissions=[IsWidget()], use_directives=False)]


def role_permissions(field: StrawberryField) -> list[HasRole]:
    return [
        permission
        for extension in field.extensions
        if isinstance(extension, PermissionExtension)
        for permission in extension.permissions
        if isinstance(permission, HasRole)
    ]


def check_sources(definitions: list[StrawberryObjectDefinition]) -> None:
    """Fail the schema build on a role permission whose organization cannot be found."""
    for definition in definitions:
        for field in definition.fields:
            for permission in role_permissions(field):
                permission.source.check(field, definition)
