"""Open WebSocket connections, and the live feeds on them, counted on this instance.

Idle widget connections are cheap but not free; a single address or a single
project's key must not be able to hold the whole instance, and one user or one
organization must not hold a feed for every conversation it can open. The counts
are per process on purpose: a connection lives on exactly one instance, and the
load balancer spreads them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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
