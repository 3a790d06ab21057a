"""Who calls an operation: resolved when each operation begins (``RequestContext.caller``)."""

from __future__ import annotations

from kindrobots.auth.principals import WidgetActor
from kindrobots.auth.sessions import user_actor
from kindrobots.context import RequestContext


async def identify(context: RequestContext) -> None:
    """Set ``context.caller`` for the operation about to run.

    A widget was authenticated when it connected (and its project is checked again by
    every widget field); a dashboard user is looked up again for every operation, so a
    signed-out session or a removed member stops at once, also on an open WebSocket.
    """
    context.loader_cache = {}
    if isinstance(context.caller, WidgetActor):
        return
    context.caller = None
    if context.access_token:
        async with context.services.read() as session:
            context.caller = await user_actor(
                session,
                context.services.signer,
                context.access_token,
                context.now(),
                context.ip,
            )
