"""Masking: every error of a result is rewritten into the public family before it leaves.

A client sees a stable ``extensions.code``. Any exception that is not a
:class:`~kindrobots.errors.PublicError` is classified once (:func:`public_failure`): a
backing service that cannot serve right now (:func:`is_unavailable`) becomes
``SERVICE_UNAVAILABLE``; anything else is replaced by ``Unexpected error.`` with an
``errorId``, the detail going to the server log under that id (through the redaction
filter). GraphQL results are rewritten by :class:`PublicErrors`; the paths that run
before any operation (building the context, authenticating a widget, ``connection_init``)
call :func:`public_failure` themselves.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis.exceptions
from graphql import GraphQLError
from prometheus_client import Counter
from sqlalchemy import exc as sa_exc
from strawberry.extensions import SchemaExtension

from kindrobots.errors import INTERNAL_MESSAGE, PublicError, ServiceUnavailable

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


# SQLSTATEs of a server that cannot serve right now: class 08 (connection exception),
# 57P01-57P03 (shutting down, crashed, starting up), 53300 (too many connections).
UNAVAILABLE_SQLSTATE_CLASSES = ("08",)
UNAVAILABLE_SQLSTATES = frozenset(("57P01", "57P02", "57P03", "53300"))
MAX_CHAIN = 8


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: a DBAPI error's driver error, explicit causes."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < MAX_CHAIN:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "orig", None) if isinstance(current, sa_exc.DBAPIError) else None
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__


def _sqlstate(error: BaseException) -> str | None:
    for name in ("sqlstate", "pgcode"):
        value = getattr(error, name, None)
        if isinstance(value, str):
            return value
    return None


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says a backing service cannot serve right now (try again later),
    rather than that this request or the code is wrong.

    Unavailable: the pool timed out waiting for a connection; a connection was found dead
    (SQLAlchemy invalidated it); the driver could not connect or lost the connection
    (``ConnectionError``, a socket error or timeout under a database error, SQLSTATE class
    08); the server is shutting down, recovering or out of connections; Redis unreachable.
    Not unavailable: SQLite's "database is locked" past its busy timeout (contention
    between writers, not an outage), constraint violations, SQL errors, anything else.
    """
    under_database = False
    for link in _chain(error):
        if isinstance(link, sa_exc.TimeoutError):
            return True  # QueuePool: no connection became free within pool_timeout
        if isinstance(link, sa_exc.DBAPIError):
            if link.connection_invalidated:
                return True
            under_database = True
        if isinstance(link, ConnectionError | redis.exceptions.ConnectionError):
            return True  # refused, reset, broken pipe; redis' own (incl. its TimeoutError)
        if isinstance(link, redis.exceptions.TimeoutError):
            return True
        if under_database and isinstance(link, OSError):
            return True  # asyncpg's connect: socket errors, TimeoutError, name resolution
        sqlstate = _sqlstate(link)
        if sqlstate is not None and (
            sqlstate.startswith(UNAVAILABLE_SQLSTATE_CLASSES) or sqlstate in UNAVAILABLE_SQLSTATES
        ):
            return True
    return False


def _summary(error: BaseException) -> str:
    """What failed, for the log: exception types only (a database error's text names the
    statement; its driver's may quote a value), then the innermost OS error's text."""
    links = list(_chain(error))
    names = " <- ".join(type(link).__name__ for link in links)
    innermost = links[-1]
    if isinstance(innermost, OSError) and not isinstance(innermost, sa_exc.SQLAlchemyError):
        return f"{names}: {str(innermost)[:200]}"
    return names


UNAVAILABLE = Counter(
    "kindrobots_service_unavailable_total",
    "Requests and operations answered SERVICE_UNAVAILABLE because a backing service was down.",
)
# During an outage every request fails alike: one line per this many seconds says so,
# with how many were answered since the last one; the counter has every one.
UNAVAILABLE_LOG_INTERVAL = 30.0


class _OutageLog:
    def __init__(self) -> None:
        self._last = -UNAVAILABLE_LOG_INTERVAL
        self._since = 0

    def failed(self, where: str, error: BaseException) -> None:
        UNAVAILABLE.inc()
        self._since += 1
        now = time.monotonic()
        if now - self._last < UNAVAILABLE_LOG_INTERVAL:
            return
        logger.warning(
            "service unavailable at %s: %s (%d answered SERVICE_UNAVAILABLE since the last "
            "line; next line in %.0f s at the earliest)",
            where,
            _summary(error),
            self._since,
            UNAVAILABLE_LOG_INTERVAL,
        )
        self._last, self._since = now, 0


_outages = _OutageLog()


def public_failure(error: BaseException, where: str) -> PublicError:
    """The public form of an exception that is not a :class:`PublicError`, logged once:
    ``SERVICE_UNAVAILABLE`` when a backing service is down, else ``Unexpected error.``
    with an ``errorId`` under which the full detail is logged."""
    if isinstance(error, PublicError):
        return error
    if is_unavailable(error):
        _outages.failed(where, error)
        return ServiceUnavailable()
    error_id = uuid.uuid4().hex
    logger.error(
        "unexpected error %s at %s",
        error_id,
        where,
        exc_info=error,
        extra={"error_id": error_id},
    )
    return PublicError(INTERNAL_MESSAGE, errorId=error_id)


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
    where = ".".join(str(part) for part in error.path or ()) or "operation start"
    failure = public_failure(original, where)
    return GraphQLError(
        failure.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions=failure.extensions,
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
