"""Plain data without the per-field machinery: attributes read and serialized directly.

graphql-core resolves every field of every list item on its own: a resolve-info
object, the resolver and its wrappers, a check for an awaitable, a path entry. For a
page of 50 agents with their manifests and operations that is ~3,000 times per request
for values that are already there, as attributes of the objects the list resolvers
built. :class:`PlainExecutionContext` completes a field whose whole selection is plain
data in one walk instead:

- a *plain* field has no arguments and no resolver of its own (Strawberry's default,
  an attribute), or a resolver that the list above it made unnecessary by preloading the
  value into an attribute (``preloaded(...)``, the field's metadata names it);
- its only extension, if any, is a role permission on the object it is on
  (``requires(role, OnSource())``), checked here by the same role table;
- its value is a leaf, a list, or an object whose selected fields are all plain.

Anything else — an argument, a resolver, another permission, a directive on the
field in the document, ``@defer``, a value not preloaded, a role the caller does not
hold, a value the type refuses — and the field runs through graphql-core as before,
from the topmost plain field down: errors, their paths and nulls are graphql-core's own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import strawberry
from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLBoolean,
    GraphQLField,
    GraphQLID,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLString,
    InlineFragmentNode,
    SelectionSetNode,
    Undefined,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.pyutils import Path
from strawberry.permission import PermissionExtension
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

from kindrobots.auth.principals import UserActor
from kindrobots.db.enums import Role
from kindrobots.schema.permissions import HasRole, OnSource

PRELOADED = "kindrobots.preloaded"


class Unloaded(enum.Enum):
    """A preloaded attribute that the list above did not fill: the resolver loads it."""

    UNLOADED = "UNLOADED"


UNLOADED = Unloaded.UNLOADED


def preloaded(attribute: str) -> dict[str, str]:
    """Metadata of a field whose resolver is needed only when ``attribute`` is UNLOADED."""
    return {PRELOADED: attribute}


@dataclass(frozen=True)
class Plan:
    attribute: str
    preloaded: bool
    role: Role | None  # required on the source's organization


class _Fallback(Exception):
    """The field is not plain here: graphql-core executes it."""


_FALLBACK = _Fallback()
_NOT_PLAIN = object()


def _role(field: StrawberryField) -> Role | object | None:
    """The role the field's only extension requires on its source, or _NOT_PLAIN."""
    if not field.extensions:
        return None
    if len(field.extensions) != 1 or not isinstance(field.extensions[0], PermissionExtension):
        return _NOT_PLAIN
    permissions = field.extensions[0].permissions
    if len(permissions) != 1:
        return _NOT_PLAIN
    permission = permissions[0]
    if not isinstance(permission, HasRole) or not isinstance(permission.source, OnSource):
        return _NOT_PLAIN
    return permission.role


def plan_for(definition: GraphQLField) -> Plan | None:
    """How to read the field as plain data, or None when it must be resolved."""
    field = definition.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if not isinstance(field, StrawberryField) or definition.args:
        return None
    role = _role(field)
    if role is _NOT_PLAIN:
        return None
    assert role is None or isinstance(role, Role)
    metadata: Mapping[Any, Any] = field.metadata or {}
    attribute = metadata.get(PRELOADED)
    if isinstance(attribute, str):
        return Plan(attribute, True, role)
    if field.base_resolver is not None:
        return None
    return Plan(field.python_name, False, role)


# Per field definition of the process's schema; built on first use.
_PLANS: dict[int, tuple[GraphQLField, Plan | None]] = {}


def _plan(definition: GraphQLField) -> Plan | None:
    cached = _PLANS.get(id(definition))
    if cached is None:
        # The definition is kept with its plan, so its id is never reused for another.
        cached = (definition, plan_for(definition))
        _PLANS[id(definition)] = cached
    return cached[1]


Completer = Callable[["PlainExecutionContext", FieldDetailsList, Any], Any]

# Per output type of the process's schema: how to complete a value of it.
_COMPLETERS: dict[int, tuple[GraphQLOutputType, Completer]] = {}


def _completer(kind: GraphQLOutputType) -> Completer:
    cached = _COMPLETERS.get(id(kind))
    if cached is None:
        cached = (kind, _build_completer(kind))
        _COMPLETERS[id(kind)] = cached
    return cached[1]


def _build_completer(kind: GraphQLOutputType) -> Completer:
    if isinstance(kind, GraphQLNonNull):
        nullable = _completer(kind.of_type)

        def non_null(context: PlainExecutionContext, fields: FieldDetailsList, value: Any) -> Any:
            completed = nullable(context, fields, value)
            if completed is None:
                raise _FALLBACK  # graphql-core's error, with its path
            return completed

        return non_null
    if isinstance(kind, GraphQLList):
        item = _completer(kind.of_type)

        def items(context: PlainExecutionContext, fields: FieldDetailsList, value: Any) -> Any:
            if value is None or value is Undefined:
                return None
            if not isinstance(value, list | tuple):
                raise _FALLBACK  # other iterables, and errors, as graphql-core does them
            return [item(context, fields, entry) for entry in value]

        return items
    if isinstance(kind, GraphQLLeafType):
        coerce = kind.coerce_output_value
        # A str is its own value as String and ID (what their coercion returns for one).
        native = str if kind is GraphQLString or kind is GraphQLID else None

        def leaf(_context: PlainExecutionContext, _fields: FieldDetailsList, value: Any) -> Any:
            if value is None or value is Undefined:
                return None
            if type(value) is native:
                return value
            coerced = coerce(value)
            if coerced is None or coerced is Undefined:
                raise _FALLBACK
            return coerced

        return leaf
    if isinstance(kind, GraphQLObjectType):
        object_type = kind
        is_type_of = kind.is_type_of

        def complete_object(
            context: PlainExecutionContext, fields: FieldDetailsList, value: Any
        ) -> Any:
            if value is None or value is Undefined:
                return None
            if is_type_of is not None and not is_type_of(value, None):  # type: ignore[arg-type]
                raise _FALLBACK
            return context._object(object_type, fields, value)

        return complete_object

    def abstract(_context: PlainExecutionContext, _fields: FieldDetailsList, _value: Any) -> Any:
        raise _FALLBACK  # interfaces and unions resolve their type through graphql-core

    return abstract


