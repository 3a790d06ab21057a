"""Chat: the widget's streaming subscription, the external HTTP API, the dashboard's feed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON

from kindrobots.chat.providers import TextDelta
from kindrobots.chat.runtime import ToolRun
from kindrobots.db import models
from kindrobots.db.pagination import check_first
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import chat
from kindrobots.resolvers.loaders import loaders
from kindrobots.schema.base import Connection, Info, Node, to_connection
from kindrobots.schema.directives import RateLimit, RateLimitKey
from kindrobots.schema.permissions import IsEditor, IsWidget
from kindrobots.schema.projects import ProjectType
from kindrobots.security.errors import NotFound, RateLimited, UpstreamError


@strawberry.type
class TokenUsage:
    input_tokens: int
    output_tokens: int


@strawberry.type
class ChatStarted:
    conversation_id: strawberry.ID


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


@strawberry.type
class ChatReply:
    conversation_id: strawberry.ID
    message_id: strawberry.ID
    content: str
    usage: TokenUsage


@strawberry.type(name="Message")
class MessageType(Node):
    role: str
    content: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.Message) -> MessageType:
        return cls(
            id=strawberry.ID(to_global_id("Message", row.id)),
            role=row.role,
            content=row.content,
            created_at=row.created_at,
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
        row = await loaders(info.context).project.load(self.row.project_id)
        if row is None:  # the caller lost access to it while this request ran
            raise NotFound()
        return ProjectType.from_row(row)

    @strawberry.field
    async def messages(
        self, info: Info, first: int | None = 50, after: str | None = None
    ) -> Connection[MessageType]:
        first = check_first(50 if first is None else first)  # before a batch it would fail
        if after is None:  # the common case, batched across conversations
            page = await loaders(info.context).first_messages.load((self.row.id, first))
        else:
            page = await chat.list_messages(info.context, self.row, first, after)
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


def _usage(usage: Any) -> TokenUsage:
    return TokenUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)


def _conversation_id(raw: strawberry.ID | None) -> uuid.UUID | None:
    return from_global_id(raw, "Conversation") if raw else None


@strawberry.type
class ChatSubscription:
    @strawberry.subscription(
        permission_classes=[IsWidget],
        directives=[RateLimit(limit=20, window=60, per=RateLimitKey.PROJECT, from_plan=True)],
    )
    async def chat(self, info: Info, input: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        caller = chat.require_widget(info.context)
        events = chat.chat(
            info.context, caller, _conversation_id(input.conversation_id), input.message
        )
        # Strawberry closes this generator when the client leaves; the reply must see it.
        async with aclosing(events):
            async for event in events:
                if isinstance(event, chat.Started):
                    yield ChatStarted(
                        conversation_id=strawberry.ID(
                            to_global_id("Conversation", event.conversation_id)
                        )
                    )
                elif isinstance(event, TextDelta):
                    yield ChatDelta(text=event.text)
                elif isinstance(event, ToolRun):
                    yield ChatToolCall(
                        name=event.call.name,
                        arguments=JSON(event.arguments),
                        result=JSON(event.result),
                    )
                elif isinstance(event, chat.Completed):
                    yield ChatCompleted(
                        message_id=strawberry.ID(to_global_id("Message", event.message_id)),
                        usage=_usage(event.usage),
                    )
                else:
                    yield ChatError(message=event.message, retry_after=event.retry_after)

    @strawberry.subscription(permission_classes=[IsEditor])
    async def conversation_events(
        self, info: Info, project_id: strawberry.ID
    ) -> AsyncGenerator[ConversationEvent, None]:
        events = chat.project_events(info.context, from_global_id(project_id, "Project"))
        async for event in events:
            yield ConversationEvent(
                conversation_id=strawberry.ID(
                    to_global_id("Conversation", uuid.UUID(event["conversationId"]))
                ),
                message=MessageType.from_event(event["message"]),
            )


@strawberry.type
class ChatMutation:
    @strawberry.mutation(
        permission_classes=[IsWidget],
        description="External API (X-Project-Key header): the whole reply in one response.",
        directives=[RateLimit(limit=20, window=60, per=RateLimitKey.PROJECT, from_plan=True)],
    )
    async def send_message(self, info: Info, input: ChatInput) -> ChatReply:
        caller = chat.require_widget(info.context)
        conversation_id: uuid.UUID | None = None
        events = chat.chat(
            info.context, caller, _conversation_id(input.conversation_id), input.message
        )
        async with aclosing(events):  # returning mid-loop must still close the stream
            async for event in events:
                if isinstance(event, chat.Started):
                    conversation_id = event.conversation_id
                elif isinstance(event, chat.Failed):
                    if event.retry_after:
                        raise RateLimited(event.retry_after, event.message)
                    raise UpstreamError(event.message)
                elif isinstance(event, chat.Completed):
                    assert conversation_id is not None
                    return ChatReply(
                        conversation_id=strawberry.ID(
                            to_global_id("Conversation", conversation_id)
                        ),
                        message_id=strawberry.ID(to_global_id("Message", event.message_id)),
                        content=event.content,
                        usage=_usage(event.usage),
                    )
        raise UpstreamError("The reply ended without completing.")
