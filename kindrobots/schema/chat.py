"""Chat: the widget's streaming subscription, the external HTTP API, the dashboard's feed."""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON

from kindrobots.billing.plans import plan_for
from kindrobots.chat.coalesce import coalesce
from kindrobots.chat.providers import ProviderError, TextDelta, Usage
from kindrobots.chat.runtime import ToolRun
from kindrobots.context import Services
from kindrobots.db import models
from kindrobots.db.enums import Role
from kindrobots.db.pagination import check_first
from kindrobots.errors import NotFound, RateLimited, UpstreamError
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import chat, usage
from kindrobots.resolvers.access import require_role
from kindrobots.schema.base import Connection, Info, Node, to_connection
from kindrobots.schema.callers import identify
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.loaders import loaders
from kindrobots.schema.permissions import (
    ObjectArgument,
    granted,
    requires,
    user_caller,
    widget,
    widgets,
)
from kindrobots.schema.projects import ProjectType
from kindrobots.security.connections import Slot


@strawberry.type
class TokenUsage:
    input_tokens: int
    output_tokens: int


@strawberry.enum
class MessageRating(enum.Enum):
    UP = "UP"
    DOWN = "DOWN"


def _rating(value: str | None) -> MessageRating | None:
    return MessageRating(value) if value else None


@strawberry.type
class ChatStarted:
    conversation_id: strawberry.ID
    conversation_token: str | None = strawberry.field(
        default=None,
        description="A new conversation's token (once): keep it to continue the "
        "conversation and read its history; null when the conversation went on.",
    )


@strawberry.type
class ChatDelta:
    text: str


@strawberry.type
class ChatToolCall:
    name: str
    arguments: JSON
    result: JSON | None


@strawberry.type
class ChatCompleted:
    message_id: strawberry.ID
    usage: TokenUsage


@strawberry.type(description="The reply could not be completed; what was said so far is kept.")
class ChatError:
    message: str
    retry_after: int | None = strawberry.field(
        description="Seconds to wait when the LLM provider is rate limiting."
    )


ChatEvent = Annotated[
    ChatStarted | ChatDelta | ChatToolCall | ChatCompleted | ChatError,
    strawberry.union("ChatEvent"),
]


@strawberry.input
class ChatInput:
    message: str
    conversation_id: strawberry.ID | None = None
    conversation_token: str | None = strawberry.field(
        default=None,
        description="Continues the conversation this token was issued for (PUBLIC projects "
        "need it; AUTHENTICATED ones may use it or the ID).",
    )


@strawberry.type
class ChatReply:
    conversation_id: strawberry.ID
    message_id: strawberry.ID
    content: str
    usage: TokenUsage
    conversation_token: str | None = strawberry.field(
        default=None, description="A new conversation's token (once); else null."
    )


@strawberry.type
class WidgetMessage:
    id: strawberry.ID
    role: str
    content: str
    rating: MessageRating | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.Message) -> WidgetMessage:
        return cls(
            id=strawberry.ID(to_global_id("Message", row.id)),
            role=row.role,
            content=row.content,
            rating=_rating(row.rating),
            created_at=row.created_at,
        )


@strawberry.type
class WidgetConversation:
    id: strawberry.ID
    messages: list[WidgetMessage] = strawberry.field(
        description="The newest 200 messages, oldest first."
    )


@strawberry.input
class RateMessageInput:
    message_id: strawberry.ID
    rating: MessageRating | None = strawberry.field(
        default=None, description="null (or omitted) clears the rating."
    )
    conversation_token: str | None = None


@strawberry.type(name="Message")
class MessageType(Node):
    role: str
    content: str
    created_at: datetime
    rating: MessageRating | None = strawberry.field(
        default=None, description="The visitor's feedback on an assistant message."
    )

    @classmethod
    def from_row(cls, row: models.Message) -> MessageType:
        return cls(
            id=strawberry.ID(to_global_id("Message", row.id)),
            role=row.role,
            content=row.content,
            created_at=row.created_at,
            rating=_rating(row.rating),
        )

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> MessageType:
        return cls(
            id=strawberry.ID(to_global_id("Message", uuid.UUID(data["id"]))),
            role=data["role"],
            content=data["content"],
            created_at=datetime.fromisoformat(data["createdAt"]),
        )


@strawberry.type(name="Conversation")
class ConversationType(Node):
    created_at: datetime
    row: strawberry.Private[models.Conversation]

    @strawberry.field
    async def project(self, info: Info) -> ProjectType:
        row = await loaders(info).project.load(self.row.project_id)
        if row is None:  # the caller lost access to it while this request ran
            raise NotFound()
        return ProjectType.from_row(row)

    @strawberry.field
    async def messages(
        self, info: Info, first: int | None = 50, after: str | None = None
    ) -> Connection[MessageType]:
        first = check_first(50 if first is None else first)  # before a batch it would fail
        if after is None:  # the common case, batched across conversations
            page = await loaders(info).first_messages.load((self.row.id, first))
        else:
            async with info.context.services.read() as session:
                page = await chat.list_messages(
                    session, user_caller(info), self.row.id, first, after
                )
        return to_connection(page, MessageType.from_row)

    @classmethod
    def from_row(cls, row: models.Conversation) -> ConversationType:
        return cls(
            id=strawberry.ID(to_global_id("Conversation", row.id)),
            created_at=row.created_at,
            row=row,
        )


