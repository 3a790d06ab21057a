"""Process-wide logging: redaction on every record, JSON lines in production.

Text lines are escaped (:class:`EscapingFormatter`): a log line is one record, so no
character a caller can steer (a percent-decoded path, a header, an error message) may
end it and start a forged one. JSON lines are safe as they are: the serializer escapes
control characters and, with ``ensure_ascii``, every non-ASCII character (U+2028 too).
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter

from kindrobots.config import Settings
from kindrobots.security import redaction

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The id of the HTTP request (or WebSocket connection) being served, for every line
# logged while serving it: an errorId line can be found from the request's X-Request-ID.
REQUEST_ID: ContextVar[str | None] = ContextVar("kindrobots_request_id", default=None)

# C0 controls, DEL, C1 controls (NEL is U+0085) and the Unicode line and paragraph
# separators: everything a terminal, an editor or a log shipper may treat as a line end.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control and line-separator character written as an escape."""
    return _CONTROL.sub(_escape_char, text)


class EscapingFormatter(logging.Formatter):
    """One record, one line: the message is escaped whole; a traceback or stack keeps its
    lines, each indented, so none of them can pass for a record of its own."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        blocks: list[str] = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            blocks.append(record.exc_text)
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            # str.splitlines splits on every line boundary Unicode knows, NEL and U+2028 too.
            line += "".join(f"\n    {escape_controls(part)}" for part in block.splitlines())
        return line


class RequestIdFilter(logging.Filter):
    """Stamps ``request_id`` on the records logged while a request is served (a record
    that names its request itself, as the access log line does, keeps that one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class TextFormatter(EscapingFormatter):
    """The text line, with the request's id at its end when there is one."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request {request_id}]" if request_id else line


class UtcJsonFormatter(JsonFormatter):
    """JSON lines stamped in ISO-8601 UTC: log shippers parse it without a zone guess."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure_logging(settings: Settings) -> None:
    redaction.install()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(redaction.RedactingFilter())
    handler.addFilter(RequestIdFilter())
    if settings.json_logs:
        handler.setFormatter(
            UtcJsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                json_ensure_ascii=True,  # U+2028/U+2029 and NEL never appear raw
            )
        )
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # Alembic announces each of its plugins at INFO on every start; the upgrades stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
