"""Hot documents: each distinct GraphQL document parsed and validated once per process;
automatic persisted queries (Apollo's APQ) and the trusted-documents mode.

:class:`DocumentCache` is a bounded LRU keyed by the SHA-256 of the document's text. It
lives on the schema (one per process), so HTTP and WebSocket operations share it. An
entry holds the text (for APQ's hash-only requests), the parsed ``DocumentNode`` and the
validation outcomes -- the errors, operation limits included, or none.

Validation is a function of the document and, for the operation limits, of two things
that are not in it: the values of the variables given to ``first`` (the cost of
``first: $n``) and whether introspection is refused for this caller (``authenticated``
depends on who asks). Both are asked per request and are part of the key of a validation
outcome, so a signed-in caller and an anonymous one never share one.

Why not Strawberry's ``ParserCache`` and ``ValidationCache``: they are ``lru_cache``
wrappers shared by every schema in the process (keyed only by ``maxsize``), not one per
schema and its settings; ``ParserCache`` keys by the text, so it cannot answer APQ's
hash-only requests; and ``ValidationCache`` keys by the tuple of rules, in which the
operation limits' rule is a new class per request (it carries the variables for
``first: $n``), so it would never hit -- or, with a fixed rule, would cache the cost of
one request's variables and one caller's introspection verdict for all. Here a cached
refusal is the same ``GraphQLError`` object each time, masked by ``PublicErrors`` into
the same public error.

Parse failures (syntax, too many tokens, too long) are not cached: the parser stops at
the first mistake or at the limit, so repeating it is bounded. Any caller can still push
hot documents out by sending many distinct valid ones; that costs a parse, never a wrong
answer (trusted-documents mode admits only its list).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import DocumentNode, FieldNode, GraphQLError, VariableNode, visit
from graphql.language import Visitor

# Validation outcomes kept per document (distinct `first` values times callers' kinds).
MAX_OUTCOMES = 16
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
PERSISTED_QUERY_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
# Apollo clients match this message (not the code) to retry with the document.
PERSISTED_QUERY_NOT_FOUND_MESSAGE = "PersistedQueryNotFound"


def document_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _FirstVariables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_field(self, node: FieldNode, *_args: Any) -> None:
        for argument in node.arguments or ():
            if argument.name.value == "first" and isinstance(argument.value, VariableNode):
                self.names.add(argument.value.name.value)


@dataclass
class CachedDocument:
    text: str
    document: DocumentNode | None = None
    first_variables: tuple[str, ...] = ()
    # Whether it selects __schema or __type: asked once, by the operation limits.
    introspects: bool | None = None
    outcomes: dict[tuple[object, ...], tuple[GraphQLError, ...]] = field(default_factory=dict)

    def parsed(self, document: DocumentNode) -> None:
        self.document = document
        names = _FirstVariables()
        visit(document, names)
        self.first_variables = tuple(sorted(names.names))

    def outcome_key(
        self, variables: Mapping[str, Any], refuse_introspection: bool
    ) -> tuple[object, ...]:
        values = tuple(
            json.dumps(variables.get(name), sort_keys=True, default=str)
            for name in self.first_variables
        )
        return (refuse_introspection, *values)


class DocumentCache:
    """Bounded LRU of documents by SHA-256; counts misses (for tests and metrics)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, CachedDocument] = OrderedDict()
        self.parses = 0
        self.validations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str) -> CachedDocument | None:
        entry = self._entries.get(digest)
        if entry is not None:
            self._entries.move_to_end(digest)
        return entry

    def remember(self, digest: str, text: str) -> CachedDocument:
        entry = self.get(digest)
        if entry is None:
            entry = self._entries[digest] = CachedDocument(text)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry


class DocumentRefused(Exception):
    """A request error (400 BAD_REQUEST): a malformed persisted query, a hash that does not
    match its document, or a document that is not trusted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PersistedQueryNotFound(Exception):
    """A hash the server has not seen, sent without its document: the client retries."""


NOT_TRUSTED = (
    "This server runs only its trusted documents (KR_TRUSTED_DOCUMENTS); "
    "this document is not one of them."
)


@dataclass
class DocumentStore:
    """What a request's document is: sent as text, by APQ hash, or from the trusted list."""

    cache: DocumentCache
    trusted: Mapping[str, str] | None = None
    # Longer documents are refused by the parser: never registered.
    max_chars: int | None = None

    def resolve(self, query: str | None, extensions: Mapping[str, Any] | None) -> str | None:
        """The document to run; ``None`` when there is none (Strawberry's own 400)."""
        persisted = (extensions or {}).get("persistedQuery")
        digest: str | None = None
        if persisted is not None:
            digest = self._hash(persisted)
        if query is None:
            if digest is None:
                return None
            known = self.trusted.get(digest) if self.trusted is not None else None
            if known is None and self.trusted is None:
                entry = self.cache.get(digest)
                known = entry.text if entry is not None else None
            if known is None:
                raise PersistedQueryNotFound
            return known
        actual = document_hash(query)
        if digest is not None and digest != actual:
            raise DocumentRefused("The persisted query's sha256Hash is not the document's SHA-256.")
        if self.trusted is not None:
            if actual not in self.trusted:
                raise DocumentRefused(NOT_TRUSTED)
        elif digest is not None and (self.max_chars is None or len(query) <= self.max_chars):
            self.cache.remember(actual, query)  # registered: the next hash-only request runs
        return query

    @staticmethod
    def _hash(persisted: object) -> str:
        if not isinstance(persisted, dict) or persisted.get("version") != 1:
            raise DocumentRefused("extensions.persistedQuery needs version 1 and a sha256Hash.")
        digest = persisted.get("sha256Hash")
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest.lower()):
            raise DocumentRefused("extensions.persistedQuery.sha256Hash must be 64 hex digits.")
        return digest.lower()
