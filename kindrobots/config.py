"""Settings: one frozen object read from ``KR_*`` environment variables (and ``.env``).

Every value is validated at start-up; :func:`load_settings` turns validation
failures into one message per bad variable that never repeats the value, because
several of these variables are secrets.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KEY_BYTES = 32
DEV_KEYS_FILE = "keys.env"


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variables, never values."""


@dataclass(frozen=True, repr=False)
class Key:
    """One named 256-bit key from a ``kid:base64`` list."""

    kid: str
    material: bytes

    def __repr__(self) -> str:
        return f"Key(kid={self.kid!r})"


def parse_keys(value: str) -> tuple[Key, ...]:
    """Parse ``kid:base64,kid:base64``; the first key is the active one.

    Messages name a key by its position, never by any part of the value: an
    operator who swaps the two halves would otherwise see the key in the error.
    """
    keys: list[Key] = []
    items = [part.strip() for part in value.split(",") if part.strip()]
    for position, item in enumerate(items, start=1):
        kid, sep, encoded = item.partition(":")
        if not sep or not kid or not encoded:
            raise ValueError("each key must look like kid:base64")
        try:
            material = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            try:
                # URL-safe alphabet, validated too: stray characters are a typo, not noise.
                material = base64.b64decode(
                    encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True
                )
            except (binascii.Error, ValueError):
                raise ValueError(f"key {position} is not valid base64") from None
        if len(material) != KEY_BYTES:
            raise ValueError(f"key {position} must decode to {KEY_BYTES} bytes")
        if any(existing.kid == kid for existing in keys):
            raise ValueError(f"key {position} repeats the id of an earlier key")
        keys.append(Key(kid, material))
    if not keys:
        raise ValueError("at least one key is required")
    return tuple(keys)


