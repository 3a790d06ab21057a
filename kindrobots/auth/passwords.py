"""Password hashing: Argon2id for new hashes; bcrypt (GoTrue exports) verified and upgraded."""

from __future__ import annotations

import asyncio

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verified against for unknown emails, so both answers cost one Argon2 verification.
_DUMMY_HASH = _hasher.hash("kind-robots-timing-equaliser")


def _hash(password: str) -> str:
    return _hasher.hash(password)


def _verify(stored_hash: str, password: str) -> bool:
    if stored_hash.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            return bcrypt.checkpw(password.encode(), stored_hash.encode())
        except ValueError:
            return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_upgrade(stored_hash: str) -> bool:
    if not stored_hash.startswith("$argon2id$"):
        return True
    return _hasher.check_needs_rehash(stored_hash)


async def hash_password(password: str) -> str:
    # Argon2 takes tens of milliseconds of CPU; keep it off the event loop.
    return await asyncio.to_thread(_hash, password)


async def verify_password(stored_hash: str | None, password: str) -> bool:
    """Check ``password``; with no stored hash, spend the same time and say no."""
    if stored_hash is None:
        await asyncio.to_thread(_verify, _DUMMY_HASH, password)
        return False
    return await asyncio.to_thread(_verify, stored_hash, password)
