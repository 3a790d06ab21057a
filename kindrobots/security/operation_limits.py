"""Operation limits: how much one GraphQL document may ask of the server.

Every limit is checked before anything executes, by schema extensions, so HTTP and
WebSocket operations are held alike, and every refusal is an error that graphql-core
itself would raise (no ``original_error``): the client sees ``GRAPHQL_VALIDATION_FAILED``.

- the document's length in characters and its token count (the parser aborts);
- per operation: depth, aliases, directives and cost (:class:`OperationLimitsRule`);
- introspection (``__schema``, ``__type``) per ``KR_INTROSPECTION``; ``__typename`` is
  always allowed, and graphql-core's recommended introspection depth rule always applies.

A directive repeated on one location (``__typename @aa @aa @aa …``) counts once per
repetition against the directive limit, and is one error, not one per repetition:
graphql-core's rules about directives (unknown, not unique, wrong or missing arguments)
report each distinct message once per document (:func:`once_per_message`).

Cost is the number of objects an operation may return: every field whose value is an
object counts once, times the number of items of each list around it. A field with a
``first`` argument (a connection) is weighed by that argument, its default when not
given, capped at the page size the resolvers accept; the ``edges`` inside a connection
add no factor of their own; any other list counts as :data:`UNPAGED_LIST_SIZE` items.
Nested lists multiply; unpaged lists count as many items as can exist
(:data:`LIST_SIZES`), or their share of a bound they share with their siblings
(:data:`SHARED_LIST_SIZES`: one agent's operations across its manifests).

Strawberry's ``QueryDepthLimiter`` and ``MaxAliasesLimiter`` re-walk a fragment at every
spread, so a few dozen fragments that each spread the next one twice keep them busy for
ever (and the depth limiter fails on an unknown fragment); the rule here walks each
fragment once per operation, in time linear in the document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLArgument,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    Undefined,
    ValidationRule,
    VariableNode,
    get_named_type,
    value_from_ast_untyped,
)
from graphql.validation import (
    KnownArgumentNamesRule,
    KnownDirectivesRule,
    MaxIntrospectionDepthRule,
    NoSchemaIntrospectionCustomRule,
    ProvidedRequiredArgumentsRule,
    UniqueArgumentNamesRule,
    UniqueDirectivesPerLocationRule,
    ValidationContext,
)
from strawberry.extensions import MaxTokensLimiter

from kindrobots.db.bounds import (
    MAX_MANIFESTS_PER_AGENT,
    MAX_OPERATIONS_PER_AGENT,
    MAX_OPERATIONS_PER_MANIFEST,
)
from kindrobots.db.pagination import MAX_PAGE
from kindrobots.security.documents import (
    MAX_OUTCOMES,
    CachedDocument,
    DocumentCache,
    document_hash,
)

if TYPE_CHECKING:
    from graphql import ASTValidationRule

    from kindrobots.config import Settings

IntrospectionMode = Literal["on", "authenticated", "off"]

# Longest GraphQL document accepted, in characters (variables may be larger: an OpenAPI
# document travels in them). Longer ones are refused before the parser reads a token.
MAX_DOCUMENT_CHARS = 128 * 1024
# The number of items assumed for a list field without a ``first`` argument.
UNPAGED_LIST_SIZE = 10
# Unpaged lists whose real bound is larger: counting them as 10 would let one accepted
# query return hundreds of thousands of objects (100 agents x 20 manifests x 200 operations).
LIST_SIZES = {
    "Agent.manifests": MAX_MANIFESTS_PER_AGENT,
    "Manifest.operations": MAX_OPERATIONS_PER_MANIFEST,
}
# Lists that share one bound with their siblings: one agent's manifests hold at most
# MAX_OPERATIONS_PER_AGENT operations together, so under ``Agent.manifests`` each manifest
# counts its share, rounded up. Every manifest's count times the number of manifests stays
# an upper bound, and a page of 50 agents with their operations fits the default limit.
SHARED_LIST_SIZES = {
    ("Agent.manifests", "Manifest.operations"): -(
        -MAX_OPERATIONS_PER_AGENT // MAX_MANIFESTS_PER_AGENT
    ),
}
# The lists whose items are counted differently under them (see SHARED_LIST_SIZES).
_SHARING = frozenset(outer for outer, _ in SHARED_LIST_SIZES)
# Selection sets and fragment spreads nested deeper than this stop the walk (the
# operation is refused as too deep): it keeps the walk far from Python's recursion limit.
MAX_NESTING = 128
# Totals stop growing here: fragments that spread each other twice would otherwise
# reach numbers with thousands of digits.
SATURATION = 10**12

INTROSPECTION_FIELDS = frozenset(("__schema", "__type"))


@dataclass(frozen=True)
class OperationLimits:
    max_depth: int
    max_aliases: int
    max_tokens: int
    max_directives: int
    max_cost: int
    introspection: IntrospectionMode
    max_chars: int = MAX_DOCUMENT_CHARS
    page_size: int = MAX_PAGE

    @classmethod
    def from_settings(cls, settings: Settings) -> OperationLimits:
        return cls(
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_aliases,
            max_tokens=settings.max_tokens,
            max_directives=settings.max_directives,
            max_cost=settings.max_query_cost,
            introspection=settings.introspection_mode,
        )


@dataclass
class Totals:
    """What one selection set asks for; depth counts fields that have selections."""

    depth: int = 0
    aliases: int = 0
    directives: int = 0
    cost: int = 0

    def add(self, other: Totals, depth_offset: int = 0, factor: int = 1) -> None:
        self.depth = max(self.depth, other.depth + depth_offset)
        self.aliases = min(self.aliases + other.aliases, SATURATION)
        self.directives = min(self.directives + other.directives, SATURATION)
        self.cost = min(self.cost + factor * other.cost, SATURATION)


def _field_definition(parent: GraphQLNamedType | None, name: str) -> GraphQLField | None:
    if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
        field: GraphQLField | None = parent.fields.get(name)
        return field
    return None


class OperationAnalysis:
    """Depth, aliases, directives and cost of one operation, fragments walked once each."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDefinitionNode],
        operation: OperationDefinitionNode,
        variables: dict[str, Any],
        page_size: int,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.page_size = page_size
        self.variable_defaults = {
            definition.variable.name.value: value_from_ast_untyped(definition.default_value)
            for definition in operation.variable_definitions or ()
            if definition.default_value is not None
        }
        # Per fragment and the list it is spread under, if that changes its count.
        self.done: dict[tuple[str, str | None], Totals] = {}
        self.active: set[str] = set()
        self.too_deep = False
        self.totals = Totals(
            directives=len(operation.directives or ())
            + sum(len(v.directives or ()) for v in operation.variable_definitions or ())
        )
        root = schema.get_root_type(operation.operation)
        self.totals.add(self.selections(operation.selection_set, root, 0))

    def selections(
        self,
        selection_set: SelectionSetNode,
        parent: GraphQLNamedType | None,
        level: int,
        under: str | None = None,
    ) -> Totals:
        """``under``: the list field (of :data:`_SHARING`) this selection set is on."""
        totals = Totals()
        if level > MAX_NESTING:
            self.too_deep = True
            return totals
        for selection in selection_set.selections:
            totals.directives += len(selection.directives or ())
            if isinstance(selection, FieldNode):
                if selection.alias is not None:
                    totals.aliases += 1
                if selection.selection_set is None:
                    continue  # a leaf: neither deeper nor an object
                name = selection.name.value
                if name.startswith("__"):
                    # Introspection is bounded by the schema and its own rules; its
                    # aliases and directives still count.
                    inner = self.selections(selection.selection_set, None, level + 1)
                    totals.add(Totals(aliases=inner.aliases, directives=inner.directives))
                    continue
                field = _field_definition(parent, name)
                child = get_named_type(field.type) if field is not None else None
                key = f"{parent.name}.{name}" if parent is not None else name
                inner = self.selections(
                    selection.selection_set,
                    child,
                    level + 1,
                    key if key in _SHARING and field is not None else None,
                )
                factor = self.factor(selection, field, parent, under)
                totals.add(inner, depth_offset=1, factor=factor)
                totals.cost = min(totals.cost + factor, SATURATION)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                scope = self.schema.get_type(condition.name.value) if condition else parent
                totals.add(self.selections(selection.selection_set, scope, level + 1, under))
            elif isinstance(selection, FragmentSpreadNode):
                totals.add(self.fragment(selection.name.value, level + 1, under))
        return totals

    def fragment(self, name: str, level: int, under: str | None = None) -> Totals:
        if (name, under) in self.done:
            return self.done[name, under]
        fragment = self.fragments.get(name)
        if fragment is None or name in self.active:
            return Totals()  # unknown fragments and cycles are other rules' errors
        self.active.add(name)
        try:
            totals = self.selections(
                fragment.selection_set,
                self.schema.get_type(fragment.type_condition.name.value),
                level,
                under,
            )
        finally:
            self.active.discard(name)
        totals.directives += len(fragment.directives or ())
        self.done[name, under] = totals
        return totals

    def factor(
        self,
        node: FieldNode,
        field: GraphQLField | None,
        parent: GraphQLNamedType | None,
        under: str | None = None,
    ) -> int:
        """How many objects the field may return."""
        if field is None:
            return 1
        first = field.args.get("first")
        if first is not None:
            return self.first(node, first)
        field_type = field.type
        if isinstance(field_type, GraphQLNonNull):
            field_type = field_type.of_type
        if not isinstance(field_type, GraphQLList):
            return 1
        if parent is not None and parent.name.endswith("Connection"):
            return 1  # edges: bounded by the connection's own `first`
        if parent is not None:
            key = f"{parent.name}.{node.name.value}"
            shared = SHARED_LIST_SIZES.get((under, key)) if under is not None else None
            return shared if shared is not None else LIST_SIZES.get(key, UNPAGED_LIST_SIZE)
        return UNPAGED_LIST_SIZE

    def first(self, node: FieldNode, argument: GraphQLArgument) -> int:
        value: Any = Undefined
        for given in node.arguments or ():
            if given.name.value != "first":
                continue
            if isinstance(given.value, VariableNode):
                name = given.value.name.value
                value = self.variables.get(name, self.variable_defaults.get(name, Undefined))
            else:
                value = value_from_ast_untyped(given.value)
        if value is Undefined:
            value = argument.default_value
        if isinstance(value, bool) or not isinstance(value, int):
            return self.page_size  # not given and no default, or not a number at all
        return max(0, min(value, self.page_size))


