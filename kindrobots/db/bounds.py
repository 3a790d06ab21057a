"""How many of a thing can exist: enforced by the rules that create them, and read by the
operation cost limit, which must count the lists a query can really return."""

from __future__ import annotations

# Manifests one agent may call (resolvers.agents).
MAX_MANIFESTS_PER_AGENT = 20
# Operations one manifest version may hold (resolvers.openapi).
MAX_OPERATIONS_PER_MANIFEST = 200
