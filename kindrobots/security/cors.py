"""CORS for ``/graphql``: the dashboard with credentials, widgets and API callers per project.

``/graphql`` serves two kinds of browser callers with different rules:

* the dashboard (``KR_DASHBOARD_ORIGINS``): cookies or a bearer token, so its origins get
  ``Access-Control-Allow-Credentials: true``;
* widgets and the external chat API (``X-Project-Key``): the project's allowed origins,
  wildcard subdomains included, and never credentials (widgets do not use cookies, and
  the server ignores them on that path anyway).

Which rule applies is decided per request, and for a widget the origin list is the
project's, read from the database. aiohttp-cors does not fit that: its configuration is
a static ``origin → options`` map per route, it cannot look an origin up per request,
its preflight handler refuses every origin not in that map (so it could not answer a
widget preflight), it asserts that no handler set ``Access-Control-Allow-Origin`` itself
(so it cannot share the resource with code that does), and it never sends
``Vary: Origin``. The dashboard has no HTTP route of its own besides ``/graphql``, so
this small middleware covers both cases in one place; aiohttp-cors stays available for
dashboard-only routes should any appear.

Preflights carry ``Access-Control-Request-Headers`` but never the key's value, so a
widget preflight (one that announces ``x-project-key``) cannot know the project: it is
answered for any well-formed origin, without credentials, and the actual request decides:
its response carries ``Access-Control-Allow-Origin`` only when the project allows the
origin (and ``authenticate_widget`` refuses such a request with FORBIDDEN before it runs
anything). ``Access-Control-Allow-Origin: *`` is never sent: the value is always the
request's own origin, and credentials are granted only to an exact dashboard origin.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kindrobots.db.models import Project
from kindrobots.errors import BadUserInput
from kindrobots.security.origins import normalize_origin, origin_allowed

logger = logging.getLogger("kindrobots.cors")

GRAPHQL_PATH = "/graphql"
ALLOW_METHODS = "GET, POST"
DASHBOARD_HEADERS = (
    "Content-Type",
    "Authorization",
    "X-Requested-With",
    "Apollo-Require-Preflight",
)
WIDGET_HEADERS = ("Content-Type", "X-Project-Key", "Authorization")
# Readable by scripts besides the CORS-safelisted ones: 429 responses say when to retry.
EXPOSE_HEADERS = "Retry-After"
MAX_AGE = "600"
PROJECT_KEY_HEADER = "x-project-key"

OriginsLookup = Callable[[str], Awaitable[Sequence[str] | None]]
CorsHeaders = dict[str, str]
CORS_HEADERS: web.RequestKey[CorsHeaders] = web.RequestKey("cors_headers", dict)


def project_origins(sessions: async_sessionmaker[AsyncSession]) -> OriginsLookup:
    """The allowed origins of the project with this publishable key (None: no such project)."""

    async def lookup(project_key: str) -> Sequence[str] | None:
        if not project_key.startswith("pk_"):
            return None
        async with sessions() as session:
            origins = await session.scalar(
                select(Project.allowed_origins).where(Project.publishable_key == project_key[:64])
            )
        return list(origins) if origins is not None else None

    return lookup


def _canonical(origin: str) -> str | None:
    """``scheme://host[:port]`` lower-cased, default port dropped; None for anything else."""
    if not origin or origin == "null" or "*" in origin:
        return None
    try:
        return normalize_origin(origin, production=False)
    except BadUserInput:
        return None


def add_vary(response: web.StreamResponse, token: str) -> None:
    existing = [v.strip() for v in response.headers.getall(hdrs.VARY, []) for v in v.split(",")]
    if "*" in existing or token.lower() in (v.lower() for v in existing if v):
        return
    response.headers[hdrs.VARY] = ", ".join([v for v in existing if v] + [token])


def _header_names(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",") if name.strip()}


class CorsPolicy:
    """The decisions, apart from aiohttp plumbing, so each rule is readable on its own."""

    def __init__(self, dashboard_origins: Iterable[str], project_origins: OriginsLookup) -> None:
        self.dashboard = {c for c in map(_canonical, dashboard_origins) if c is not None}
        self.project_origins = project_origins

    def is_dashboard(self, origin: str) -> bool:
        canonical = _canonical(origin)
        return canonical is not None and canonical in self.dashboard

    def preflight(self, origin: str, method: str, requested_headers: str) -> CorsHeaders | None:
        """Headers granting the preflight, or None to refuse it."""
        if method.upper() not in ("GET", "POST") or _canonical(origin) is None:
            return None
        headers: CorsHeaders = {
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOW_METHODS,
            hdrs.ACCESS_CONTROL_MAX_AGE: MAX_AGE,
        }
        if PROJECT_KEY_HEADER in _header_names(requested_headers):
            # A widget or API call: the project is unknown until the actual request.
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ", ".join(WIDGET_HEADERS)
            return headers
        if self.is_dashboard(origin):
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ", ".join(DASHBOARD_HEADERS)
            headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
            return headers
        return None

    async def actual(self, origin: str, project_key: str | None) -> CorsHeaders:
        """Headers for the response to a non-preflight request from ``origin``."""
        if project_key is not None:
            try:
                allowed = await self.project_origins(project_key)
            except Exception:
                logger.warning("CORS: could not read the project's origins", exc_info=True)
                allowed = None
            if allowed is None or not origin_allowed(origin, list(allowed)):
                return {}
            return {
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
                hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: EXPOSE_HEADERS,
            }
        if self.is_dashboard(origin):
            return {
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
                hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS: "true",
                hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: EXPOSE_HEADERS,
            }
        return {}


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def cors_middleware(policy: CorsPolicy) -> Middleware:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != GRAPHQL_PATH or _is_websocket(request):
            # WebSockets are not subject to CORS: their Origin is checked at connection_init.
            return await handler(request)
        origin = request.headers.get(hdrs.ORIGIN)
        method = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD)
        if request.method == hdrs.METH_OPTIONS and origin is not None and method is not None:
            granted = policy.preflight(
                origin, method, request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
            )
            response = web.Response(status=204 if granted else 403, headers=granted or {})
            # The answer depends on all three (widget or dashboard: the requested headers).
            for token in (
                "Origin",
                "Access-Control-Request-Method",
                "Access-Control-Request-Headers",
            ):
                add_vary(response, token)
            return response
        headers: CorsHeaders = {}
        if origin is not None:
            headers = await policy.actual(origin, request.headers.get("X-Project-Key"))
        # Applied when the response is prepared: also to errors, 429s and streamed responses.
        request[CORS_HEADERS] = headers
        return await handler(request)

    return cors


async def apply_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the headers the middleware decided, and ``Vary: Origin``."""
    headers = request.get(CORS_HEADERS)
    if headers is None:
        return
    for name in (
        hdrs.ACCESS_CONTROL_ALLOW_ORIGIN,
        hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS,
        hdrs.ACCESS_CONTROL_EXPOSE_HEADERS,
    ):
        response.headers.popall(name, None)
    response.headers.update(headers)
    add_vary(response, "Origin")


def setup_cors(app: web.Application, policy: CorsPolicy) -> None:
    """Insert the middleware first (outermost), so responses of later middlewares (a rate
    limiter's 429) carry the headers too; :func:`setup_transport` goes in front of it."""
    app.middlewares.insert(0, cors_middleware(policy))
    app.on_response_prepare.append(apply_cors_headers)
