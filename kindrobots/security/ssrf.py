"""The one function for every outbound request a customer can steer (DESIGN.md, SSRF guard).

OpenAPI imports, tool calls, JWKS fetches and custom LLM base URLs all go
through :func:`outbound_request`. Before any byte leaves, the host is resolved
and every address checked; the connection is then pinned to those checked
addresses (a custom aiohttp resolver), so a second DNS answer cannot swap in an
internal address. Redirects are followed by hand, each target checked the same
way. Time, size and redirect count are capped.

aiohttp has no hook that validates the address it actually dials, which is why
the pinning resolver lives here rather than in a library.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from kindrobots import metrics
from kindrobots.errors import BadUserInput
from kindrobots.security.events import SSRF_REFUSED

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BLOCKED_NAMES = frozenset(
    {"localhost", "metadata", "metadata.google.internal", "instance-data", "metadata.azure.com"}
)
BLOCKED_SUFFIXES = (".localhost", ".internal", ".local")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
UNREACHABLE = "This address is not reachable from Kind Robots."


class OutboundRefused(BadUserInput):
    """The target is not one we may reach; nothing was sent.

    ``category`` says what kind of target it was (``scheme``, ``credentials``, ``no_host``,
    ``plain_http``, ``blocked_name``, ``non_public_address``, ``invalid_url``): the
    security event carries that, never the URL, which may hold a customer's secret.
    """

    def __init__(self, field: str, message: str, category: str = "invalid_url") -> None:
        super().__init__(field, message)
        self.category = category


class OutboundFailed(BadUserInput):
    """The target was allowed but did not answer usefully (timeout, size, network)."""


@dataclass(frozen=True)
class OutboundResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0
    max_bytes: int = 2 * 1024 * 1024
    max_redirects: int = 3


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    """Only globally routable unicast: no loopback, private, CGNAT, link-local, metadata."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
        if address.scope_id or address.is_site_local:  # fec0::/10, deprecated but routed inside
            return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


def _host_port(url: URL, field: str = "url") -> tuple[str, int]:
    if url.scheme not in ("http", "https"):
        raise OutboundRefused(field, "Only http and https URLs are allowed.", "scheme")
    if url.user is not None or url.password is not None:
        raise OutboundRefused(field, "URLs must not contain credentials.", "credentials")
    host = (url.raw_host or "").rstrip(".").lower()
    if not host:
        raise OutboundRefused(field, "The URL has no host.", "no_host")
    return host, url.port or (443 if url.scheme == "https" else 80)


def _allowed(host: str, port: int, allow: Iterable[str]) -> bool:
    return any(entry.lower() in (host, f"{host}:{port}") for entry in allow)


async def resolve(host: str, port: int, field: str = "url") -> list[IPAddress]:
    """Every address ``host`` resolves to (numeric spellings such as 0x7f.1 included)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise OutboundFailed(field, "The host name could not be resolved.") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


async def check_target(
    url: URL, allow: Iterable[str], field: str = "url", *, https_only: bool = False
) -> list[IPAddress]:
    """The addresses that ``url`` may be fetched from, or OutboundRefused naming ``field``.

    ``https_only`` (production) refuses plain http to anything not explicitly allowed:
    customers' keys and their users' conversations travel over these connections.
    """
    try:
        host, port = _host_port(url, field)
        allowed = _allowed(host, port, allow)
        if https_only and url.scheme != "https" and not allowed:
            raise OutboundRefused(field, "Only https URLs are allowed.", "plain_http")
        if not allowed and (host in BLOCKED_NAMES or host.endswith(BLOCKED_SUFFIXES)):
            raise OutboundRefused(field, UNREACHABLE, "blocked_name")
        addresses = await resolve(host.strip("[]"), port, field)
        if not addresses:
            raise OutboundFailed(field, "The host name could not be resolved.")
        if not allowed and not all(is_public(address) for address in addresses):
            raise OutboundRefused(field, UNREACHABLE, "non_public_address")
    except OutboundRefused as refused:
        metrics.current().refused(SSRF_REFUSED, {"category": refused.category, "field": field})
        raise
    return addresses


async def check_url(url: str, allow: Iterable[str], field: str, *, https_only: bool = False) -> str:
    """Validate a URL a customer stores for later outbound use (base URL, JWKS URL)."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise OutboundRefused(field, "The URL is not valid.") from None
    if not parsed.is_absolute():
        raise OutboundRefused(field, "The URL must be absolute.")
    await check_target(parsed, allow, field, https_only=https_only)
    return str(parsed)


