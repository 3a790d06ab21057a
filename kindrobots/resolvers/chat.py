"""Chat: what a widget may chat with, one turn of a conversation, the reply, the feed.

A turn is two units of work around the upstream call, owned by the caller:
:func:`open_turn` stores the user's message (and, for a new conversation, the
conversation with it: never one without the other), :func:`stream_reply` talks to
the provider without holding a connection, and :func:`store_reply` stores the
reply — complete, or marked partial when the stream breaks or the client leaves.
Every stored message is published (:func:`publish`) so that a dashboard on any
instance sees it.

A widget's new conversation comes with a conversation token (returned once, stored as
its SHA-256): on PUBLIC projects only its holder may read or continue the conversation;
on AUTHENTICATED projects the end user's subject binds it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, update
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
    ProjectUsage,
)
from kindrobots.db.pagination import Page, paginate
from kindrobots.errors import BadUserInput, NotFound, RateLimited
from kindrobots.resolvers import usage, validation
from kindrobots.resolvers.access import member_organizations, organization_page, scoped_get
from kindrobots.resolvers.credentials import open_api_key
from kindrobots.security.crypto import KeyRing

logger = logging.getLogger("kindrobots.chat")

MAX_MESSAGE_CHARS = 8000
HISTORY_MESSAGES = 50
# What a widget shows when it resumes a conversation.
WIDGET_HISTORY_MESSAGES = 200
CONVERSATION_TOKEN_PREFIX = "ct_"  # noqa: S105 (a prefix, not a secret)
RATINGS = frozenset({"UP", "DOWN"})


def new_conversation_token() -> str:
    return CONVERSATION_TOKEN_PREFIX + secrets.token_urlsafe(32)


def conversation_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ChatTarget:
    """What a widget's message goes to, as of this message: its project (still admitting
    the widget), the organization's tier, the agent, its credential and tools."""

    project: Project
    tier: Tier
    agent: Agent
    credential: LlmCredential | None
    manifests: list[tools.ManifestTools] = field(default_factory=list)
    # Tokens the project spent today and this month (UTC), for its budgets.
    day_tokens: int = 0
    month_tokens: int = 0


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(now: datetime) -> datetime:
    start = month_start(now)
    return (start + timedelta(days=32)).replace(day=1)


async def load_target(
    session: AsyncSession, actor: WidgetActor, now: datetime | None = None
) -> ChatTarget:
    """Everything one message needs, in one statement (a row per manifest of the agent,
    with the project's token usage of today and this month for its budgets); FORBIDDEN or
    UNAUTHENTICATED when the project no longer admits the widget."""
    now = now or datetime.now(UTC)
    spent = func.coalesce(func.sum(ProjectUsage.input_tokens + ProjectUsage.output_tokens), 0)
    today = now.astimezone(UTC).date()
    day_tokens = (
        select(spent)
        .where(ProjectUsage.project_id == actor.project_id, ProjectUsage.day == today)
        .scalar_subquery()
    )
    month_tokens = (
        select(spent)
        .where(
            ProjectUsage.project_id == actor.project_id,
            ProjectUsage.day >= month_start(now).date(),
        )
        .scalar_subquery()
    )
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
                Manifest.forward_end_user_token,
                day_tokens,
                month_tokens,
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
    project, tier, grace_until, _, agent, credential, *_, day, month = rows[0]
    manifests = [
        tools.ManifestTools(list(version.servers), list(version.operations), bool(forward))
        for *_, version, forward, _day, _month in rows
        if version is not None
    ]
    # The tier in force as of this message (a lapsed past-due grace period is Starter).
    tier_now = effective_tier(tier, grace_until, now)
    return ChatTarget(
        project, tier_now, agent, credential, manifests, int(day or 0), int(month or 0)
    )


@dataclass
class OpenTurn:
    """A user's message, stored, with what the model should read before it."""

    conversation_id: uuid.UUID
    project_id: uuid.UUID
    organization_id: uuid.UUID
    history: list[Message]
    message: Message
    # The agent answering (recorded on the reply, where feedback is counted).
    agent_id: uuid.UUID | None = None
    # A new conversation's token: handed to the widget once, never stored in clear.
    conversation_token: str | None = field(default=None, repr=False)


class ConversationCapReached(RateLimited):
    """The conversation spent its project's ``conversationTokenCap``: only a new
    conversation can go on (waiting does not help, hence no ``retryAfter``)."""

    def __init__(self) -> None:
        super().__init__(
            None,
            "This conversation has reached its length limit; start a new conversation.",
            limit="conversationTokenCap",
        )


def check_message(text: str) -> str:
    text = text.strip()
    if not 1 <= len(text) <= MAX_MESSAGE_CHARS:
        raise BadUserInput("message", f"Messages are 1 to {MAX_MESSAGE_CHARS} characters long.")
    return validation.no_nul(text, "message")


def _own_conversation(
    actor: WidgetActor, conversation_id: uuid.UUID | None, token: str | None
) -> list[Any]:
    """The conditions of "a conversation this widget caller may read": of its project; on
    PUBLIC projects (no end user) only by its token, on AUTHENTICATED ones only the end
    user's own (by ID or token). Both given must name the same conversation."""
    if actor.end_user is None and token is None:
        raise NotFound("The conversation was not found.")
    conditions: list[Any] = [
        Conversation.project_id == actor.project_id,
        Conversation.end_user.is_(None)
        if actor.end_user is None
        else Conversation.end_user == actor.end_user,
    ]
    if token is not None:
        conditions.append(Conversation.token_hash == conversation_token_hash(token))
    if conversation_id is not None:
        conditions.append(Conversation.id == conversation_id)
    return conditions


