"""Session tokens we issue: EdDSA-signed access JWTs, opaque refresh tokens, JWKS.

Access tokens are asymmetric so that any service can verify them from
``/.well-known/jwks.json`` without holding a secret. Every configured signing key
stays valid for verification; only the first signs, which is how keys rotate.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kindrobots.config import Key

AUDIENCE = "kindrobots"
ALGORITHM = "EdDSA"
LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenSigner:
    def __init__(self, keys: tuple[Key, ...], issuer: str, ttl: timedelta) -> None:
        self._private = {
            key.kid: Ed25519PrivateKey.from_private_bytes(key.material) for key in keys
        }
        self._public: dict[str, Ed25519PublicKey] = {
            kid: private.public_key() for kid, private in self._private.items()
        }
        self._active = keys[0].kid
        self.issuer = issuer
        self.ttl = ttl

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
        token = jwt.encode(
            claims,
            self._private[self._active],
            algorithm=ALGORITHM,
            headers={"kid": self._active, "typ": "at+jwt"},
        )
        return token, expires_at

    def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid token, or None for anything else (never raises)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._public.get(kid) if isinstance(kid, str) else None
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

    def jwks(self) -> dict[str, list[dict[str, str]]]:
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
                for kid, key in self._public.items()
            ]
        }


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Opaque tokens are high-entropy, so a fast hash is enough to make a leaked table useless."""
    return hashlib.sha256(token.encode()).hexdigest()
