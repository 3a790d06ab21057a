"""A customer's identity provider in miniature: key pairs, signed end-user tokens, a JWKS URL.

The JWKS server is a real aiohttp server on 127.0.0.1. Each key set lives at its own
path, so tests (and the server's per-URL cache) never share one; every document
counts the requests it answered and can switch to a new key set (a key rotation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.servers import start_app

ISSUER = "https://id.customer.example"
AUDIENCE = "kind-robots-widget"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    """One asymmetric key pair of the identity provider, known by ``kid``."""

    kid: str
    algorithm: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def rsa(cls, kid: str | None = None) -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid or f"rsa-{uuid.uuid4().hex[:8]}", "RS256", private)

    @classmethod
    def ec(cls, kid: str | None = None) -> SigningKey:
        private = ec.generate_private_key(ec.SECP256R1())
        return cls(kid or f"ec-{uuid.uuid4().hex[:8]}", "ES256", private)

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid}
        )


def claims(
    subject: str = "end-user-1",
    *,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    expires_in: int = 600,
    not_before_in: int | None = None,
) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": subject,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + expires_in,
    }
    if not_before_in is not None:
        values["nbf"] = now + not_before_in
    return values


def unsigned_token(payload: dict[str, Any], kid: str) -> str:
    """``alg: none``: a token anyone can forge."""
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."


def hmac_token(payload: dict[str, Any], kid: str, secret: bytes) -> str:
    """HS256 keyed with public material: the classic algorithm-confusion forgery."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@dataclass
class KeySet:
    """One JWKS document: the keys it publishes, its max-age, and how often it was fetched."""

    path: str
    base_url: str
    keys: list[SigningKey]
    max_age: int = 300
    requests: int = 0

    @property
    def url(self) -> str:
        return f"{self.base_url}{self.path}"

    def document(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.keys]}


class JwksServer:
    def __init__(self) -> None:
        self._sets: dict[str, KeySet] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def host_port(self) -> str:
        """The ``KR_OUTBOUND_ALLOW`` entry that lets the server reach this one."""
        return f"127.0.0.1:{self.port}"

    def key_set(self, keys: list[SigningKey], *, max_age: int = 300) -> KeySet:
        path = f"/{uuid.uuid4().hex[:12]}/jwks.json"
        key_set = KeySet(path, f"http://{self.host_port}", keys, max_age)
        self._sets[path] = key_set
        return key_set

    def forget(self, key_set: KeySet) -> None:
        """Stop serving ``key_set``: its URL answers 404 from now on."""
        self._sets = {path: other for path, other in self._sets.items() if other is not key_set}

    async def _serve(self, request: web.Request) -> web.Response:
        key_set = self._sets.get(request.path)
        if key_set is None:
            raise web.HTTPNotFound()
        key_set.requests += 1
        return web.json_response(
            key_set.document(), headers={"Cache-Control": f"public, max-age={key_set.max_age}"}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{prefix}/jwks.json", self._serve)
        self._runner, self.port = await start_app(app, access_log=None)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
