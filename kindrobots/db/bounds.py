"""How many of a thing can exist: enforced by the rules that create them, and read by the
operation cost limit, which must count the lists a query can really return."""

from __future__ import annotations

# Manifests one agent may call (resolvers.agents).
MAX_MANIFESTS_PER_AGENT = 20
# Operations one manifest version may hold (resolvers.openapi).
MAX_OPERATIONS_PER_MANIFEST = 200
# Operations one agent may call across all its manifests, its tools (resolvers.agents when
# manifests are attached, resolvers.manifests when a new version of an attached one comes):
# one full manifest's worth. A model is offered every tool on every turn, and providers
# refuse requests with a few hundred; and it lets the cost limit count a page of agents
# with their operations by what can exist, not 20 x 200 operations per agent.
MAX_OPERATIONS_PER_AGENT = 200
