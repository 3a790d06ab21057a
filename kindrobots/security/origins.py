"""Allowed origins of a project: ``scheme://host[:port]`` exactly, or ``https://*.example.com``."""

from __future__ import annotations

import ipaddress
import re

from kindrobots.errors import BadUserInput

MAX_ORIGINS = 50
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"^(?:{_LABEL}\.)*{_LABEL}$")
_ORIGIN = re.compile(r"^(https?)://(\*\.)?([^/:?#@\s]+)(?::(\d{1,5}))?$")


def normalize_origin(value: str, *, production: bool, field: str = "allowedOrigins") -> str:
    """The canonical spelling of one allowed origin, or BAD_USER_INPUT saying what is wrong."""
    value = value.strip()
    if value == "*":
        if production:
            raise BadUserInput(field, "A bare * is not allowed; list your sites' origins.")
        return value
    match = _ORIGIN.match(value.lower())
    if not match:
        raise BadUserInput(
            field,
            f"{value[:100]!r} is not an origin: use scheme://host[:port] without a path, "
            "or https://*.example.com.",
        )
    scheme, wildcard, host, port = match.groups()
    if not _valid_host(host):
        raise BadUserInput(field, f"{value[:100]!r} has an invalid host.")
    if wildcard and (scheme != "https" or host.count(".") < 1 or _is_ip(host)):
        raise BadUserInput(field, "Wildcards look like https://*.example.com.")
    if port is not None and not 0 < int(port) < 65536:
        raise BadUserInput(field, f"{value[:100]!r} has an invalid port.")
    default_port = {"http": "80", "https": "443"}[scheme]
    port_part = f":{port}" if port and port != default_port else ""
    return f"{scheme}://{wildcard or ''}{host}{port_part}"


def normalize_origins(values: list[str], *, production: bool) -> list[str]:
    if len(values) > MAX_ORIGINS:
        raise BadUserInput("allowedOrigins", f"At most {MAX_ORIGINS} origins.")
    return list(dict.fromkeys(normalize_origin(v, production=production) for v in values))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _valid_host(host: str) -> bool:
    return _is_ip(host) or (len(host) <= 253 and bool(_HOST.match(host)))


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """Does a browser's ``Origin`` match one of a project's allowed origins?

    Exact entries match exactly (after the same normalisation); ``https://*.x.com``
    matches any subdomain of x.com but not x.com itself, and never a look-alike
    such as ``x.com.evil.net``. ``null`` and a missing Origin match nothing.
    """
    if not origin or origin == "null":
        return False
    try:
        normalized = normalize_origin(origin, production=False)
    except BadUserInput:
        return False
    if normalized == "*" or "*" in normalized:
        return False
    for entry in allowed:
        if entry == "*" or entry == normalized:
            return True
        if entry.startswith("https://*.") and normalized.startswith("https://"):
            suffix = entry[len("https://*") :]  # ".example.com[:port]"
            host_and_port = normalized[len("https://") :]
            if host_and_port.endswith(suffix) and len(host_and_port) > len(suffix):
                return True
    return False