def _b64decode(encoded: str) -> bytes:
    """Standard or URL-safe base64, padding optional; stray characters are refused."""
    padded = encoded + "=" * (-len(encoded) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return base64.b64decode(padded, altchars=b"-_", validate=True)


def parse_audit_key(value: str) -> bytes:
    """``KR_AUDIT_KEY``: base64 of at least 32 bytes (messages never quote the value)."""
    try:
        material = _b64decode(value.strip())
    except (binascii.Error, ValueError):
        raise ValueError("must be valid base64") from None
    if len(material) < KEY_BYTES:
        raise ValueError(f"must decode to at least {KEY_BYTES} bytes")
    return material


def generate_audit_key() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def format_keys(keys: tuple[Key, ...]) -> str:
    return ",".join(f"{k.kid}:{base64.b64encode(k.material).decode()}" for k in keys)


def generate_key(prefix: str) -> Key:
    return Key(f"{prefix}-{secrets.token_hex(4)}", secrets.token_bytes(KEY_BYTES))


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[tuple[str, ...], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KR_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path(".kindrobots")
    database_url: str = Field(default="", repr=False)
    database_ssl: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None = None
    redis_url: str | None = Field(default=None, repr=False)
    # Connections of the Redis client's pool (callers wait for a free one); the
    # broker's single pub/sub connection comes on top.
    redis_max_connections: int = Field(default=50, ge=1, le=10000)
    # Seconds an open live feed waits for Redis to come back before it ends with an error.
    broker_reconnect_deadline: float = Field(default=60.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str = "http://localhost:8000"
    encryption_keys: Annotated[tuple[Key, ...], NoDecode] = ()
    signing_keys: Annotated[tuple[Key, ...], NoDecode] = ()
    # HMAC key sealing the audit chain heads; b"" until load_settings fills it.
    audit_key: bytes = Field(default=b"", repr=False)
    dashboard_origins: CommaList = ("http://localhost:3000",)
    trusted_proxies: Annotated[
        tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], NoDecode
    ] = ()
    outbound_allow: CommaList = ()
    stripe_secret_key: str | None = Field(default=None, repr=False)
    stripe_webhook_secret: str | None = Field(default=None, repr=False)
    stripe_api_base: str | None = None
    stripe_price_starter: str | None = None
    stripe_price_professional: str | None = None
    stripe_price_enterprise: str | None = None
    # Days a past_due subscription keeps its tier before the Starter limits apply.
    billing_grace_days: int = Field(default=7, ge=0, le=90)

    rate_limits: bool = True
    # When Redis cannot be reached: "open" keeps serving (logged, counted), "closed" refuses.
    rate_limit_failure: Literal["open", "closed"] = "open"
    ws_max_per_ip: int = Field(default=100, ge=1)
    ws_max_per_project: int = Field(default=5000, ge=1)
    ws_max_subscriptions: int = Field(default=20, ge=1)
    # Live feeds (conversationEvents) open at once on one instance, per user and per
    # organization, whatever the number of sockets they are spread over.
    max_feeds_per_user: int = Field(default=20, ge=1)
    max_feeds_per_organization: int = Field(default=200, ge=1)
    metrics_token: str | None = Field(default=None, repr=False)
    # Sign-in lockout (resolvers/lockout.py): per account, failures within
    # ``lockout_window`` seconds; from ``lockout_slowdown_after`` on, each further attempt
    # waits (RATE_LIMITED with retryAfter, doubling up to a minute); at
    # ``lockout_threshold`` the account is locked for ``lockout_seconds``. Per IP (known
    # and unknown emails alike), ``lockout_ip_threshold`` failures in the window refuse
    # that address until the window ends.
    lockout_threshold: int = Field(default=20, ge=1)
    lockout_seconds: int = Field(default=900, ge=1)
    lockout_window: int = Field(default=900, ge=1)
    lockout_slowdown_after: int = Field(default=5, ge=1)
    lockout_ip_threshold: int = Field(default=100, ge=1)
    # Security events (signin.failed, account.locked, ...) older than this are purged.
    security_event_retention_days: int = Field(default=90, ge=1)
    # ``exportOrganization`` answers inline up to this many rows (members, conversations,
    # messages, audit events, ...); larger archives stream from ``kindrobots org export``.
    export_max_rows: int = Field(default=50_000, ge=1)
    access_token_ttl: int = Field(default=600, ge=30, le=86400)
    refresh_token_ttl: int = Field(default=30 * 86400, ge=300)
    invitation_ttl: int = Field(default=7 * 86400, ge=300)
    # Organizations one user may own: per-organization limits must not multiply freely.
    max_organizations_per_user: int = Field(default=10, ge=1)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=200)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text", ""] = ""
    # Room for a 1 MB OpenAPI document (createManifest) in its JSON request, escapes included.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    shutdown_timeout: float = Field(default=10.0, ge=0)
    # Operation limits (kindrobots.security.operation_limits); refusals are
    # GRAPHQL_VALIDATION_FAILED.
    max_query_depth: int = Field(default=12, ge=1, le=100)
    max_aliases: int = Field(default=30, ge=0)
    max_tokens: int = Field(default=5000, ge=100)
    max_directives: int = Field(default=20, ge=0)
    max_query_cost: int = Field(default=20000, ge=1)
    # Unset: "on" in development, "authenticated" in production (see `introspection_mode`).
    introspection: Literal["on", "authenticated", "off"] | None = None
    graphql_batching: bool = False
    graphql_max_batch: int = Field(default=10, ge=1, le=100)
    # Parsed and validated documents kept per process (kindrobots.security.documents).
    document_cache_size: int = Field(default=1000, ge=1, le=1_000_000)
    # A JSON file of the only documents that run (a persisted-query manifest or a
    # {sha256: document} map, or a list of documents); unset = any document.
    trusted_documents: Path | None = None
    # Direct TLS (PEM files), both or neither; unset = plain HTTP, TLS at a proxy.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # /metrics only on a listener of its own at 127.0.0.1:<port>, not on the main port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Alerts (security/alerts.py): JSON POSTed here through the outbound guard; unset =
    # the ERROR log line only. May carry a token, so it is never printed.
    alert_webhook_url: str | None = Field(default=None, repr=False)
    # Seconds of the sliding window (and of the once-per-window latch) of every alert but
    # sign-in failures, which count per minute.
    alert_window: int = Field(default=300, ge=6, le=86400)
    alert_signin_failures: int = Field(default=50, ge=1)  # platform-wide, per minute
    alert_refresh_token_reuse: int = Field(default=1, ge=1)
    alert_webhook_signature_failures: int = Field(default=5, ge=1)
    # Upstream LLM failures: at this share of the window's requests, once there are enough.
    alert_upstream_error_rate: float = Field(default=0.5, gt=0, le=1)
    alert_upstream_min_requests: int = Field(default=10, ge=1)
    # Refusal events (security/events.py): one row per kind and source per this many
    # seconds, and at most this many rows of one kind per window; the rest only counted.
    security_event_throttle_seconds: int = Field(default=60, ge=1)
    security_event_throttle_rows: int = Field(default=100, ge=1)
    # Chat text deltas arriving within this many milliseconds (0 = each on its own) and up
    # to this many characters travel as one ChatDelta (kindrobots.chat.coalesce).
    chat_coalesce_ms: float = Field(default=10.0, ge=0, le=1000)
    chat_coalesce_chars: int = Field(default=2048, ge=1, le=1_000_000)

    @field_validator("encryption_keys", "signing_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_keys(value) if value.strip() else ()
        return value

    @field_validator("audit_key", mode="before")
    @classmethod
    def _audit_key(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_audit_key(value) if value.strip() else b""
        if isinstance(value, bytes) and value and len(value) < KEY_BYTES:
            raise ValueError(f"must decode to at least {KEY_BYTES} bytes")
        return value

    @field_validator("dashboard_origins", "outbound_allow", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        items = _split_commas(value)
        if isinstance(items, list):
            try:
                return tuple(ipaddress.ip_network(item, strict=False) for item in items)
            except ValueError:
                raise ValueError("each entry must be an IP address or CIDR network") from None
        return items

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("dashboard_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
                raise ValueError("each origin must be scheme://host[:port] without a path")
        return value

    @model_validator(mode="before")
    @classmethod
    def _postgres_aliases(cls, data: object) -> object:
        """``postgres://`` and ``postgresql://`` (what hosting providers hand out) mean
        asyncpg; their libpq ``sslmode``/``ssl`` parameter, which asyncpg would refuse as
        a keyword, becomes KR_DATABASE_SSL."""
        if isinstance(data, dict) and isinstance(data.get("database_url"), str):
            url, ssl = normalize_database_url(data["database_url"])
            data = {**data, "database_url": url}
            if ssl is not None:
                given = data.get("database_ssl")
                if given and given != ssl:
                    raise ValueError("KR_DATABASE_URL's sslmode contradicts KR_DATABASE_SSL")
                data["database_ssl"] = ssl
        return data

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(
                "must start with postgresql://, postgres://, postgresql+asyncpg:// "
                "or sqlite+aiosqlite://"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None

    @field_validator("alert_webhook_url")
    @classmethod
    def _alert_webhook_url(cls, value: str | None) -> str | None:
        if value and not (value.startswith(("http://", "https://")) and urlsplit(value).hostname):
            raise ValueError("must be an absolute http(s) URL")
        return value or None

    @field_validator("trusted_documents")
    @classmethod
    def _trusted_documents(cls, value: Path | None) -> Path | None:
        if value is not None:
            load_trusted_documents(value)  # a bad file is a start-up error, here
        return value

    @field_validator("tls_cert", "tls_key", mode="before")
    @classmethod
    def _tls_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _tls_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("must name an existing file")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("KR_TLS_CERT and KR_TLS_KEY must be set together")
        return self

    @model_validator(mode="after")
    def _stripe_pair(self) -> Settings:
        # Half a configuration would take payments whose webhooks are then refused.
        if bool(self.stripe_secret_key) != bool(self.stripe_webhook_secret):
            raise ValueError(
                "KR_STRIPE_SECRET_KEY and KR_STRIPE_WEBHOOK_SECRET must be set together"
            )
        return self

    @model_validator(mode="after")
    def _production(self) -> Settings:
        if self.env != "production":
            return self
        problems = []
        if not self.encryption_keys:
            problems.append("KR_ENCRYPTION_KEYS must be set in production")
        if not self.signing_keys:
            problems.append("KR_SIGNING_KEYS must be set in production")
        if not self.audit_key:
            problems.append("KR_AUDIT_KEY must be set in production")
        if not self.database_url.startswith("postgresql+asyncpg://"):
            problems.append("KR_DATABASE_URL must be a PostgreSQL URL in production")
        if not self.public_url.startswith("https://"):
            problems.append("KR_PUBLIC_URL must be https in production")
        if self.database_ssl in ("disable", "prefer"):
            problems.append(
                "KR_DATABASE_SSL must be require, verify-ca or verify-full in production"
            )
        if not self.metrics_token and self.metrics_port is None:
            problems.append("KR_METRICS_TOKEN or KR_METRICS_PORT must be set in production")
        if self.redis_url and not _redis_encrypted_or_local(self.redis_url):
            problems.append(
                "KR_REDIS_URL must use rediss:// (TLS) in production unless Redis is on loopback"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def billing_enabled(self) -> bool:
        """Stripe billing is on: without its settings tiers are set by ``org set-tier``."""
        return bool(self.stripe_secret_key and self.stripe_webhook_secret)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def postgres_ssl(self) -> str | None:
        """The asyncpg ``ssl`` mode: never plain text to the database in production."""
        return self.database_ssl or ("require" if self.is_production else None)

    @property
    def introspection_mode(self) -> Literal["on", "authenticated", "off"]:
        """Who may run ``__schema``/``__type``: production hides the schema from strangers."""
        return self.introspection or ("authenticated" if self.is_production else "on")

    @property
    def json_logs(self) -> bool:
        return self.log_format == "json" or (self.log_format == "" and self.is_production)

    @property
    def secure_cookies(self) -> bool:
        """Browsers refuse Secure cookies on plain http, so only local development drops it."""
        local = urlsplit(self.public_url).hostname in ("localhost", "127.0.0.1")
        return self.is_production or not (self.public_url.startswith("http://") and local)


POSTGRES_ALIASES = ("postgres://", "postgresql://", "postgresql+asyncpg://")
SSL_PARAMETERS = ("sslmode", "ssl")


def normalize_database_url(url: str) -> tuple[str, str | None]:
    """(the asyncpg URL, the sslmode it carried or None) of a PostgreSQL URL; any other
    URL unchanged. The scheme is replaced without parsing the rest, so a password with
    URL-special characters stays exactly as it was written."""
    scheme = next((alias for alias in POSTGRES_ALIASES if url.startswith(alias)), None)
    if scheme is None:
        return url, None
    url = "postgresql+asyncpg://" + url[len(scheme) :]
    base, sep, query = url.partition("?")
    if not sep:
        return url, None
    kept, ssl = [], None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in SSL_PARAMETERS:
            ssl = value
        else:
            kept.append((name, value))
    return (f"{base}?{urlencode(kept)}" if kept else base), ssl


def display_url(url: str | None) -> str | None:
    """``url`` as a log line or an error may show it: scheme, host, port and path only;
    no user, password or query (which may carry a password too)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{url.split(':', 1)[0]}://?"
    if not host:  # SQLite files, Unix sockets: a path, and no credentials but in the query
        return f"{parts.scheme}://{parts.path}"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redis_encrypted_or_local(url: str) -> bool:
    """``rediss://``, a Unix socket, or plain ``redis://`` to this machine only."""
    if url.startswith(("rediss://", "unix://")):
        return True
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return _is_loopback(host)


def _trusted_entry(item: object) -> tuple[str | None, str]:
    """(the hash it is listed under, or None, and the document) of one listed item."""
    if isinstance(item, str):
        return None, item
    if isinstance(item, dict) and isinstance(item.get("body"), str):
        listed = item.get("id")
        return (listed if isinstance(listed, str) else None), item["body"]
    raise ValueError("every listed document must be a string or an object with a `body`")


def load_trusted_documents(path: Path) -> dict[str, str]:
    """The documents of a trusted-documents file, by the SHA-256 (hex) of their text.

    Accepted: Apollo's persisted-query manifest (``{"format":
    "apollo-persisted-query-manifest", "version": 1, "operations": [{"id", "body", …}]}``),
    a ``{sha256: document}`` map, or a list of documents. A listed hash must be the
    document's own SHA-256: clients send that hash, and the server checks it.
    """
    try:
        raw: object = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read the file ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the file is not valid JSON") from None
    items: list[tuple[str | None, str]]
    if isinstance(raw, dict) and raw.get("format") == "apollo-persisted-query-manifest":
        operations = raw.get("operations")
        if raw.get("version") != 1 or not isinstance(operations, list):
            raise ValueError("a persisted-query manifest needs version 1 and a list of operations")
        items = [_trusted_entry(item) for item in operations]
    elif isinstance(raw, dict):
        items = []
        for listed, body in raw.items():
            if not isinstance(body, str):
                raise ValueError("in a {sha256: document} map every document must be a string")
            items.append((listed, body))
    elif isinstance(raw, list):
        items = [_trusted_entry(item) for item in raw]
    else:
        raise ValueError("expected a persisted-query manifest, a {sha256: document} map or a list")
    documents: dict[str, str] = {}
    for listed, body in items:
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
        if listed is not None and listed.lower() != digest:
            raise ValueError(f"the hash {listed[:16]}… is not the SHA-256 of its document")
        documents[digest] = body
    if not documents:
        raise ValueError("the file lists no documents")
    return documents


def _env_name(loc: tuple[int | str, ...]) -> str:
    return f"KR_{str(loc[0]).upper()}" if loc else "settings"


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; fill development keys and the SQLite default."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{_env_name(error['loc'])}: {message}")
        # One line: an operator reads it on a terminal or in a supervisor's status.
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None

    update: dict[str, object] = {}
    if not settings.database_url:
        update["database_url"] = f"sqlite+aiosqlite:///{settings.data_dir / 'kindrobots.db'}"
    if not settings.encryption_keys or not settings.signing_keys or not settings.audit_key:
        stored = _development_keys(settings.data_dir)
        for name in ("encryption_keys", "signing_keys", "audit_key"):
            if not getattr(settings, name):
                update[name] = stored[name]
    return settings.model_copy(update=update) if update else settings


def _development_keys(data_dir: Path) -> dict[str, Any]:
    """Keys for the embedded default, generated once and kept beside the database."""
    path = data_dir / DEV_KEYS_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        content = (
            f"KR_ENCRYPTION_KEYS={format_keys((generate_key('enc'),))}\n"
            f"KR_SIGNING_KEYS={format_keys((generate_key('sig'),))}\n"
            f"KR_AUDIT_KEY={generate_audit_key()}\n"
        )
        # Written aside, then linked into place: a process starting at the same moment
        # either wins or reads the winner's complete file, never half of one.
        staging = data_dir / f".{DEV_KEYS_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        try:
            os.link(staging, path)
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    values = _read_keys_file(path)
    if "KR_AUDIT_KEY" not in values:
        values = _add_audit_key(path)
    try:
        return {
            "encryption_keys": parse_keys(values["KR_ENCRYPTION_KEYS"]),
            "signing_keys": parse_keys(values["KR_SIGNING_KEYS"]),
            "audit_key": parse_audit_key(values["KR_AUDIT_KEY"]),
        }
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{path} is damaged; delete it to generate new keys") from exc


def _read_keys_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _add_audit_key(path: Path) -> dict[str, str]:
    """A key file from before KR_AUDIT_KEY: append one, under a lock, so two processes
    starting together agree on a single key (the file keeps its 0600 mode)."""
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            text = handle.read()
            if not any(line.startswith("KR_AUDIT_KEY=") for line in text.splitlines()):
                separator = "" if not text or text.endswith("\n") else "\n"
                handle.write(f"{separator}KR_AUDIT_KEY={generate_audit_key()}\n")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return _read_keys_file(path)
