"""Prometheus metrics of one application, in a registry of its own.

Several applications can live in one process (the tests start a few), so each app owns a
:class:`Metrics` with its own ``CollectorRegistry`` and serves only that at ``/metrics``
(plus the process collectors of the default registry). Code below the server that has no
handle on the app (providers, the SSRF guard) reaches it through :func:`current`: the
server's middleware sets it for every request and WebSocket, and tasks started there
inherit it; outside any request the process's unserved fallback counts instead.

Labels are bounded by construction: GraphQL operation names through
:class:`OperationNames`, everything else from fixed sets in the code (operation types,
error codes, provider names, event names). No ID, email, key or URL is ever a label.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

OPERATION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ANONYMOUS = "anonymous"
INVALID = "invalid"
OTHER = "other"
# Distinct operation names one app labels; later names count under "other".
MAX_OPERATION_NAMES = 200
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OperationNames:
    """Operation names as labels: a client picks them, so at most ``cap`` distinct ones."""

    def __init__(self, cap: int = MAX_OPERATION_NAMES) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def label(self, name: str | None) -> str:
        if not name:
            return ANONYMOUS
        if not OPERATION_NAME.match(name):
            return INVALID
        if name in self._seen:
            return name
        if len(self._seen) >= self._cap:
            return OTHER
        self._seen.add(name)
        return name


class PoolCollector(Collector):
    """The database pool as of each scrape: connections checked out, overflow in use and
    the pool's size (SQLAlchemy's QueuePool exposes these; other pools report nothing)."""

    def __init__(self, pool: Callable[[], Any]) -> None:
        self._pool = pool

    def collect(self) -> Any:
        pool = self._pool()
        for name, attribute, text in (
            ("kindrobots_db_pool_checked_out", "checkedout", "Connections in use."),
            ("kindrobots_db_pool_overflow", "overflow", "Connections beyond the pool size."),
            ("kindrobots_db_pool_size", "size", "Connections the pool keeps."),
        ):
            method = getattr(pool, attribute, None)
            if callable(method):
                yield GaugeMetricFamily(name, text, value=float(method()))


class Metrics:
    """Every metric the application reports."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.operation_names = OperationNames()
        self.http_requests = Counter(
            "kindrobots_http_requests_total",
            "HTTP requests by route, method and status class.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.operations = Counter(
            "kindrobots_graphql_operations_total",
            "GraphQL operations by name and type.",
            ["operation", "type"],
            registry=registry,
        )
        self.operation_seconds = Histogram(
            "kindrobots_graphql_operation_seconds",
            "Time to answer a GraphQL query or mutation.",
            ["operation", "type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "kindrobots_graphql_errors_total",
            "GraphQL errors returned, by extensions.code.",
            ["code"],
            registry=registry,
        )
        self.websockets = Gauge(
            "kindrobots_websocket_connections",
            "Open WebSocket connections past connection_init.",
            ["kind"],
            registry=registry,
        )
        self.subscriptions = Gauge(
            "kindrobots_active_subscriptions",
            "Subscriptions running, by field.",
            ["kind"],
            registry=registry,
        )
        self.chat_messages = Counter(
            "kindrobots_chat_messages_total",
            "Chat replies started, by provider.",
            ["provider"],
            registry=registry,
        )
        self.tokens = Counter(
            "kindrobots_llm_tokens_total",
            "Tokens reported by the provider, by direction.",
            ["provider", "direction"],
            registry=registry,
        )
        self.llm_seconds = Histogram(
            "kindrobots_llm_request_seconds",
            "Duration of one upstream LLM request (stream included).",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.llm_errors = Counter(
            "kindrobots_llm_errors_total",
            "Upstream LLM requests that failed.",
            ["provider"],
            registry=registry,
        )
        self.tool_calls = Counter(
            "kindrobots_tool_calls_total",
            "Tool calls by outcome (ok, http_error, failed).",
            ["outcome"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "kindrobots_rate_limited_total",
            "Calls refused by a rate limit, by field and key kind.",
            ["field", "key"],
            registry=registry,
        )
        self.security_events = Counter(
            "kindrobots_security_events_total",
            "Security events recorded (signin.failed, account.locked, ...), throttled ones too.",
            ["event"],
            registry=registry,
        )
        self.webhooks = Counter(
            "kindrobots_stripe_webhooks_total",
            "Stripe webhook deliveries by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.alerts = Counter(
            "kindrobots_alerts_total",
            "Alerts raised.",
            ["alert"],
            registry=registry,
        )
        # Set by the server: the alert engine's view of upstream failures.
        self.on_upstream: Callable[[bool], None] | None = None
        # Set by the server: a refusal to record as a (throttled) security event.
        self.on_refusal: Callable[[str, dict[str, Any]], None] | None = None

    def watch_pool(self, pool: Callable[[], Any]) -> None:
        self.registry.register(PoolCollector(pool))

    def upstream(self, provider: str, seconds: float, *, ok: bool) -> None:
        self.llm_seconds.labels(provider).observe(seconds)
        if not ok:
            self.llm_errors.labels(provider).inc()
        if self.on_upstream is not None:
            self.on_upstream(ok)

    def refused(self, event: str, details: dict[str, Any]) -> None:
        if self.on_refusal is not None:
            self.on_refusal(event, details)


_FALLBACK = Metrics()
_CURRENT: ContextVar[Metrics] = ContextVar("kindrobots_metrics", default=_FALLBACK)


def current() -> Metrics:
    """The metrics of the application serving the current request."""
    return _CURRENT.get()


def use(metrics: Metrics) -> Any:
    """Make ``metrics`` current in this context; returns the token to reset it with."""
    return _CURRENT.set(metrics)


def reset(token: Any) -> None:
    _CURRENT.reset(token)