@strawberry.type
class ConversationEvent:
    conversation_id: strawberry.ID
    message: MessageType


def _usage(usage: Usage) -> TokenUsage:
    return TokenUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)


def _conversation_id(raw: strawberry.ID | None) -> uuid.UUID | None:
    return from_global_id(raw, "Conversation") if raw else None


# Checked in this order, so a visitor over their own limit spends nothing of the
# project's: one visitor (or one address minting visitors) cannot stop the others.
CHAT_LIMITS = [
    RateLimit(limit=10, window=60, per=RateLimitKey.VISITOR),
    RateLimit(limit=30, window=3600, per=RateLimitKey.NEW_VISITOR),
    RateLimit(limit=20, window=60, per=RateLimitKey.PROJECT, from_plan=True),
]

# Seconds a caller over its live-feed cap is told to wait: feeds end when sockets close.
FEED_RETRY_AFTER = 30


@dataclass(frozen=True)
class Started:
    conversation_id: uuid.UUID
    conversation_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Completed:
    message_id: uuid.UUID
    content: str
    usage: Usage


@dataclass(frozen=True)
class Failed:
    message: str
    retry_after: int | None = None


TurnEvent = Started | TextDelta | ToolRun | Completed | Failed


async def _store_reply(
    services: Services, info: Info, turn: chat.OpenTurn, reply: chat.Reply, *, partial: bool
) -> models.Message | None:
    if partial and reply.empty:
        return None
    async with services.write() as session:
        message = await chat.store_reply(session, info.now(), turn, reply, partial=partial)
    await chat.publish(services.broker, turn, message)
    return message


async def _refuse(services: Services, info: Info, refusal: usage.Refusal) -> None:
    """Count a message refused by a budget (and tell the owner once), then refuse it."""
    async with services.write() as session:
        await usage.record_refusal(session, widget(info).actor, info.now(), refusal)
    raise refusal.error


async def _open_turn(info: Info, input: ChatInput) -> chat.OpenTurn:
    """The user's message stored, unless a budget or the conversation's cap is spent:
    then nothing is stored and no upstream call will be made."""
    grant = widget(info)
    services = info.context.services
    target, now = grant.target, info.now()
    plan = plan_for(services.settings, target.tier)
    refusal = usage.check_budgets(plan, target.project, target.day_tokens, target.month_tokens, now)
    if refusal is not None:
        await _refuse(services, info, refusal)
    try:
        async with services.write() as session:
            return await chat.open_turn(
                session,
                grant.actor,
                now,
                _conversation_id(input.conversation_id),
                input.message,
                conversation_token=input.conversation_token,
                agent_id=target.agent.id,
                token_cap=target.project.conversation_token_cap,
            )
    except chat.ConversationCapReached as reached:
        await _refuse(services, info, usage.cap_refusal(reached, target.project))
        raise


async def _converse(info: Info, input: ChatInput) -> AsyncGenerator[TurnEvent, None]:
    """One turn: the user's message stored, the reply streamed, the reply stored — in
    two units of work, none of them open while the provider talks."""
    grant = widget(info)
    services = info.context.services
    turn = await _open_turn(info, input)
    await chat.publish(services.broker, turn, turn.message)
    yield Started(turn.conversation_id, turn.conversation_token)
    reply = chat.Reply()
    stream = chat.stream_reply(
        services.settings,
        services.keyring,
        grant.target,
        turn,
        reply,
        grant.actor.end_user_token,
    )
    try:
        # However this generator ends, the upstream request ends with it.
        async with aclosing(stream):
            async for event in stream:
                yield event
    except ProviderError as exc:
        await _store_reply(services, info, turn, reply, partial=True)
        yield Failed(exc.message, exc.retry_after)
        return
    except (asyncio.CancelledError, GeneratorExit):
        # The client left, while we waited for the provider (the task is cancelled) or while
        # an event was being sent (the stream is closed at a yield): keep what was said,
        # without letting the cancellation cut the write.
        await asyncio.shield(_store_reply(services, info, turn, reply, partial=True))
        raise
    stored = await _store_reply(services, info, turn, reply, partial=False)
    assert stored is not None
    yield Completed(stored.id, stored.content, reply.usage)


