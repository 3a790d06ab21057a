"""Encryption at rest for customer secrets: AES-256-GCM under a key ring.

The first key of ``KR_ENCRYPTION_KEYS`` encrypts; every key decrypts, which is
how keys rotate (``kindrobots keys rotate`` re-encrypts under the first). Each
value gets a fresh 96-bit nonce, and the caller binds it to its row with
associated data, so a ciphertext copied to another row or organization fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kindrobots.config import Key

NONCE_BYTES = 12


class DecryptionError(Exception):
    """Wrong key, wrong row, or tampered data. Never says which, never holds plaintext."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    nonce: bytes
    ciphertext: bytes


class KeyRing:
    def __init__(self, keys: tuple[Key, ...]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._ciphers = {key.kid: AESGCM(key.material) for key in keys}
        self.active_key_id = keys[0].kid

    def seal(self, plaintext: str, associated_data: bytes) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        cipher = self._ciphers[self.active_key_id]
        return Sealed(
            self.active_key_id, nonce, cipher.encrypt(nonce, plaintext.encode(), associated_data)
        )

    def open(self, sealed: Sealed, associated_data: bytes) -> str:
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            raise DecryptionError(f"unknown key id {sealed.key_id!r}")
        try:
            return cipher.decrypt(sealed.nonce, sealed.ciphertext, associated_data).decode()
        except InvalidTag:
            raise DecryptionError("the value does not decrypt under its key and row") from None
