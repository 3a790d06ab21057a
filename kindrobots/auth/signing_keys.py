"""The session-token key set in the database, so that a rotation reaches every instance.

Until the first rotation the table is empty and ``KR_SIGNING_KEYS`` is the set, exactly
as before. Each instance reads the set when it starts, when the broker announces a
rotation, and when a token names a key it does not know (at most once a second, so
tokens with invented key IDs cannot turn into a statement each).
"""

from __future__ import annotations

import base64
import time
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.tokens import KeySet, TokenSigner
from kindrobots.config import Key
from kindrobots.db.models import SigningKey
from kindrobots.security.crypto import KeyRing, Sealed

# Seconds between two reads of the key set prompted by unknown key IDs.
UNKNOWN_KID_INTERVAL = 1.0


def associated_data(kid: str) -> bytes:
    """Binds a sealed private key to its key ID: a swapped row does not open."""
    return f"signing-key:{kid}".encode()


def sealed_row(keyring: KeyRing, key: Key, created_at: datetime) -> SigningKey:
    sealed = keyring.seal(base64.b64encode(key.material).decode(), associated_data(key.kid))
    return SigningKey(
        kid=key.kid,
        key_id=sealed.key_id,
        nonce=sealed.nonce,
        ciphertext=sealed.ciphertext,
        created_at=created_at,
    )


def _open(keyring: KeyRing, row: SigningKey) -> bytes:
    sealed = Sealed(row.key_id, row.nonce, row.ciphertext)
    return base64.b64decode(keyring.open(sealed, associated_data(row.kid)))


async def load(session: AsyncSession, keyring: KeyRing, now: datetime) -> KeySet | None:
    """The stored set as of ``now`` (the newest unretired key signs); None while empty."""
    rows = list(
        await session.scalars(
            select(SigningKey)
            .where(or_(SigningKey.retires_at.is_(None), SigningKey.retires_at > now))
            .order_by(SigningKey.retires_at.is_not(None), SigningKey.created_at.desc())
        )
    )
    if not rows:
        return None
    keys = tuple(Key(row.kid, _open(keyring, row)) for row in rows)
    retiring = {row.kid: row.retires_at for row in rows if row.retires_at is not None}
    return KeySet.of(keys, retiring)


async def refresh(session: AsyncSession, signer: TokenSigner, now: datetime) -> None:
    """Read the stored set into ``signer`` (no change while the table is empty)."""
    signer.refreshed_at = time.monotonic()
    if signer.keyring is None:
        return
    keys = await load(session, signer.keyring, now)
    if keys is not None:
        signer.replace(keys)


async def refresh_unknown_kid(
    session: AsyncSession, signer: TokenSigner, token: str, now: datetime
) -> bool:
    """For a token naming a key this instance has not loaded: read the set again (rate
    limited); True when the set was read."""
    if signer.knows(token) or signer.keyring is None:
        return False
    last = signer.refreshed_at
    if last is not None and time.monotonic() - last < UNKNOWN_KID_INTERVAL:
        return False
    await refresh(session, signer, now)
    return True