class _PinnedResolver(AbstractResolver):
    """Answers only with the addresses that were checked, whatever DNS says now."""

    def __init__(self, host: str, addresses: list[IPAddress]) -> None:
        self._host = host
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.strip("[]").lower() != self._host.strip("[]"):
            raise OSError(f"unexpected host {host!r}")
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self._addresses
        ]

    async def close(self) -> None:
        return None


async def _pinned_session(
    target: URL,
    allow: Iterable[str],
    client_timeout: aiohttp.ClientTimeout | None = None,
    *,
    https_only: bool = False,
) -> aiohttp.ClientSession:
    """A client session that can only reach the addresses ``target`` was checked against."""
    addresses = await check_target(target, allow, https_only=https_only)
    host, _port = _host_port(target)
    connector = aiohttp.TCPConnector(
        resolver=_PinnedResolver(host, addresses), use_dns_cache=False, force_close=True
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=client_timeout or aiohttp.ClientTimeout()
    )


@asynccontextmanager
async def stream_request(
    url: str,
    *,
    allow: Iterable[str],
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    https_only: bool = False,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """An open response to read as a stream (LLM APIs). Checked and pinned; no redirects.

    Leaving the context closes the connection, which is how a cancelled chat
    stops its upstream request at once.
    """
    try:
        target = URL(url)
    except (ValueError, TypeError):
        raise OutboundRefused("url", "The URL is not valid.") from None
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout, sock_read=read_timeout
    )
    async with (
        await _pinned_session(target, allow, timeout, https_only=https_only) as session,
        session.request(
            method, target, headers=headers, json=json, allow_redirects=False
        ) as response,
    ):
        yield response


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise OutboundFailed("url", f"The response is larger than {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise OutboundFailed("url", f"The response is larger than {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def outbound_request(
    url: str,
    *,
    allow: Iterable[str],
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    limits: Limits | None = None,
    https_only: bool = False,
) -> OutboundResponse:
    """Fetch ``url`` if, and only if, every hop is a public address (or explicitly allowed)."""
    limits = limits or Limits()
    allow = tuple(allow)
    try:
        target = URL(url)
    except (ValueError, TypeError):
        raise OutboundRefused("url", "The URL is not valid.") from None
    try:
        async with asyncio.timeout(limits.timeout):
            for _hop in range(limits.max_redirects + 1):
                async with (
                    await _pinned_session(target, allow, https_only=https_only) as session,
                    session.request(
                        method,
                        target,
                        headers=headers,
                        json=json,
                        allow_redirects=False,
                    ) as response,
                ):
                    location = response.headers.get("Location")
                    if response.status in REDIRECTS and location:
                        following = target.join(URL(location))
                        if response.status in (301, 302, 303) and method != "HEAD":
                            method, json = "GET", None  # as browsers do: the body stays here
                        if (following.host, following.port) != (target.host, target.port):
                            headers = {  # nothing the first host was trusted with goes on
                                k: v for k, v in (headers or {}).items() if k.lower() == "accept"
                            }
                        target = following
                        continue
                    body = await _read_capped(response, limits.max_bytes)
                    return OutboundResponse(
                        response.status, dict(response.headers), body, str(target)
                    )
            raise OutboundFailed("url", f"More than {limits.max_redirects} redirects.")
    except TimeoutError:
        raise OutboundFailed("url", f"No answer within {limits.timeout:g} seconds.") from None
    except aiohttp.ClientError:
        raise OutboundFailed("url", "The server could not be reached.") from None
