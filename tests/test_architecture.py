"""The shape DESIGN.md asks of the code: business rules take a session and an actor, and
every role permission can find its organization when the schema is built."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
import uuid

import pytest
import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types.base import get_object_definition

import kindrobots.resolvers
from kindrobots.context import RequestContext, Services
from kindrobots.db.enums import Role
from kindrobots.schema.base import Info
from kindrobots.schema.permissions import (
    ObjectArgument,
    OnSource,
    OrganizationArgument,
    SchemaError,
    check_sources,
    requires,
)


def resolver_functions() -> list[tuple[str, typing.Callable[..., object]]]:
    found: list[tuple[str, typing.Callable[..., object]]] = []
    for module_info in pkgutil.iter_modules(kindrobots.resolvers.__path__):
        module = importlib.import_module(f"kindrobots.resolvers.{module_info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ == module.__name__:
                found.append((f"{module.__name__}.{name}", function))
    return found


def test_the_resolver_modules_are_found() -> None:
    names = {name for name, _ in resolver_functions()}
    assert "kindrobots.resolvers.agents.update_agent" in names
    assert len(names) > 40


@pytest.mark.parametrize(
    "name, function", resolver_functions(), ids=[name for name, _ in resolver_functions()]
)
def test_no_business_rule_takes_a_request(
    name: str, function: typing.Callable[..., object]
) -> None:
    hints = typing.get_type_hints(function)
    for parameter, annotation in hints.items():
        assert annotation not in (RequestContext, Services, Info), (name, parameter)
        assert RequestContext not in typing.get_args(annotation), (name, parameter)
    assert "ctx" not in inspect.signature(function).parameters, name


def test_rules_that_write_take_session_actor_and_time_first() -> None:
    """The order callers rely on: (session, actor, now, ...)."""
    for name in (
        "agents.create_agent",
        "agents.update_agent",
        "agents.delete_agent",
        "projects.create_project",
        "projects.update_project",
        "projects.rotate_project_key",
        "projects.delete_project",
        "manifests.create_manifest",
        "manifests.delete_manifest",
        "credentials.add_credential",
        "credentials.delete_credential",
        "credentials.rotate_batch",
        "organizations.create_organization",
        "organizations.invite_member",
        "organizations.accept_invitation",
        "organizations.update_member_role",
        "organizations.remove_member",
        "chat.open_turn",
    ):
        module, function = name.split(".")
        rule = getattr(importlib.import_module(f"kindrobots.resolvers.{module}"), function)
        parameters = list(inspect.signature(rule).parameters)
        hints = typing.get_type_hints(rule)
        assert parameters[:3] == ["session", "actor", "now"], name
        assert hints["session"] is AsyncSession, name


@strawberry.input
class _Input:
    organization_id: strawberry.ID


def _one() -> int:
    return 1


def _one_for(input: _Input) -> int:
    return 1


def _one_by_id(id: strawberry.ID) -> int:
    return 1


@strawberry.type
class _Owned:
    organization_id: strawberry.Private[uuid.UUID]
    fine: int = strawberry.field(resolver=_one, extensions=requires(Role.VIEWER, OnSource()))


@strawberry.type
class _Unowned:
    broken: int = strawberry.field(resolver=_one, extensions=requires(Role.VIEWER, OnSource()))


@strawberry.type
class _Arguments:
    good: int = strawberry.field(
        resolver=_one_for,
        extensions=requires(Role.VIEWER, OrganizationArgument("input.organization_id")),
    )
    misspelt: int = strawberry.field(
        resolver=_one_for, extensions=requires(Role.VIEWER, OrganizationArgument("input.org"))
    )
    without_argument: int = strawberry.field(
        resolver=_one, extensions=requires(Role.VIEWER, ObjectArgument("id", "Agent"))
    )
    unknown_type: int = strawberry.field(
        resolver=_one_by_id, extensions=requires(Role.VIEWER, ObjectArgument("id", "Nothing"))
    )


def _only(type_: type, field_name: str) -> list[typing.Any]:
    definition = get_object_definition(type_, strict=True)
    field = next(f for f in definition.fields if f.python_name == field_name)
    return [type(definition)(**{**definition.__dict__, "fields": [field]})]


def test_a_source_that_exists_passes() -> None:
    check_sources(_only(_Owned, "fine"))
    check_sources(_only(_Arguments, "good"))


@pytest.mark.parametrize(
    "type_, field_name",
    [
        (_Unowned, "broken"),
        (_Arguments, "misspelt"),
        (_Arguments, "without_argument"),
        (_Arguments, "unknown_type"),
    ],
)
def test_a_role_permission_without_its_organization_fails_the_build(
    type_: type, field_name: str
) -> None:
    with pytest.raises(SchemaError):
        check_sources(_only(type_, field_name))
