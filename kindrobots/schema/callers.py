"""Who calls an operation: resolved when each operation begins (``RequestContext.caller``)."""

from __future__ import annotations

from kindrobots.auth.principals import UserActor, WidgetActor
from kindrobots.auth.sessions import user_actor
from kindrobots.context import RequestContext
from kindrobots.resolvers.containment import organization_key, session_key, user_key


async def identify(context: RequestContext) -> None:
    """Set ``context.caller`` again: a dashboard user is looked up anew (one statement),
    so a signed-out session or a removed member stops at once, also on an open WebSocket.

    A widget was authenticated when it connected, and its project is checked again by
    every widget field. Operations of one socket share the context and run
    concurrently, so the caller is replaced in one assignment, never cleared first.

    On a WebSocket the connection is indexed under the user, the session and the
    organizations as of now (``Services.live``), so containment can close it.
    """
    if isinstance(context.caller, WidgetActor):
        return
    actor = None
    if context.access_token:
        async with context.services.read() as session:
            actor = await user_actor(
                session,
                context.services.signer,
                context.access_token,
                context.now(),
                context.ip,
            )
    context.caller = actor
    if context.websocket is not None and isinstance(actor, UserActor):
        context.services.live.add(context.websocket, live_keys(actor))


def live_keys(actor: UserActor) -> list[str]:
    return [
        user_key(actor.user.id),
        session_key(actor.session_id),
        *(organization_key(organization_id) for organization_id in actor.roles),
    ]


async def begin_operation(context: RequestContext) -> None:
    """A new operation: its caller as of now, and loaders that cache nothing older."""
    context.loader_cache = {}
    await identify(context)
