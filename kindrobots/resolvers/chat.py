"""Chat: widget callers, conversations, and one agent reply streamed and stored.

The user's message is stored before the upstream call; the reply when it is
complete, or marked partial when the stream breaks or the client leaves. Every
stored message is published on the project's channel so that a dashboard on
any instance sees it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from kindrobots.auth.roles import Role
from kindrobots.chat import runtime, tools
from kindrobots.chat.providers import (
    ANTHROPIC_BASE,
    OPENAI_BASE,
    AnthropicProvider,
    ChatRequest,
    DemoProvider,
    OpenAIProvider,
    Provider,
    ProviderError,
    TextDelta,
    ToolCall,
    Turn,
    Usage,
)
from kindrobots.context import RequestContext, Services
from kindrobots.db.models import (
    Agent,
    AgentManifest,
    Conversation,
    LlmCredential,
    Manifest,
    ManifestVersion,
    Message,
    Project,
)
from kindrobots.db.pagination import Page, paginate
from kindrobots.resolvers.access import (
    member_organizations,
    organization_page,
    require_role,
    require_viewer,
    scoped_get,
)
from kindrobots.resolvers.credentials import LlmProvider, open_api_key
from kindrobots.resolvers.projects import AccessMode
from kindrobots.security.errors import BadUserInput, Forbidden, NotFound, Unauthenticated
from kindrobots.security.jwks import InvalidToken, verify_end_user
from kindrobots.security.origins import origin_allowed

logger = logging.getLogger("kindrobots.chat")

MAX_MESSAGE_CHARS = 8000
HISTORY_MESSAGES = 50


@dataclass(frozen=True)
class WidgetCaller:
    """A widget or API client speaking for an end user of one project."""

    project_id: uuid.UUID
    organization_id: uuid.UUID
    end_user: str | None
    # What was checked at connection time, checked again before every message, so that
    # a rotated key, a removed origin or an expired token ends an open connection too.
    project_key: str = ""
    origin: str | None = None
    expires_at: float | None = None


class WidgetRejected(Exception):
    """Refused before the connection is accepted: 4401 for a bad token, 4403 otherwise."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


async def authenticate_widget(
    services: Services,
    *,
    project_key: object,
    origin: str | None,
    token: str | None,
    browser_only: bool,
) -> WidgetCaller:
    """Check the project key, the Origin and (AUTHENTICATED projects) the end-user JWT.

    ``browser_only`` (WebSocket widgets) refuses a missing Origin; the HTTP API
    accepts server-to-server calls without one but checks any Origin it gets.
    """
    if not isinstance(project_key, str) or not project_key.startswith("pk_"):
        raise WidgetRejected(4403, "missing or malformed project key")
    async with services.read() as session:
        project = await session.scalar(
            select(Project).where(Project.publishable_key == project_key[:64])
        )
    if project is None:
        raise WidgetRejected(4403, "unknown project key")
    if (origin is not None or browser_only) and not origin_allowed(
        origin, list(project.allowed_origins)
    ):
        raise WidgetRejected(4403, f"origin {str(origin)[:100]!r} not allowed for the project")
    end_user, expires_at = None, None
    if project.access_mode == AccessMode.AUTHENTICATED.value:
        if not token:
            raise WidgetRejected(4401, "end-user token missing")
        assert project.jwks_url and project.jwt_issuer and project.jwt_audience
        try:
            user = await verify_end_user(
                token,
                cache=services.jwks,
                jwks_url=project.jwks_url,
                issuer=project.jwt_issuer,
                audience=project.jwt_audience,
            )
        except InvalidToken as exc:
            raise WidgetRejected(4401, f"end-user token refused: {exc.reason}") from None
        end_user, expires_at = user.subject, user.expires_at
    return WidgetCaller(
        project.id, project.organization_id, end_user, project.publishable_key, origin, expires_at
    )


@dataclass(frozen=True)
class Started:
    conversation_id: uuid.UUID


@dataclass(frozen=True)
class Completed:
    message_id: uuid.UUID
    content: str
    usage: Usage


@dataclass(frozen=True)
class Failed:
    message: str
    retry_after: int | None = None


ChatEvent = Started | TextDelta | runtime.ToolRun | Completed | Failed


@dataclass
class _Agent:
    agent: Agent
    credential: LlmCredential | None
    manifests: list[tuple[list[str], list[dict[str, Any]]]] = field(default_factory=list)


def _still_allowed(caller: WidgetCaller, project: Project | None) -> None:
    if project is None or project.publishable_key != caller.project_key:
        raise Forbidden("This project key is no longer valid.")
    if caller.origin is not None and not origin_allowed(
        caller.origin, list(project.allowed_origins)
    ):
        raise Forbidden("This site is no longer allowed to use this chat.")
    if project.access_mode == AccessMode.AUTHENTICATED.value and caller.end_user is None:
        raise Unauthenticated("This chat now needs a signed-in end user.")
    if caller.expires_at is not None and time.time() >= caller.expires_at:
        raise Unauthenticated("The end-user token has expired.")


