"""Masking: every error of a result is rewritten into the public family before it leaves.

A client sees a stable ``extensions.code``. Any exception that is not a
:class:`~kindrobots.errors.PublicError` is replaced by ``Unexpected error.`` with an
``errorId``; the detail goes to the server log under that id (through the redaction
filter).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from kindrobots.errors import INTERNAL_MESSAGE, PublicError

logger = logging.getLogger("kindrobots.errors")


SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")

# graphql-core repeats the client's input in some messages ("…, found: {…}.",
# "String cannot represent a non string value: …", "Value '…' does not exist in …").
# That input may be a secret sent in the wrong shape (an API key, a password), so
# the echoed value is cut out; the type, field and path the message names remain.
ECHOED_INPUT = (
    (re.compile(r"(?:,\s*but encountered error|[,;]\s*found|\s*Found):.*\Z", re.S), ""),
    (re.compile(r"(cannot represent [^:]*value):.*\Z", re.S), r"\1"),
    (
        re.compile(r"\bValue '.*' does not exist in '(\w+)' enum\.", re.S),
        r"Value does not exist in '\1' enum.",
    ),
)


def without_input(message: str) -> str:
    """``message`` minus any value of the client's input it quotes."""
    for pattern, replacement in ECHOED_INPUT:
        message = pattern.sub(replacement, message, count=1)
    return message if message.endswith((".", "?")) else message + "."


def public_error(error: GraphQLError, hide_suggestions: bool = False) -> GraphQLError:
    """The client-facing version of ``error``; masks and logs anything unexpected.

    ``hide_suggestions`` drops graphql-core's "Did you mean …?" hints, which
    spell out the schema to anyone probing it (production).
    """
    original = error.original_error
    if isinstance(original, PublicError):
        return GraphQLError(
            original.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions=original.extensions,
        )
    if original is None:
        # Raised by graphql-core itself while parsing or validating the document.
        message = without_input(error.message)
        message = SUGGESTION.sub("", message) if hide_suggestions else message
        return GraphQLError(
            message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions={"code": "GRAPHQL_VALIDATION_FAILED"},
        )
    if isinstance(original, GraphQLError) and original.original_error is None:
        # Variable coercion errors arrive wrapped; they are the client's input too.
        return public_error(original, hide_suggestions)
    error_id = uuid.uuid4().hex
    logger.error(
        "unexpected error %s at %s",
        error_id,
        ".".join(str(part) for part in error.path or ()),
        exc_info=original,
        extra={"error_id": error_id},
    )
    return GraphQLError(
        INTERNAL_MESSAGE,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": "INTERNAL_SERVER_ERROR", "errorId": error_id},
    )


class PublicErrors(SchemaExtension):
    """Rewrites every error of a result into the public family before it leaves.

    Streamed results (subscriptions, WebSocket operations) are rewritten one by
    one as they are yielded; the final rewrite then skips them.
    """

    def __init__(self, *, hide_suggestions: bool = False) -> None:
        self.hide_suggestions = hide_suggestions
        self._streamed = False

    def on_operation(self) -> Iterator[None]:
        yield
        if not self._streamed:
            self._rewrite(self.execution_context.result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self._streamed = True
        self._rewrite(result)
        yield

    def _rewrite(self, result: Any) -> None:
        errors = getattr(result, "errors", None)
        if result is not None and errors:
            result.errors = [public_error(error, self.hide_suggestions) for error in errors]