def exceeded(analysis: OperationAnalysis, limits: OperationLimits) -> Iterator[str]:
    """A message for each limit the analysed operation exceeds."""
    totals = analysis.totals
    if analysis.too_deep or totals.depth > limits.max_depth:
        yield f"The operation is nested deeper than the limit of {limits.max_depth} levels."
    if totals.aliases > limits.max_aliases:
        yield f"The operation uses {totals.aliases} aliases; the limit is {limits.max_aliases}."
    if totals.directives > limits.max_directives:
        yield (
            f"The operation uses {totals.directives} directives; "
            f"the limit is {limits.max_directives}."
        )
    if totals.cost > limits.max_cost:
        yield (
            f"The operation may return {totals.cost} objects; the limit is {limits.max_cost}. "
            "Ask for fewer items (first) or fewer nested lists."
        )


def limits_rule(limits: OperationLimits, variables: dict[str, Any]) -> type[ASTValidationRule]:
    """A validation rule enforcing ``limits``; ``variables`` give ``first: $n`` its value."""

    class OperationLimitsRule(ValidationRule):
        def leave_document(self, node: DocumentNode, *_args: Any) -> None:
            # On leaving: graphql-core has by then refused documents whose fragments
            # nest too deeply for any walk.
            fragments = {
                definition.name.value: definition
                for definition in node.definitions
                if isinstance(definition, FragmentDefinitionNode)
            }
            for definition in node.definitions:
                if not isinstance(definition, OperationDefinitionNode):
                    continue
                analysis = OperationAnalysis(
                    self.context.schema, fragments, definition, variables, limits.page_size
                )
                for message in exceeded(analysis, limits):
                    self.report_error(GraphQLError(message, definition))

    return OperationLimitsRule