async def _load_agent(services: Services, caller: WidgetCaller) -> _Agent:
    async with services.read() as session:
        row = (
            await session.execute(
                select(Project, Agent, LlmCredential)
                .join(Agent, Project.agent_id == Agent.id)
                .outerjoin(LlmCredential, LlmCredential.id == Agent.llm_credential_id)
                .where(Project.id == caller.project_id)
            )
        ).first()
        _still_allowed(caller, row[0] if row else None)
        assert row is not None
        _project, agent, credential = row
        versions = (
            await session.scalars(
                select(ManifestVersion)
                .join(Manifest, Manifest.id == ManifestVersion.manifest_id)
                .join(AgentManifest, AgentManifest.manifest_id == Manifest.id)
                .where(
                    AgentManifest.agent_id == agent.id,
                    ManifestVersion.version == Manifest.version,
                )
                .order_by(AgentManifest.position)
            )
        ).all()
    return _Agent(agent, credential, [(list(v.servers), list(v.operations)) for v in versions])


def _provider(services: Services, credential: LlmCredential | None) -> Provider:
    settings = services.settings
    if credential is None or credential.provider == LlmProvider.DEMO.value:
        if settings.is_production and credential is None:
            raise ProviderError("This agent has no LLM credential configured.")
        return DemoProvider()
    # Decrypted only for the lifetime of this provider object, i.e. this one reply.
    api_key = open_api_key(services.keyring, credential)
    allow, https_only = settings.outbound_allow, settings.is_production
    if credential.provider == LlmProvider.ANTHROPIC.value:
        return AnthropicProvider(
            credential.base_url or ANTHROPIC_BASE, api_key, allow, https_only=https_only
        )
    if credential.provider == LlmProvider.OPENAI.value:
        return OpenAIProvider(
            credential.base_url or OPENAI_BASE, api_key, allow, https_only=https_only
        )
    if not credential.base_url:
        raise ProviderError("This agent's OpenAI-compatible credential has no base URL.")
    return OpenAIProvider(credential.base_url, api_key, allow, https_only=https_only)


def _turns(messages: list[Message]) -> list[Turn]:
    turns: list[Turn] = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            calls = [ToolCall(c["id"], c["name"], c["arguments"]) for c in message.tool_calls]
            turns.append(Turn("assistant", "", tool_calls=calls))
            turns.extend(
                Turn("tool", c.get("forModel", ""), tool_call_id=c["id"])
                for c in message.tool_calls
            )
            if message.content:
                turns.append(Turn("assistant", message.content))
        else:
            turns.append(Turn(message.role, message.content))
    return turns


async def _conversation(
    services: Services, caller: WidgetCaller, conversation_id: uuid.UUID | None
) -> Conversation:
    async with services.write() as session:
        if conversation_id is not None:
            conversation = await session.scalar(
                select(Conversation).where(
                    Conversation.id == conversation_id,
                    Conversation.project_id == caller.project_id,
                    # An anonymous widget may continue only anonymous conversations, and
                    # an end user only their own.
                    Conversation.end_user.is_(None)
                    if caller.end_user is None
                    else Conversation.end_user == caller.end_user,
                )
            )
            if conversation is None:
                raise NotFound("The conversation was not found.")
            return conversation
        conversation = Conversation(
            organization_id=caller.organization_id,
            project_id=caller.project_id,
            end_user=caller.end_user,
        )
        session.add(conversation)
    return conversation


def _event(conversation: Conversation, message: Message) -> dict[str, Any]:
    return {
        "conversationId": str(conversation.id),
        "message": {
            "id": str(message.id),
            "role": message.role,
            "content": message.content,
            "createdAt": message.created_at.isoformat(),
        },
    }


