"""Chat: what a widget may chat with, one turn of a conversation, the reply, the feed.

A turn is two units of work around the upstream call, owned by the caller:
:func:`open_turn` stores the user's message (and, for a new conversation, the
conversation with it: never one without the other), :func:`stream_reply` talks to
the provider without holding a connection, and :func:`store_reply` stores the
reply — complete, or marked partial when the stream breaks or the client leaves.
Every stored message is published (:func:`publish`) so that a dashboard on any
instance sees it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots import metrics
from kindrobots.auth.principals import UserActor, WidgetActor
from kindrobots.auth.widgets import still_allowed
from kindrobots.billing.plans import Tier, effective_tier
from kindrobots.broker import Broker
from kindrobots.chat import runtime, tools
from kindrobots.chat.providers import (
    ANTHROPIC_BASE,
    OPENAI_BASE,
    AnthropicProvider,
    ChatRequest,
    DemoProvider,
    Measured,
    OpenAIProvider,
    Provider,
    ProviderError,
    TextDelta,
    ToolCall,
    Turn,
    Usage,
)
from kindrobots.config import Settings
from kindrobots.db.enums import LlmProvider
from kindrobots.db.models import (
    Agent,
    AgentManifest,
    Conversation,
    LlmCredential,
    Manifest,
    ManifestVersion,
    Message,
    Organization,
    Project,
)
from kindrobots.db.pagination import Page, paginate
from kindrobots.errors import BadUserInput, NotFound
from kindrobots.resolvers import validation
from kindrobots.resolvers.access import member_organizations, organization_page, scoped_get
from kindrobots.resolvers.credentials import open_api_key
from kindrobots.security.crypto import KeyRing

logger = logging.getLogger("kindrobots.chat")

MAX_MESSAGE_CHARS = 8000
HISTORY_MESSAGES = 50


@dataclass(frozen=True)
class ChatTarget:
    """What a widget's message goes to, as of this message: its project (still admitting
    the widget), the organization's tier, the agent, its credential and tools."""

    project: Project
    tier: Tier
    agent: Agent
    credential: LlmCredential | None
    manifests: list[tuple[list[str], list[dict[str, Any]]]] = field(default_factory=list)


async def load_target(
    session: AsyncSession, actor: WidgetActor, now: datetime | None = None
) -> ChatTarget:
    """Everything one message needs, in one statement (a row per manifest of the agent);
    FORBIDDEN or UNAUTHENTICATED when the project no longer admits the widget."""
    rows = (
        await session.execute(
            select(
                Project,
                Organization.tier,
                Organization.tier_grace_until,
                Organization.suspended_at,
                Agent,
                LlmCredential,
                ManifestVersion,
            )
            .join(Organization, Organization.id == Project.organization_id)
            .join(Agent, Agent.id == Project.agent_id)
            .outerjoin(LlmCredential, LlmCredential.id == Agent.llm_credential_id)
            .outerjoin(AgentManifest, AgentManifest.agent_id == Agent.id)
            .outerjoin(Manifest, Manifest.id == AgentManifest.manifest_id)
            .outerjoin(
                ManifestVersion,
                and_(
                    ManifestVersion.manifest_id == Manifest.id,
                    ManifestVersion.version == Manifest.version,
                ),
            )
            .where(Project.id == actor.project_id)
            .order_by(AgentManifest.position)
        )
    ).all()
    still_allowed(actor, rows[0][0] if rows else None, rows[0][3] if rows else None)
    project, tier, grace_until, _, agent, credential, _ = rows[0]
    manifests = [
        (list(version.servers), list(version.operations))
        for *_, version in rows
        if version is not None
    ]
    # The tier in force as of this message (a lapsed past-due grace period is Starter).
    tier_now = effective_tier(tier, grace_until, now or datetime.now(UTC))
    return ChatTarget(project, tier_now, agent, credential, manifests)


@dataclass
class OpenTurn:
    """A user's message, stored, with what the model should read before it."""

    conversation_id: uuid.UUID
    project_id: uuid.UUID
    organization_id: uuid.UUID
    history: list[Message]
    message: Message


def check_message(text: str) -> str:
    text = text.strip()
    if not 1 <= len(text) <= MAX_MESSAGE_CHARS:
        raise BadUserInput("message", f"Messages are 1 to {MAX_MESSAGE_CHARS} characters long.")
    return validation.no_nul(text, "message")


async def _history(
    session: AsyncSession, actor: WidgetActor, conversation_id: uuid.UUID
) -> list[Message]:
    """The newest messages of one of the widget's own conversations, oldest first.

    A conversation is never stored without its first message, so no rows means no
    such conversation for this caller: NOT_FOUND.
    """
    rows = (
        await session.scalars(
            select(Message)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Conversation.id == conversation_id,
                Conversation.project_id == actor.project_id,
                # An anonymous widget may continue only anonymous conversations, and
                # an end user only their own.
                Conversation.end_user.is_(None)
                if actor.end_user is None
                else Conversation.end_user == actor.end_user,
            )
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(HISTORY_MESSAGES)
        )
    ).all()
    if not rows:
        raise NotFound("The conversation was not found.")
    return list(reversed(rows))