def once_per_message(rule: type[ASTValidationRule]) -> type[ASTValidationRule]:
    """``rule``, reporting each distinct message once: a directive repeated a thousand
    times is one mistake, and one error line, not a thousand."""

    class OncePerMessage(rule):  # type: ignore[valid-type,misc]
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.reported: set[str] = set()

        def report_error(self, error: GraphQLError) -> None:
            if error.message not in self.reported:
                self.reported.add(error.message)
                super().report_error(error)

    OncePerMessage.__name__ = OncePerMessage.__qualname__ = f"Once{rule.__name__}"
    return OncePerMessage


# The rules that report once per directive (or per argument of one): repetitions of a
# directive on one location would each add an error.
_DIRECTIVE_RULES: dict[type[ASTValidationRule], type[ASTValidationRule]] = {
    rule: once_per_message(rule)
    for rule in (
        KnownDirectivesRule,
        UniqueDirectivesPerLocationRule,
        ProvidedRequiredArgumentsRule,
        KnownArgumentNamesRule,
        UniqueArgumentNamesRule,
    )
}


def requests_introspection(document: DocumentNode) -> bool:
    """Whether any selection in the document is ``__schema`` or ``__type``."""
    stack: list[SelectionSetNode] = [
        definition.selection_set
        for definition in document.definitions
        if isinstance(definition, OperationDefinitionNode | FragmentDefinitionNode)
    ]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FieldNode) and selection.name.value in INTROSPECTION_FIELDS:
                return True
            nested = getattr(selection, "selection_set", None)
            if nested is not None:
                stack.append(nested)
    return False