def channel(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:messages"


async def _store(services: Services, conversation: Conversation, message: Message) -> Message:
    async with services.write() as session:
        session.add(message)
        conversation = await session.merge(conversation)
        conversation.updated_at = message.created_at
    try:
        await services.broker.publish(
            channel(conversation.project_id), _event(conversation, message)
        )
    except Exception:
        # The message is stored; a dashboard that missed it sees it on its next query.
        logger.warning("could not publish a chat message to the broker", exc_info=True)
    return message


async def chat(
    ctx: RequestContext, caller: WidgetCaller, conversation_id: uuid.UUID | None, text: str
) -> AsyncGenerator[ChatEvent, None]:
    """One reply to ``text``: events as they happen, with everything stored on the way."""
    services = ctx.services
    text = text.strip()
    if not 1 <= len(text) <= MAX_MESSAGE_CHARS:
        raise BadUserInput("message", f"Messages are 1 to {MAX_MESSAGE_CHARS} characters long.")
    loaded = await _load_agent(services, caller)
    conversation = await _conversation(services, caller, conversation_id)
    async with services.read() as session:
        history = list(
            (
                await session.scalars(
                    select(Message)
                    .where(Message.conversation_id == conversation.id)
                    .order_by(Message.created_at.desc(), Message.id.desc())
                    .limit(HISTORY_MESSAGES)
                )
            ).all()
        )
    history.reverse()
    user_message = await _store(
        services,
        conversation,
        Message(
            organization_id=caller.organization_id,
            conversation_id=conversation.id,
            role="user",
            content=text,
            created_at=ctx.now(),
        ),
    )
    yield Started(conversation.id)

    reply: list[str] = []
    runs: list[dict[str, Any]] = []
    usage = Usage(0, 0)
    specs = tools.build_tools(loaded.manifests)
    try:
        provider = _provider(services, loaded.credential)
        request = ChatRequest(
            model=loaded.agent.model,
            system=loaded.agent.system_prompt,
            turns=runtime.bound_history(_turns([*history, user_message])),
            tools=[spec.tool for spec in specs.values()],
            temperature=loaded.agent.temperature,
        )
        events = runtime.converse(
            provider,
            request,
            specs,
            services.settings.outbound_allow,
            https_only=services.settings.is_production,
        )
        # However this generator ends, the upstream request ends with it.
        async with aclosing(events):
            async for event in events:
                if isinstance(event, TextDelta):
                    reply.append(event.text)
                elif isinstance(event, runtime.ToolRun):
                    runs.append(
                        {
                            "id": event.call.id,
                            "name": event.call.name,
                            "arguments": event.call.arguments,
                            "result": event.result,
                            "forModel": event.for_model,
                        }
                    )
                else:
                    usage = event
                    continue
                yield event
    except ProviderError as exc:
        await _store_reply(ctx, conversation, caller, reply, runs, usage, partial=True)
        yield Failed(exc.message, exc.retry_after)
        return
    except (asyncio.CancelledError, GeneratorExit):
        # The client left, while we waited for the provider (the task is cancelled) or while
        # an event was being sent (the stream is closed at a yield): keep what was said,
        # without letting the cancellation cut the write.
        await asyncio.shield(
            _store_reply(ctx, conversation, caller, reply, runs, usage, partial=True)
        )
        raise
    stored = await _store_reply(ctx, conversation, caller, reply, runs, usage, partial=False)
    assert stored is not None
    yield Completed(stored.id, stored.content, usage)


async def _store_reply(
    ctx: RequestContext,
    conversation: Conversation,
    caller: WidgetCaller,
    reply: list[str],
    runs: list[dict[str, Any]],
    usage: Usage,
    *,
    partial: bool,
) -> Message | None:
    if partial and not reply and not runs:
        return None
    return await _store(
        ctx.services,
        conversation,
        Message(
            organization_id=caller.organization_id,
            conversation_id=conversation.id,
            role="assistant",
            content="".join(reply),
            partial=partial,
            tool_calls=runs,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            created_at=ctx.now(),
        ),
    )


async def list_conversations(
    ctx: RequestContext,
    organization_id: uuid.UUID,
    project_id: uuid.UUID | None,
    first: int,
    after: str | None,
) -> Page[Conversation]:
    conditions = [Conversation.project_id == project_id] if project_id is not None else []
    return await organization_page(
        ctx, Conversation, organization_id, Role.VIEWER, first, after, *conditions
    )


async def list_messages(
    ctx: RequestContext, conversation: Conversation, first: int, after: str | None
) -> Page[Message]:
    viewer = await require_viewer(ctx)
    statement = select(Message).where(
        Message.conversation_id == conversation.id,
        Message.organization_id.in_(member_organizations(viewer)),
    )
    async with ctx.services.read() as session:
        return await paginate(session, statement, Message.created_at, Message.id, first, after)


async def get_conversation(ctx: RequestContext, conversation_id: uuid.UUID) -> Conversation:
    async with ctx.services.read() as session:
        return await scoped_get(session, ctx, Conversation, conversation_id)


async def get_message(ctx: RequestContext, message_id: uuid.UUID) -> Message:
    async with ctx.services.read() as session:
        return await scoped_get(session, ctx, Message, message_id)


async def project_events(
    ctx: RequestContext, project_id: uuid.UUID
) -> AsyncIterator[dict[str, Any]]:
    """Every message stored for the project from now on, from whichever instance stored it."""
    viewer = await require_viewer(ctx)
    async with ctx.services.read() as session:
        project = await session.scalar(
            select(Project).where(
                Project.id == project_id,
                Project.organization_id.in_(member_organizations(viewer)),
            )
        )
    if project is None:
        raise NotFound()
    await require_role(ctx, project.organization_id, Role.EDITOR)
    async with ctx.services.broker.subscribe(channel(project.id)) as messages:
        async for message in messages:
            # Session and role are read again for every event: a removed member or a
            # signed-out session stops receiving customers' conversations at once.
            ctx.begin_operation()
            await require_role(ctx, project.organization_id, Role.EDITOR)
            yield message


def require_widget(ctx: RequestContext) -> WidgetCaller:
    caller = ctx.widget
    if isinstance(caller, WidgetCaller):
        return caller
    if isinstance(caller, WidgetRejected) and caller.close_code == 4403:
        raise Forbidden("This project key or origin is not allowed.")
    if isinstance(caller, WidgetRejected):
        raise Unauthenticated("The end-user token was refused.")
    raise Unauthenticated("Connect with a project key to chat.")
