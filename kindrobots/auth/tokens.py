"""Session tokens we issue: EdDSA-signed access JWTs, opaque refresh tokens, JWKS.

Access tokens are asymmetric so that any service can verify them from
``/.well-known/jwks.json`` without holding a secret. Every configured signing key
stays valid for verification; only the first signs. ``KR_SIGNING_KEYS`` is the set
until ``kindrobots keys rotate-signing`` moves it into the database
(:mod:`kindrobots.auth.signing_keys`), from where every instance loads it
(:meth:`TokenSigner.replace`).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kindrobots.config import Key
from kindrobots.security.crypto import KeyRing

AUDIENCE = "kindrobots"
ALGORITHM = "EdDSA"
LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class KeySet:
    """Signing keys as one value, swapped in one assignment: ``active`` signs, every key
    verifies until its ``retires_at`` (after which no token it signed is still valid)."""

    active: str
    private: dict[str, Ed25519PrivateKey]
    public: dict[str, Ed25519PublicKey]
    retires_at: dict[str, datetime]

    @classmethod
    def of(cls, keys: tuple[Key, ...], retires_at: dict[str, datetime] | None = None) -> KeySet:
        """``keys[0]`` signs."""
        private = {key.kid: Ed25519PrivateKey.from_private_bytes(key.material) for key in keys}
        public = {kid: key.public_key() for kid, key in private.items()}
        return cls(keys[0].kid, private, public, retires_at or {})


class TokenSigner:
    def __init__(
        self,
        keys: tuple[Key, ...],
        issuer: str,
        ttl: timedelta,
        keyring: KeyRing | None = None,
    ) -> None:
        self._keys = KeySet.of(keys)
        self.seed = keys
        self.issuer = issuer
        self.ttl = ttl
        # Opens the private keys stored in the database; without one, the seed is the set.
        self.keyring = keyring
        # When the set was last read from the database (monotonic seconds), or never.
        self.refreshed_at: float | None = None

    @property
    def active_kid(self) -> str:
        return self._keys.active

    def replace(self, keys: KeySet) -> None:
        self._keys = keys

    def knows(self, token: str) -> bool:
        """Whether the token names a key of the current set (an unknown one may be newer)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return True  # malformed: reading the key set again cannot help
        return isinstance(kid, str) and kid in self._keys.public

    def issue(
        self, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime
    ) -> tuple[str, datetime]:
        expires_at = now + self.ttl
        claims = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": str(user_id),
            "sid": str(session_id),
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
            "jti": secrets.token_urlsafe(12),
        }
        keys = self._keys
        token = jwt.encode(
            claims,
            keys.private[keys.active],
            algorithm=ALGORITHM,
            headers={"kid": keys.active, "typ": "at+jwt"},
        )
        return token, expires_at

    def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid token, or None for anything else (never raises)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.public.get(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "sid", "iss", "aud"]},
            )
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]),
                session_id=uuid.UUID(claims["sid"]),
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            return None

    def jwks(self, now: datetime | None = None) -> dict[str, list[dict[str, str]]]:
        """The public keys that still verify as of ``now``: retired ones are left out."""
        now = now or datetime.now(UTC)
        keys = self._keys
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": ALGORITHM,
                    "use": "sig",
                    "kid": kid,
                    "x": _b64url(key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
                }
                for kid, key in keys.public.items()
                if kid not in keys.retires_at or keys.retires_at[kid] > now
            ]
        }


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Opaque tokens are high-entropy, so a fast hash is enough to make a leaked table useless."""
    return hashlib.sha256(token.encode()).hexdigest()
