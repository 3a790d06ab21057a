"""Global, opaque object IDs: ``base64url("Type:uuid")``.

Clients must treat them as opaque; the type prefix lets ``node(id)`` dispatch and
stops an ID of one type from being accepted where another is expected.
"""

from __future__ import annotations

import base64
import binascii
import uuid

from kindrobots.errors import NotFound


def to_global_id(type_name: str, raw_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{raw_id}".encode()).decode().rstrip("=")


def parse_global_id(global_id: str) -> tuple[str, uuid.UUID]:
    """Split an ID; anything malformed is NOT_FOUND, exactly like an ID that does not exist."""
    try:
        text = base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode()
        type_name, _, raw = text.partition(":")
        return type_name, uuid.UUID(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise NotFound() from None


def from_global_id(global_id: str, expected_type: str) -> uuid.UUID:
    type_name, raw_id = parse_global_id(global_id)
    if type_name != expected_type:
        raise NotFound()
    return raw_id
