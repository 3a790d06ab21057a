"""One redaction step for every log record of the process.

It is installed as the logging record factory, so it runs for every logger
(ours, Strawberry's, aiohttp's, SQLAlchemy's) and before any handler, including
handlers added later such as pytest's. Records are rendered, cleaned and frozen:
``msg`` becomes the redacted text, ``args`` is emptied, and a traceback is
rendered into ``exc_text`` and redacted too.

Patterns catch secrets by shape (keys, publishable project keys, tokens, card
numbers) or by the name next to them (``password=…``). Secrets without either,
registered by the request that handles them with :func:`register_secret`, are
redacted by where they can be trusted:

* a value shaped like the server's own opaque tokens (refresh and invitation tokens)
  from every line of the request;
* anything else (a password, an API key of no known shape) is the caller's choice, so
  it is redacted from exception and stack text only, where it may surface as an
  argument, never from messages: a password of ``127.0.0.1`` must not scrub the
  caller's address from the access log. Nothing logs these values in a message, and
  ``password=…`` style labels are redacted by pattern.
"""

from __future__ import annotations

import contextvars
import logging
import re
import traceback

REDACTED = "[REDACTED]"

_SENSITIVE_NAMES = (
    r"password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|authorization|cookie|set-cookie|refresh[_-]?token|access[_-]?token|client[_-]?secret"
    r"|kr_access|kr_refresh|x-project-secret|signature|credentials?"
)

# A value that is already exactly the marker is left alone: records pass through
# redaction twice (record factory, then the handler's filter) and must not become
# ``[REDACTED]]``.
_NOT_DONE = rf"(?!\s*{re.escape(REDACTED)}(?:[\s,;&}}\])]|$))"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization / Cookie headers, whatever their scheme.
    (
        re.compile(
            rf"(?i)\b(authorization|proxy-authorization)(\s*[:=]\s*){_NOT_DONE}[^\r\n,;}}\]]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    (
        re.compile(rf"(?i)\b(set-cookie|cookie)(\s*[:=]\s*){_NOT_DONE}[^\r\n}}\]]+"),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), f"Bearer {REDACTED}"),
    # name=value, name: value, "name": "value" for sensitive names.
    (
        re.compile(
            rf"(?i)([\"']?\b[\w-]*(?:{_SENSITIVE_NAMES})[\w-]*[\"']?\s*[:=]\s*){_NOT_DONE}"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;&}\])]+)"
        ),
        rf"\1{REDACTED}",
    ),
    # The password of a URL (database, Redis): scheme://user:password@host.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), rf"\1{REDACTED}@"),
    # Shapes: LLM and Stripe keys, JWTs, password hashes, private keys.
    (
        re.compile(r"\b(sk|rk|pk_live|sk_live|sk_test|rk_live|rk_test|whsec)[-_][A-Za-z0-9_-]{8,}"),
        REDACTED,
    ),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), REDACTED),
    # Publishable project keys (pk_ + 32 URL-safe characters): whoever holds one can
    # chat as the project, bill its tokens and watch its rate limits.
    (re.compile(r"\bpk_[A-Za-z0-9_-]{20,}"), REDACTED),
    # Widget conversation tokens (ct_ + 43): whoever holds one reads that conversation.
    (re.compile(r"\bct_[A-Za-z0-9_-]{20,}"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"\$(argon2(id|i|d)|2[aby])\$[^\s'\"]+"), REDACTED),
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
        REDACTED,
    ),
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
)

_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")

# Server-generated secrets: redacted from every line of the request.
_request_secrets: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "request_secrets", default=frozenset()
)
# Caller-chosen secrets: redacted from exception and stack text only.
_exception_secrets: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "exception_secrets", default=frozenset()
)

# kindrobots.auth.tokens.new_opaque_token: secrets.token_urlsafe(32), 43 characters.
_OPAQUE_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
# Shorter caller values are too likely to be ordinary words of a traceback.
MIN_EXCEPTION_SECRET = 8  # resolvers.validation.MIN_PASSWORD


def register_secret(value: str | None) -> None:
    """Redact ``value`` from records logged later in this context (request, task).

    A value shaped like a server-generated opaque token is redacted from every line.
    Any other value is the caller's choice: it is redacted from exception and stack
    text only, so no caller can remove their own address, a path or any other ordinary
    text from a message such as the access log's. Keys with a known shape (``sk-…``,
    ``pk_live_…``, JWTs) are redacted everywhere by pattern anyway.
    """
    if not value:
        return
    if _OPAQUE_TOKEN.fullmatch(value):
        _request_secrets.set(_request_secrets.get() | {value})
    elif len(value) >= MIN_EXCEPTION_SECRET:
        _exception_secrets.set(_exception_secrets.get() | {value})


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return REDACTED if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def redact(text: str, *, exception: bool = False) -> str:
    """Remove every secret this module can recognise from ``text``; ``exception`` for
    traceback and stack text, which also loses the caller's registered values."""
    secrets = _request_secrets.get()
    if exception:
        secrets = secrets | _exception_secrets.get()
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _CARD.sub(_card, text)


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = f"{record.msg!r} {record.args!r}"
    record.msg = redact(message)
    record.args = ()
    if record.exc_info:
        if record.exc_info[1] is not None:
            record.exc_text = redact(
                "".join(traceback.format_exception(*record.exc_info)), exception=True
            )
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text, exception=True)
    if record.stack_info:
        record.stack_info = redact(record.stack_info, exception=True)
    return record


class RedactingFilter(logging.Filter):
    """For handlers that receive records made before :func:`install` ran."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_installed = False


def install() -> None:
    """Make every log record of the process pass through :func:`redact_record`."""
    global _installed
    if _installed:
        return
    base_factory = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        return redact_record(base_factory(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _installed = True
