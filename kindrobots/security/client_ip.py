"""The caller's address, believing X-Forwarded-For only from configured proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_ip(request: web.BaseRequest, proxies: Sequence[Network]) -> str | None:
    """Walk the forwarding chain from our side and stop at the first untrusted hop."""
    remote = request.remote
    if remote is None or not _trusted(remote, proxies):
        return remote
    # Every header line, in order: a proxy may add its own line rather than append.
    lines = request.headers.getall("X-Forwarded-For", [])
    hops = [hop.strip() for line in lines for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return remote  # a hop we cannot read ends what we can believe
        if not _trusted(address, proxies):
            return address
    return remote


def _address(hop: str) -> str | None:
    """The IP of one hop, without a port (``1.2.3.4:5678``, ``[::1]:80``); None if not an IP."""
    candidate = hop
    if candidate.startswith("["):
        candidate = candidate[1:].split("]", 1)[0]
    elif candidate.count(":") == 1:
        candidate = candidate.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None
