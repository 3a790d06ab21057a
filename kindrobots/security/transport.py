"""Transport security: HTTPS behind a proxy, security headers, and optional direct TLS.

* In production, a request that a trusted proxy (``KR_TRUSTED_PROXIES``) says arrived
  over plain HTTP (``X-Forwarded-Proto: http``) is answered ``308`` to the same path on
  ``KR_PUBLIC_URL``'s host: 308 keeps the method and body, and the host is never taken
  from the request, so the redirect cannot be pointed elsewhere. ``/healthz`` and
  ``/readyz`` are exempt: load balancers probe them over plain HTTP.
* ``Strict-Transport-Security`` in production on HTTPS; ``X-Content-Type-Options``,
  ``Referrer-Policy`` and a ``Content-Security-Policy`` on every response that does not
  set its own (the widget demo page does): GraphiQL gets one that lets its CDN scripts
  and its inline script (by hash) run, everything else ``default-src 'none'``.
* ``KR_TLS_CERT``/``KR_TLS_KEY``: serve TLS directly, TLS 1.2 at least.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from kindrobots.config import ConfigError, Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HSTS = "max-age=63072000; includeSubDomains"
REFERRER_POLICY = "strict-origin-when-cross-origin"
# JSON, plain-text errors and the widget script: nothing in them may load or run anything.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
GRAPHIQL_PATH = "/graphql"
CDN = "https://unpkg.com"
# Probed by load balancers over plain HTTP: never redirected.
REDIRECT_EXEMPT = frozenset({"/healthz", "/readyz"})
_INLINE_SCRIPT = re.compile(rb"<script(\s[^>]*)?>(.*?)</script\s*>", re.DOTALL | re.IGNORECASE)
_SRC_ATTRIBUTE = re.compile(rb"\ssrc\s*=", re.IGNORECASE)


def _from_trusted_proxy(request: web.BaseRequest, proxies: Sequence[Network]) -> bool:
    remote = request.remote
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in network for network in proxies)


def forwarded_proto(request: web.BaseRequest, proxies: Sequence[Network]) -> str | None:
    """The scheme the client used, as a trusted proxy reports it; None when not told."""
    if not _from_trusted_proxy(request, proxies):
        return None
    # The last entry is the one our own proxy wrote; earlier ones came from the client.
    value = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
    return value or None


def is_https(request: web.BaseRequest, proxies: Sequence[Network]) -> bool:
    return request.secure or forwarded_proto(request, proxies) in ("https", "wss")


def https_location(public_url: str, request: web.BaseRequest) -> str:
    """``https://`` + the public host + the request's own path and query, still encoded."""
    host = urlsplit(public_url).netloc
    path = request.rel_url.raw_path or "/"
    if not path.startswith("/"):
        path = "/" + path
    query = request.rel_url.raw_query_string
    return f"https://{host}{path}" + (f"?{query}" if query else "")


def transport_middleware(settings: Settings) -> Middleware:
    @web.middleware
    async def transport(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            settings.is_production
            and request.path not in REDIRECT_EXEMPT
            and forwarded_proto(request, settings.trusted_proxies) in ("http", "ws")
        ):
            raise web.HTTPPermanentRedirect(https_location(settings.public_url, request))
        return await handler(request)

    return transport


@lru_cache(maxsize=8)
def graphiql_csp(page: bytes) -> str:
    """GraphiQL's page loads React and GraphiQL from the CDN (with SRI) and runs one inline
    script: allow exactly those scripts, its styles and fonts, and requests to this origin
    only (``'self'`` covers its WebSocket URL too)."""
    hashes = [
        f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
        for attributes, body in _INLINE_SCRIPT.findall(page)
        if not _SRC_ATTRIBUTE.search(attributes or b"")
    ]
    return "; ".join(
        [
            "default-src 'none'",
            " ".join(["script-src", CDN, *hashes]),
            f"style-src 'unsafe-inline' {CDN} https://fonts.googleapis.com",
            f"font-src data: {CDN} https://fonts.gstatic.com",
            f"img-src 'self' data: {CDN}",
            "connect-src 'self'",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _is_graphiql(request: web.BaseRequest, response: web.StreamResponse) -> bool:
    return (
        request.path == GRAPHIQL_PATH
        and request.method == hdrs.METH_GET
        and isinstance(response, web.Response)
        and isinstance(response.body, bytes)
        and response.content_type == "text/html"
    )


def security_headers(
    settings: Settings,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", REFERRER_POLICY)
        if settings.is_production and is_https(request, settings.trusted_proxies):
            headers.setdefault("Strict-Transport-Security", HSTS)
        if "Content-Security-Policy" not in headers:
            if _is_graphiql(request, response):
                assert isinstance(response, web.Response) and isinstance(response.body, bytes)
                headers["Content-Security-Policy"] = graphiql_csp(response.body)
            else:
                headers["Content-Security-Policy"] = DEFAULT_CSP

    return add_headers


def setup_transport(app: web.Application, settings: Settings) -> None:
    """Insert the redirect first (outermost, ahead of CORS and everything else) and add
    the headers to every response, errors included."""
    app.middlewares.insert(0, transport_middleware(settings))
    app.on_response_prepare.append(security_headers(settings))


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context with the library's secure defaults and TLS 1.2 at least."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def ssl_context_for(settings: Settings) -> ssl.SSLContext | None:
    """The direct-TLS context of ``KR_TLS_CERT``/``KR_TLS_KEY``, or None to serve plain HTTP."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        return server_ssl_context(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError):
        # The message names the variables, never the key material.
        raise ConfigError(
            "KR_TLS_CERT/KR_TLS_KEY: cannot load the certificate chain and its private key"
        ) from None