SignedIn = Callable[[Any], Awaitable[bool]]


async def _nobody(_context: Any) -> bool:
    return False


class OperationLimitsExtension(MaxTokensLimiter):
    """Applies :class:`OperationLimits` to every operation (HTTP and WebSocket alike).

    ``signed_in(context)`` answers whether the caller is a signed-in user, for
    ``introspection="authenticated"``; it is asked only of documents that introspect.
    """

    def __init__(
        self,
        *,
        limits: OperationLimits,
        signed_in: SignedIn = _nobody,
        cache: DocumentCache | None = None,
    ) -> None:
        super().__init__(max_token_count=limits.max_tokens)
        self.limits = limits
        self.signed_in = signed_in
        self.cache = cache
        self._entry: CachedDocument | None = None

    def on_operation(self) -> Iterator[None]:
        # Strawberry's ParseOptions names only max_tokens; graphql-core takes more.
        options = cast("dict[str, Any]", self.execution_context.parse_options)
        options["max_source_length"] = self.limits.max_chars
        yield from super().on_operation()

    def on_parse(self) -> Iterator[None]:
        """A document already in the cache is not parsed again (see
        :mod:`kindrobots.security.documents`); one parsed here is kept."""
        context = self.execution_context
        query = context.query
        if self.cache is None or not query or len(query) > self.limits.max_chars:
            yield
            return
        digest = document_hash(query)
        entry = self.cache.get(digest)
        if entry is not None and entry.document is not None:
            context.graphql_document = entry.document
            self._entry = entry
            yield
            return
        yield
        if context.graphql_document is not None and not context.pre_execution_errors:
            self.cache.parses += 1
            entry = self.cache.remember(digest, query)
            entry.parsed(context.graphql_document)
            self._entry = entry

    async def on_validate(self) -> Any:
        context = self.execution_context
        variables = context.variables if isinstance(context.variables, dict) else {}
        refuse_introspection = await self._refuse_introspection()
        entry = self._entry
        key: tuple[object, ...] | None = None
        if entry is not None and context.pre_execution_errors is None:
            key = entry.outcome_key(variables, refuse_introspection)
            cached = entry.outcomes.get(key)
            if cached is not None:
                # Validated before, limits and all: the same outcome, the same error objects
                # (PublicErrors masks copies). An empty list tells Strawberry not to validate.
                context.pre_execution_errors = list(cached)
                yield
                return
        rules: list[type[ASTValidationRule]] = [
            MaxIntrospectionDepthRule,
            limits_rule(self.limits, variables),
        ]
        if refuse_introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        specified = tuple(_DIRECTIVE_RULES.get(rule, rule) for rule in context.validation_rules)
        context.validation_rules = (*specified, *rules)
        yield
        outcome = context.pre_execution_errors
        if entry is not None and key is not None and outcome is not None:
            assert self.cache is not None
            self.cache.validations += 1
            if len(entry.outcomes) < MAX_OUTCOMES:
                entry.outcomes[key] = tuple(outcome)

    async def _refuse_introspection(self) -> bool:
        mode = self.limits.introspection
        if mode == "on":
            return False
        if mode == "off":
            return True
        document = self.execution_context.graphql_document
        if document is None:
            return False
        entry = self._entry
        if entry is None:
            introspects = requests_introspection(document)
        else:
            if entry.introspects is None:
                entry.introspects = requests_introspection(document)
            introspects = entry.introspects
        if not introspects:
            return False
        return not await self.signed_in(self.execution_context.context)
