"""The operation's DataLoaders, built once per operation for its caller."""

from __future__ import annotations

from kindrobots.resolvers.loaders import Loaders, build_loaders
from kindrobots.schema.base import Info
from kindrobots.schema.permissions import user_caller


def loaders(info: Info) -> Loaders:
    context = info.context
    cached = context.loader_cache.get("loaders")
    if cached is None:
        cached = build_loaders(context.services.read, user_caller(info))
        context.loader_cache["loaders"] = cached
    assert isinstance(cached, Loaders)
    return cached