async def open_turn(
    session: AsyncSession,
    actor: WidgetActor,
    now: datetime,
    conversation_id: uuid.UUID | None,
    text: str,
) -> OpenTurn:
    """Store the user's message; a new conversation is stored with it, in one unit."""
    text = check_message(text)
    if conversation_id is None:
        conversation_id = uuid.uuid4()
        session.add(
            Conversation(
                id=conversation_id,
                organization_id=actor.organization_id,
                project_id=actor.project_id,
                end_user=actor.end_user,
                created_at=now,
                updated_at=now,
            )
        )
        history: list[Message] = []
    else:
        history = await _history(session, actor, conversation_id)
        await _touch(session, conversation_id, now)
    message = Message(
        id=uuid.uuid4(),
        organization_id=actor.organization_id,
        conversation_id=conversation_id,
        role="user",
        content=text,
        created_at=now,
    )
    session.add(message)
    await session.flush()
    return OpenTurn(conversation_id, actor.project_id, actor.organization_id, history, message)


@dataclass
class Reply:
    """What the assistant said so far, gathered while streaming."""

    texts: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(0, 0))

    @property
    def empty(self) -> bool:
        return not self.texts and not self.runs


def _provider(settings: Settings, keyring: KeyRing, credential: LlmCredential | None) -> Provider:
    if credential is None or credential.provider == LlmProvider.DEMO.value:
        if settings.is_production and credential is None:
            raise ProviderError("This agent has no LLM credential configured.")
        return DemoProvider()
    # Decrypted only for the lifetime of this provider object, i.e. this one reply.
    api_key = open_api_key(keyring, credential)
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


async def stream_reply(
    settings: Settings, keyring: KeyRing, target: ChatTarget, turn: OpenTurn, reply: Reply
) -> AsyncGenerator[TextDelta | runtime.ToolRun, None]:
    """The agent's answer as it streams, gathered into ``reply`` on the way.

    Raises :class:`ProviderError` when the provider fails; closing the generator
    (the client left) ends the upstream request with it.
    """
    specs = tools.build_tools(target.manifests)
    agent = target.agent
    request = ChatRequest(
        model=agent.model,
        system=agent.system_prompt,
        turns=runtime.bound_history(_turns([*turn.history, turn.message])),
        tools=[spec.tool for spec in specs.values()],
        temperature=agent.temperature,
    )
    name = (target.credential.provider if target.credential else LlmProvider.DEMO.value).lower()
    measure = metrics.current()
    measure.chat_messages.labels(name).inc()
    events = runtime.converse(
        Measured(_provider(settings, keyring, target.credential), name),
        request,
        specs,
        settings.outbound_allow,
        https_only=settings.is_production,
    )
    try:
        async for event in events:
            if isinstance(event, Usage):
                reply.usage = event
                measure.tokens.labels(name, "input").inc(event.input_tokens)
                measure.tokens.labels(name, "output").inc(event.output_tokens)
                continue
            if isinstance(event, TextDelta):
                reply.texts.append(event.text)
            else:
                measure.tool_calls.labels(_tool_outcome(event.result)).inc()
                reply.runs.append(
                    {
                        "id": event.call.id,
                        "name": event.call.name,
                        "arguments": event.call.arguments,
                        "result": event.result,
                        "forModel": event.for_model,
                    }
                )
            yield event
    finally:
        await events.aclose()


def _tool_outcome(result: Any) -> str:
    """ok (2xx/3xx), http_error (the API answered 4xx/5xx) or failed (never answered)."""
    if isinstance(result, dict) and isinstance(result.get("status"), int):
        return "ok" if result["status"] < 400 else "http_error"
    return "failed"


async def store_reply(
    session: AsyncSession, now: datetime, turn: OpenTurn, reply: Reply, *, partial: bool
) -> Message:
    message = Message(
        id=uuid.uuid4(),
        organization_id=turn.organization_id,
        conversation_id=turn.conversation_id,
        role="assistant",
        content="".join(reply.texts),
        partial=partial,
        tool_calls=reply.runs,
        input_tokens=reply.usage.input_tokens,
        output_tokens=reply.usage.output_tokens,
        created_at=now,
    )
    session.add(message)
    await _touch(session, turn.conversation_id, now)
    return message


async def _touch(session: AsyncSession, conversation_id: uuid.UUID, now: datetime) -> None:
    """The conversation was active at ``now`` (one UPDATE; nothing read back)."""
    await session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id)
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )


def channel(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:messages"


async def publish(broker: Broker, turn: OpenTurn, message: Message) -> None:
    """Tell every instance's dashboards about a stored message (after its commit)."""
    event = {
        "conversationId": str(turn.conversation_id),
        "message": {
            "id": str(message.id),
            "role": message.role,
            "content": message.content,
            "createdAt": message.created_at.isoformat(),
        },
    }
    try:
        await broker.publish(channel(turn.project_id), event)
    except Exception:
        # The message is stored; a dashboard that missed it sees it on its next query.
        logger.warning("could not publish a chat message to the broker", exc_info=True)


async def list_conversations(
    session: AsyncSession,
    actor: UserActor,
    organization_id: uuid.UUID,
    project_id: uuid.UUID | None,
    first: int,
    after: str | None,
) -> Page[Conversation]:
    conditions = [Conversation.project_id == project_id] if project_id is not None else []
    return await organization_page(
        session, actor, Conversation, organization_id, first, after, *conditions
    )


async def list_messages(
    session: AsyncSession,
    actor: UserActor,
    conversation_id: uuid.UUID,
    first: int,
    after: str | None,
) -> Page[Message]:
    statement = select(Message).where(
        Message.conversation_id == conversation_id,
        Message.organization_id.in_(member_organizations(actor)),
    )
    return await paginate(session, statement, Message.created_at, Message.id, first, after)


async def get_conversation(
    session: AsyncSession, actor: UserActor, conversation_id: uuid.UUID
) -> Conversation:
    return await scoped_get(session, actor, Conversation, conversation_id)


async def get_message(session: AsyncSession, actor: UserActor, message_id: uuid.UUID) -> Message:
    return await scoped_get(session, actor, Message, message_id)
