"""Open WebSocket connections, and the live feeds on them, counted on this instance.

Idle widget connections are cheap but not free; a single address or a single
project's key must not be able to hold the whole instance, and one user or one
organization must not hold a feed for every conversation it can open. The counts
are per process on purpose: a connection lives on exactly one instance, and the
load balancer spreads them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from kindrobots.security.ratelimit import address_key


@dataclass
class Slot:
    """One connection's claims, released together when it closes."""

    keys: list[str] = field(default_factory=list)
    # What the connection turned out to be at connection_init (widget, dashboard): metrics.
    kind: str | None = None


class ConnectionLimits:
    """At most ``limits[kind]`` open claims per ``kind:value`` (``ip``, ``project``,
    ``user``, ``organization``)."""

    def __init__(self, **limits: int) -> None:
        self._open: Counter[str] = Counter()
        self._limits = limits

    def claim(self, slot: Slot, kind: str, value: object) -> bool:
        """Count this connection under ``kind:value``; False (and no count) when full.

        Addresses count as the rate limits count them: IPv4 alone, IPv6 by /64.
        """
        key = f"{kind}:{address_key(value) if kind == 'ip' and isinstance(value, str) else value}"
        if self._open[key] >= self._limits[kind]:
            return False
        self._open[key] += 1
        slot.keys.append(key)
        return True

    def release(self, slot: Slot) -> None:
        for key in slot.keys:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]
        slot.keys.clear()


class Closable(Protocol):
    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class LiveConnections:
    """This instance's open WebSockets, indexed by ``user:``, ``session:``,
    ``organization:`` and ``project:`` keys, so that containment closes them at once.

    One dict entry per index key a connection is under, and one for the connection
    itself: nothing per connection runs. Keys are shared, so a thousand widgets of one
    project cost one index entry each, not one dict each.
    """

    def __init__(self) -> None:
        self._index: dict[str, dict[Closable, None]] = {}
        self._keys: dict[Closable, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, connection: Closable, keys: Iterable[str]) -> None:
        """Index ``connection`` under ``keys`` (in addition to any it is under already)."""
        known = self._keys.get(connection, ())
        fresh = tuple(key for key in dict.fromkeys(keys) if key not in known)
        for key in fresh:
            self._index.setdefault(key, {})[connection] = None
        self._keys[connection] = known + fresh

    def remove(self, connection: Closable) -> None:
        for key in self._keys.pop(connection, ()):
            members = self._index.get(key)
            if members is not None:
                members.pop(connection, None)
                if not members:
                    del self._index[key]

    def matching(self, match: Iterable[Iterable[str]]) -> list[Closable]:
        """Connections indexed under every key of at least one of ``match``."""
        found: dict[Closable, None] = {}
        for keys in match:
            first, *rest = [*keys] or [""]
            for connection in self._index.get(first, {}):
                held = self._keys[connection]
                if all(key in held for key in rest):
                    found[connection] = None
        return list(found)