async def _history(
    session: AsyncSession,
    actor: WidgetActor,
    conversation_id: uuid.UUID | None,
    token: str | None,
) -> tuple[uuid.UUID, int, list[Message]]:
    """One of the widget's own conversations: its id, the tokens it spent and its newest
    messages, oldest first — in one statement.

    A conversation is never stored without its first message, so no rows means no
    such conversation for this caller: NOT_FOUND.
    """
    rows = (
        await session.execute(
            select(Message, Conversation.tokens_used)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(*_own_conversation(actor, conversation_id, token))
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(HISTORY_MESSAGES)
        )
    ).all()
    if not rows:
        raise NotFound("The conversation was not found.")
    return rows[0][0].conversation_id, int(rows[0][1]), [row[0] for row in reversed(rows)]


async def open_turn(
    session: AsyncSession,
    actor: WidgetActor,
    now: datetime,
    conversation_id: uuid.UUID | None,
    text: str,
    *,
    conversation_token: str | None = None,
    agent_id: uuid.UUID | None = None,
    token_cap: int | None = None,
) -> OpenTurn:
    """Store the user's message; a new conversation is stored with it, in one unit, and
    gets a new conversation token. A conversation that spent ``token_cap`` goes no further.

    The conversation's ``updated_at`` moves when the reply is stored (one statement
    fewer per message; a turn whose reply never started leaves it where it was).
    """
    text = check_message(text)
    new_token: str | None = None
    if conversation_id is None and conversation_token is None:
        conversation_id = uuid.uuid4()
        new_token = new_conversation_token()
        session.add(
            Conversation(
                id=conversation_id,
                organization_id=actor.organization_id,
                project_id=actor.project_id,
                end_user=actor.end_user,
                token_hash=conversation_token_hash(new_token),
                tokens_used=0,
                created_at=now,
                updated_at=now,
            )
        )
        history: list[Message] = []
    else:
        conversation_id, tokens_used, history = await _history(
            session, actor, conversation_id, conversation_token
        )
        if token_cap is not None and tokens_used >= token_cap:
            raise ConversationCapReached()
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
    return OpenTurn(
        conversation_id,
        actor.project_id,
        actor.organization_id,
        history,
        message,
        agent_id,
        new_token,
    )


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
    settings: Settings,
    keyring: KeyRing,
    target: ChatTarget,
    turn: OpenTurn,
    reply: Reply,
    end_user_token: str | None = None,
) -> AsyncGenerator[TextDelta | runtime.ToolRun, None]:
    """The agent's answer as it streams, gathered into ``reply`` on the way.

    ``end_user_token`` (the verified end user's JWT of an AUTHENTICATED project) goes
    only to the operations of manifests that opted in, on their own servers.

    Raises :class:`ProviderError` when the provider fails; closing the generator
    (the client left) ends the upstream request with it.
    """
    specs = tools.build_tools(target.manifests, end_user_token)
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
    """The reply, the conversation's activity and spend, and the project's usage of the
    day: three statements in the caller's transaction, so usage never misses a reply."""
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
        agent_id=turn.agent_id,
        created_at=now,
    )
    session.add(message)
    spent = reply.usage.input_tokens + reply.usage.output_tokens
    await session.execute(
        update(Conversation)
        .where(Conversation.id == turn.conversation_id)
        .values(updated_at=now, tokens_used=Conversation.tokens_used + spent)
        .execution_options(synchronize_session=False)
    )
    await usage.count(
        session,
        now,
        turn.project_id,
        turn.organization_id,
        messages=1,
        input_tokens=reply.usage.input_tokens,
        output_tokens=reply.usage.output_tokens,
    )
    return message


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


async def widget_conversation(
    session: AsyncSession, actor: WidgetActor, token: str | None
) -> tuple[uuid.UUID, list[Message]] | None:
    """The widget caller's own conversation and its newest messages, oldest first: by its
    token, or (AUTHENTICATED, no token) the end user's most recent one. None for anything
    the caller may not read, exactly as for a token that does not exist."""
    if actor.end_user is None and token is None:
        return None
    conversation_id = await session.scalar(
        select(Conversation.id)
        .where(*_own_conversation(actor, None, token))
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        .limit(1)
    )
    if conversation_id is None:
        return None
    rows = (
        await session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(WIDGET_HISTORY_MESSAGES)
        )
    ).all()
    return conversation_id, list(reversed(rows))


async def rate_message(
    session: AsyncSession,
    actor: WidgetActor,
    now: datetime,
    message_id: uuid.UUID,
    rating: str | None,
    token: str | None,
) -> Message:
    """The visitor's thumbs up or down (None clears) on an assistant message of their own
    conversation; any other message is NOT_FOUND, like one that does not exist."""
    if rating is not None and rating not in RATINGS:
        raise BadUserInput("rating", "A rating is UP or DOWN.")
    message = await session.scalar(
        select(Message)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            Message.id == message_id,
            Message.role == "assistant",
            *_own_conversation(actor, None, token),
        )
        .with_for_update(of=Message)
    )
    if message is None:
        raise NotFound("The message was not found.")
    message.rating = rating
    await session.flush()
    return message
