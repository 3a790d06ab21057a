"""End-user tokens of AUTHENTICATED projects, verified against the customer's JWKS.

Keys are fetched through the SSRF guard and cached for the document's
``max-age`` (bounded both ways: ``max-age=0`` must not mean a fetch per token);
an unknown ``kid`` triggers one refetch (the customer rotated keys), at most
once a minute per URL so a stream of junk tokens cannot turn us into a fetch
amplifier. Only asymmetric algorithms are accepted: never
``none`` and never HS*, where a public key would double as the HMAC secret.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from math import inf
from typing import Any

import jwt

from kindrobots.security.ssrf import Limits, OutboundFailed, OutboundRefused, outbound_request

ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
LEEWAY_SECONDS = 30
DEFAULT_MAX_AGE = 300
MAX_MAX_AGE = 86400
REFETCH_INTERVAL = 60
FAILURE_TTL = 30
MIN_MAX_AGE = REFETCH_INTERVAL
JWKS_LIMITS = Limits(timeout=5.0, max_bytes=64 * 1024, max_redirects=2)


class InvalidToken(Exception):
    """The token is not acceptable; ``reason`` names why (logged), never the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Entry:
    keys: dict[str, jwt.PyJWK]
    expires: float


@dataclass(frozen=True)
class EndUser:
    subject: str
    expires_at: float


class JwksCache:
    def __init__(self, allow: Sequence[str], *, https_only: bool = False) -> None:
        self._allow = allow
        self._https_only = https_only
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # When an unknown kid last forced a refetch of the URL: the rate limit of that path.
        self._refetched: dict[str, float] = {}
        self._failures: dict[str, tuple[float, str]] = {}

    async def _fetch(self, url: str) -> _Entry:
        try:
            response = await outbound_request(
                url, allow=self._allow, limits=JWKS_LIMITS, https_only=self._https_only
            )
        except (OutboundRefused, OutboundFailed) as exc:
            raise InvalidToken(f"JWKS unreachable: {exc.message}") from None
        if response.status != 200:
            raise InvalidToken(f"JWKS answered status {response.status}")
        try:
            document = json.loads(response.body)
            keys = {}
            for data in document.get("keys", []):
                if isinstance(data, dict) and data.get("kid") and data.get("use", "sig") == "sig":
                    try:
                        keys[str(data["kid"])] = jwt.PyJWK(data)
                    except jwt.PyJWTError:
                        continue  # a key type we do not use (or a malformed one)
        except (ValueError, AttributeError):
            raise InvalidToken("JWKS is not a JSON key set") from None
        now = time.monotonic()
        return _Entry(keys, now + _max_age(response.headers.get("Cache-Control")))

    async def key(self, url: str, kid: str) -> jwt.PyJWK:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            entry = self._entries.get(url)
            now = time.monotonic()
            failed_until, reason = self._failures.get(url, (-inf, ""))
            if now < failed_until:
                # A JWKS that just failed is not fetched again for every connection attempt.
                raise InvalidToken(reason)
            try:
                if entry is None or entry.expires <= now:
                    entry = self._entries[url] = await self._fetch(url)
                elif (
                    kid not in entry.keys
                    and now - self._refetched.get(url, -inf) >= REFETCH_INTERVAL
                ):
                    # Counted from the last refetch for an unknown kid, not from the last
                    # fetch: a rotation right after a routine fetch is picked up at once.
                    self._refetched[url] = now
                    entry = self._entries[url] = await self._fetch(url)
            except InvalidToken as exc:
                self._failures[url] = (now + FAILURE_TTL, exc.reason)
                raise
        assert entry is not None
        found = entry.keys.get(kid)
        if found is None:
            raise InvalidToken("unknown kid")
        return found


def _max_age(cache_control: str | None) -> float:
    match = re.search(r"max-age=(\d+)", cache_control or "")
    seconds = int(match.group(1)) if match else DEFAULT_MAX_AGE
    return float(min(max(seconds, MIN_MAX_AGE), MAX_MAX_AGE))


async def verify_end_user(
    token: str, *, cache: JwksCache, jwks_url: str, issuer: str, audience: str
) -> EndUser:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("malformed token") from None
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise InvalidToken(f"algorithm {str(algorithm)[:20]!r} not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("token has no kid")
    key = await cache.key(jwks_url, kid)
    if key.algorithm_name and key.algorithm_name != algorithm:
        raise InvalidToken("algorithm does not match the key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("token not yet valid") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("wrong audience") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("wrong issuer") from None
    except jwt.PyJWTError:
        raise InvalidToken("bad signature or claims") from None
    return EndUser(str(claims["sub"])[:255], float(claims["exp"]))