@strawberry.type
class ChatSubscription:
    @strawberry.subscription(
        extensions=widgets(),
        directives=CHAT_LIMITS,
    )
    async def chat(self, info: Info, input: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        settings = info.context.services.settings
        # Neighbouring text deltas leave as one ChatDelta: a frame and a result per delta
        # cost more than the few characters they carry.
        events = coalesce(
            _converse(info, input),
            window=settings.chat_coalesce_ms / 1000,
            max_chars=settings.chat_coalesce_chars,
        )
        # Strawberry closes this generator when the client leaves; the reply must see it.
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Started):
                    yield ChatStarted(
                        conversation_id=strawberry.ID(
                            to_global_id("Conversation", event.conversation_id)
                        ),
                        conversation_token=event.conversation_token,
                    )
                elif isinstance(event, TextDelta):
                    yield ChatDelta(text=event.text)
                elif isinstance(event, ToolRun):
                    yield ChatToolCall(
                        name=event.call.name,
                        arguments=JSON(event.arguments),
                        result=JSON(event.result),
                    )
                elif isinstance(event, Completed):
                    yield ChatCompleted(
                        message_id=strawberry.ID(to_global_id("Message", event.message_id)),
                        usage=_usage(event.usage),
                    )
                else:
                    yield ChatError(message=event.message, retry_after=event.retry_after)

    @strawberry.subscription(
        extensions=requires(Role.EDITOR, ObjectArgument("project_id", "Project"))
    )
    async def conversation_events(
        self, info: Info, project_id: strawberry.ID
    ) -> AsyncGenerator[ConversationEvent, None]:
        grant = granted(info)
        channel = chat.channel(from_global_id(project_id, "Project"))
        services = info.context.services
        slot = Slot()
        if not (
            services.feeds.claim(slot, "user", grant.actor.user.id)
            and services.feeds.claim(slot, "organization", grant.organization_id)
        ):
            services.feeds.release(slot)
            raise RateLimited(FEED_RETRY_AFTER, "Too many live feeds are open; close one first.")
        try:
            async with services.broker.subscribe(channel) as messages:
                async for event in messages:
                    # Session and role are read again for every event: a removed member or a
                    # signed-out session stops receiving customers' conversations at once.
                    await identify(info.context)
                    require_role(user_caller(info), grant.organization_id, grant.required)
                    yield ConversationEvent(
                        conversation_id=strawberry.ID(
                            to_global_id("Conversation", uuid.UUID(event["conversationId"]))
                        ),
                        message=MessageType.from_event(event["message"]),
                    )
        finally:
            services.feeds.release(slot)


@strawberry.type
class ChatMutation:
    @strawberry.mutation(
        extensions=widgets(),
        description="External API (X-Project-Key header): the whole reply in one response.",
        directives=CHAT_LIMITS,
    )
    async def send_message(self, info: Info, input: ChatInput) -> ChatReply:
        started: Started | None = None
        events = _converse(info, input)
        async with aclosing(events):  # returning mid-loop must still close the stream
            async for event in events:
                if isinstance(event, Started):
                    started = event
                elif isinstance(event, Failed):
                    if event.retry_after:
                        raise RateLimited(event.retry_after, event.message)
                    raise UpstreamError(event.message)
                elif isinstance(event, Completed):
                    assert started is not None
                    return ChatReply(
                        conversation_id=strawberry.ID(
                            to_global_id("Conversation", started.conversation_id)
                        ),
                        message_id=strawberry.ID(to_global_id("Message", event.message_id)),
                        content=event.content,
                        usage=_usage(event.usage),
                        conversation_token=started.conversation_token,
                    )
        raise UpstreamError("The reply ended without completing.")

    @strawberry.mutation(
        extensions=widgets(),
        description="A visitor's thumbs up or down on an assistant message of their own "
        "conversation (rating null clears it).",
        directives=[RateLimit(limit=60, window=60, per=RateLimitKey.CALLER)],
    )
    async def rate_message(self, info: Info, input: RateMessageInput) -> WidgetMessage:
        grant = widget(info)
        async with info.context.services.write() as session:
            row = await chat.rate_message(
                session,
                grant.actor,
                info.now(),
                from_global_id(input.message_id, "Message"),
                input.rating.value if input.rating else None,
                input.conversation_token,
            )
        return WidgetMessage.from_row(row)


@strawberry.type
class ChatQuery:
    @strawberry.field(
        extensions=widgets(),
        description="The widget's own conversation: by its token, or (AUTHENTICATED, no "
        "token) the end user's most recent one; null for anything else.",
        directives=[RateLimit(limit=60, window=60, per=RateLimitKey.CALLER)],
    )
    async def widget_conversation(
        self, info: Info, conversation_token: str | None = None
    ) -> WidgetConversation | None:
        grant = widget(info)
        async with info.context.services.read() as session:
            found = await chat.widget_conversation(session, grant.actor, conversation_token)
        if found is None:
            return None
        conversation_id, rows = found
        return WidgetConversation(
            id=strawberry.ID(to_global_id("Conversation", conversation_id)),
            messages=[WidgetMessage.from_row(row) for row in rows],
        )
