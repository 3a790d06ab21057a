"""Edge validation shared by the resolvers: each failure names its field."""

from __future__ import annotations

import re

from kindrobots.errors import BadUserInput
from kindrobots.security.redaction import register_secret

EMAIL = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256


def no_nul(value: str, field: str) -> str:
    """PostgreSQL refuses NUL (U+0000) in text; refused here, naming the field, on both
    databases alike -- for text that may otherwise hold control characters (prompts,
    chat messages, documents)."""
    if "\x00" in value:
        raise BadUserInput(field, f"{field} must not contain NUL (U+0000) characters.")
    return value


def email(value: str, field: str = "email") -> str:
    value = value.strip().lower()
    if len(value) > 320 or not EMAIL.match(value) or any(ord(char) < 32 for char in value):
        raise BadUserInput(field, "Enter a valid email address.")
    return value


def password(value: str, field: str = "password") -> str:
    register_secret(value)
    if not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise BadUserInput(
            field, f"Passwords must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long."
        )
    return value


def text(value: str, field: str, max_length: int, min_length: int = 1) -> str:
    value = value.strip()
    if not min_length <= len(value) <= max_length:
        raise BadUserInput(field, f"{field} must be {min_length} to {max_length} characters long.")
    if any(ord(char) < 32 for char in value):
        raise BadUserInput(field, f"{field} must not contain control characters.")
    return value
