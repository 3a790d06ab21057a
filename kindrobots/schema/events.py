"""Subscription events whose result is known from the selection skip execution.

A chat reply is thousands of ``ChatDelta`` events, each executed by graphql-core against
the same selection: fields collected, the union resolved, ``text`` resolved and
serialized, every time. For an event whose selected fields are plain scalar attributes
(``text``, ``__typename``, IDs), the result is a fixed shape filled with the event's
values, computed here once per subscription and event type.

Anything this module cannot prove equivalent runs the normal way: directives anywhere in
the selection (``@include(if: $x)`` and the like), fragment arguments, nested selections,
fields with resolvers or arguments, values of an unexpected type, execution hooks,
middleware and abort signals. What it produces is what graphql-core would produce for
the same event, key order included (tests/test_chat_relay.py compares the frames).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphql import (
    ExecutionResult,
    FieldNode,
    FragmentSpreadNode,
    GraphQLAbstractType,
    GraphQLID,
    GraphQLInt,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLString,
    GraphQLType,
    InlineFragmentNode,
    SelectionSetNode,
    is_abstract_type,
)
from graphql.execution import Executor
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.field import StrawberryField

# A value reader for one selected field: the event in, the serialized value out, or
# _NOT_PLAIN when this event's value is not what the plan was made for.
Reader = Callable[[Any], Any]
Plan = tuple[str, tuple[tuple[str, Reader], ...]]
_NOT_PLAIN = object()
_INT_MAX = 2**31 - 1


class _Unplannable(Exception):
    """The selection needs real execution."""


class _Known:
    """A per-event executor whose result is already computed."""

    __slots__ = ("result",)

    def __init__(self, result: ExecutionResult) -> None:
        self.result = result

    def execute_operation(self, serially: bool | None = None) -> ExecutionResult:
        return self.result


class EventExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, with known events of a subscription answered by their plan."""

    _plans: dict[type, Plan | None] | None = None

    def build_per_event_executor(self, payload: Any) -> Executor[Any]:
        plans = self._plans
        if plans is None:
            plans = self._plans = {}
        kind = type(payload)
        if kind in plans:
            plan = plans[kind]
        else:
            plan = plans[kind] = self._plan(kind)
        if plan is not None:
            root_key, fields = plan
            data: dict[str, Any] = {}
            for key, read in fields:
                value = read(payload)
                if value is _NOT_PLAIN:
                    break
                data[key] = value
            else:
                known = _Known(ExecutionResult(data={root_key: data}, errors=None))
                return known  # type: ignore[return-value]  # duck-typed: execute_operation
        return super().build_per_event_executor(payload)

    def _plan(self, kind: type) -> Plan | None:
        definition = getattr(kind, "__strawberry_definition__", None)
        if not isinstance(definition, StrawberryObjectDefinition) or definition.is_graphql_generic:
            return None
        if self.hooks is not None or self.abort_signal is not None:
            return None
        if self.middleware_manager is not None and self.middleware_manager.middlewares:
            return None
        runtime = self.schema.get_type(definition.name)
        if not isinstance(runtime, GraphQLObjectType):
            return None
        try:
            return _plan(self.schema, self.fragments, self.operation.selection_set, runtime)
        except _Unplannable:
            return None


def _plan(
    schema: GraphQLSchema,
    fragments: dict[str, Any],
    root: SelectionSetNode,
    runtime: GraphQLObjectType,
) -> Plan:
    subscription = schema.subscription_type
    if subscription is None:
        raise _Unplannable
    grouped = _collect(schema, fragments, root, subscription)
    if len(grouped) != 1:
        raise _Unplannable
    ((root_key, nodes),) = grouped.items()
    field = subscription.fields.get(nodes[0].name.value)
    if field is None or any(node.name.value != nodes[0].name.value for node in nodes):
        raise _Unplannable
    if not _returns(schema, field.type, runtime):
        raise _Unplannable
    inner: dict[str, list[FieldNode]] = {}
    for node in nodes:
        if node.selection_set is None:
            raise _Unplannable
        for key, more in _collect(schema, fragments, node.selection_set, runtime).items():
            inner.setdefault(key, []).extend(more)
    return root_key, tuple((key, _reader(runtime, fields)) for key, fields in inner.items())


def _returns(schema: GraphQLSchema, type_: GraphQLType, runtime: GraphQLObjectType) -> bool:
    """Whether a field of ``type_`` (non-null, not a list) can hold a ``runtime`` value."""
    if not isinstance(type_, GraphQLNonNull):
        return False
    named = type_.of_type
    if named is runtime:
        return True
    return is_abstract_type(named) and schema.is_sub_type(_abstract(named), runtime)


def _abstract(type_: Any) -> GraphQLAbstractType:
    assert is_abstract_type(type_)
    return type_


def _collect(
    schema: GraphQLSchema,
    fragments: dict[str, Any],
    selection_set: SelectionSetNode,
    runtime: GraphQLObjectType,
) -> dict[str, list[FieldNode]]:
    """graphql-core's field collection for one runtime type, for directive-free selections."""
    grouped: dict[str, list[FieldNode]] = {}
    visited: set[str] = set()

    def visit(selections: SelectionSetNode) -> None:
        for selection in selections.selections:
            if selection.directives:
                raise _Unplannable
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                grouped.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                if condition is None or _applies(schema, condition.name.value, runtime):
                    visit(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if selection.arguments:
                    raise _Unplannable
                if name in visited:
                    continue
                visited.add(name)
                details = fragments.get(name)
                if details is None:
                    raise _Unplannable
                definition = details.definition
                if definition.directives or definition.variable_definitions:
                    raise _Unplannable
                if _applies(schema, definition.type_condition.name.value, runtime):
                    visit(definition.selection_set)
            else:
                raise _Unplannable

    visit(selection_set)
    return grouped


def _applies(schema: GraphQLSchema, condition: str, runtime: GraphQLObjectType) -> bool:
    named = schema.get_type(condition)
    if named is runtime:
        return True
    return is_abstract_type(named) and schema.is_sub_type(_abstract(named), runtime)


def _reader(runtime: GraphQLObjectType, nodes: list[FieldNode]) -> Reader:
    name = nodes[0].name.value
    if any(
        node.name.value != name or node.arguments or node.selection_set is not None
        for node in nodes
    ):
        raise _Unplannable
    if name == "__typename":
        typename = runtime.name
        return lambda _event: typename
    field = runtime.fields.get(name)
    if field is None:
        raise _Unplannable
    source = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if (
        not isinstance(source, StrawberryField)
        or source.base_resolver is not None
        or source.extensions
        or source.permission_classes
    ):
        raise _Unplannable
    attribute = source.python_name
    nullable = not isinstance(field.type, GraphQLNonNull)
    scalar = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    if scalar is GraphQLString or scalar is GraphQLID:
        return _plain(attribute, str, nullable)
    if scalar is GraphQLInt:
        read = _plain(attribute, int, nullable)
        return lambda event: _int32(read(event))
    raise _Unplannable


def _plain(attribute: str, kind: type, nullable: bool) -> Reader:
    """The attribute when it is exactly ``kind`` (or None where null is allowed): what
    graphql-core would serialize unchanged. Anything else goes the normal way."""

    def read(event: Any) -> Any:
        value = getattr(event, attribute)
        if type(value) is kind or (value is None and nullable):
            return value
        return _NOT_PLAIN

    return read


def _int32(value: Any) -> Any:
    if type(value) is int and not -_INT_MAX - 1 <= value <= _INT_MAX:
        return _NOT_PLAIN
    return value