class Step(NamedTuple):
    """One selected field of an object: where its value is and how to complete it."""

    name: str
    plan: Plan | None  # None: __typename
    fields: FieldDetailsList
    complete: Completer
    # String, ID and Boolean values of this Python type are their own serialization:
    # most of a page's fields, taken without a call.
    native: type | None


class PlainExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's execution, with plain fields completed in one walk (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per field list of this operation and the object type it is completed as: the
        # steps, or None. The list is kept with them, so its id stays its own.
        self._steps: dict[int, tuple[GraphQLObjectType, Any, list[Step] | None]] = {}

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: FieldDetailsList,
        path: Path,
        position_context: Any,
    ) -> Any:
        # Strawberry always passes a manager; it wraps resolvers only when a schema
        # extension hooks into every field (none of the project's does).
        manager = self.middleware_manager
        if manager is None or not manager.middlewares:
            definition = parent_type.fields.get(field_details_list[0].node.name.value)
            if definition is not None:
                plan = _plan(definition)
                if plan is not None and _plain_nodes(field_details_list):
                    try:
                        value = self._value(plan, source)
                        return _completer(definition.type)(self, field_details_list, value)
                    except _Fallback:
                        pass
        return super().execute_field(
            parent_type, source, field_details_list, path, position_context
        )

    def _value(self, plan: Plan, source: Any) -> Any:
        if plan.role is not None:
            caller = self.context_value.caller
            if not isinstance(caller, UserActor):
                raise _FALLBACK
            held = caller.roles.get(source.organization_id)
            if held is None or not held.at_least(plan.role):
                raise _FALLBACK
        value = getattr(source, plan.attribute)
        if plan.preloaded and value is UNLOADED:
            raise _FALLBACK
        return value

    def _object(self, kind: GraphQLObjectType, fields: FieldDetailsList, value: Any) -> Any:
        # The items of one list share their field list: its steps are worked out once.
        cached = self._steps.get(id(fields))
        if cached is None or cached[0] is not kind:
            grouped, deferred, forbidden = self.collect_subfields(kind, fields)
            steps = None if deferred or forbidden else _steps(kind, grouped)
            cached = (kind, fields, steps)
            self._steps[id(fields)] = cached
        steps = cached[2]
        if steps is None:
            raise _FALLBACK
        result: dict[str, Any] = {}
        for name, plan, fields_of, complete, native in steps:
            if plan is None:
                result[name] = kind.name
                continue
            if plan.role is None and not plan.preloaded:
                field_value = getattr(value, plan.attribute)
            else:
                field_value = self._value(plan, value)
            if native is not None and type(field_value) is native:
                result[name] = field_value
            else:
                result[name] = complete(self, fields_of, field_value)
        return result


def _plain_nodes(fields: FieldDetailsList) -> bool:
    """No directive on the field in the document (``@skip``/``@include`` were applied when
    the fields were collected) and no ``@defer`` around it."""
    return all(not details.node.directives and details.defer_usage is None for details in fields)


def _steps(kind: GraphQLObjectType, grouped: Mapping[str, FieldDetailsList]) -> list[Step] | None:
    steps = []
    for name, fields in grouped.items():
        field_name = fields[0].node.name.value
        if field_name == "__typename":
            steps.append(Step(name, None, fields, _typename, None))
            continue
        definition = kind.fields.get(field_name)
        plan = _plan(definition) if definition is not None else None
        if definition is None or plan is None or not _plain_nodes(fields):
            return None
        steps.append(
            Step(name, plan, fields, _completer(definition.type), _native(definition.type))
        )
    return steps


def _native(kind: GraphQLOutputType) -> type | None:
    named = kind.of_type if isinstance(kind, GraphQLNonNull) else kind
    if named is GraphQLString or named is GraphQLID:
        return str
    if named is GraphQLBoolean:
        return bool
    return None


def _typename(_context: PlainExecutionContext, _fields: FieldDetailsList, _value: Any) -> Any:
    raise AssertionError("__typename is the object's type name")  # pragma: no cover


def selected(info: strawberry.Info[Any, Any], *path: str) -> set[str]:
    """The field names selected ``path`` below the field being resolved (through fragments,
    whatever their type conditions and directives: a list preloads what may be asked)."""
    raw = info._raw_info
    fragments = raw.fragments
    level: list[SelectionSetNode] = [
        node.selection_set for node in raw.field_nodes if node.selection_set is not None
    ]
    for name in (*path, None):
        names: set[str] = set()
        below: list[SelectionSetNode] = []
        seen: set[str] = set()
        stack = list(level)
        while stack:
            for selection in stack.pop().selections:
                if isinstance(selection, FieldNode):
                    names.add(selection.name.value)
                    if selection.name.value == name and selection.selection_set is not None:
                        below.append(selection.selection_set)
                elif isinstance(selection, InlineFragmentNode):
                    stack.append(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    fragment = fragments.get(selection.name.value)
                    if fragment is not None and selection.name.value not in seen:
                        seen.add(selection.name.value)
                        stack.append(fragment.selection_set)
        if name is None:
            return names
        level = below
    return set()  # not reached: the loop returns at its last step
