"""``node(id)``: any object by its global ID, with the same scoping as its own field."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import strawberry

from kindrobots.context import RequestContext
from kindrobots.ids import parse_global_id
from kindrobots.resolvers import (
    agents,
    audit,
    chat,
    credentials,
    manifests,
    organizations,
    projects,
)
from kindrobots.schema.agents import AgentType
from kindrobots.schema.audit import AuditEventType
from kindrobots.schema.base import Info, Node
from kindrobots.schema.chat import ConversationType, MessageType
from kindrobots.schema.credentials import LlmCredentialType
from kindrobots.schema.manifests import ManifestType
from kindrobots.schema.organizations import OrganizationType
from kindrobots.schema.permissions import IsAuthenticated
from kindrobots.schema.projects import ProjectType
from kindrobots.schema.users import UserType
from kindrobots.security.errors import NotFound

Fetch = Callable[[RequestContext, uuid.UUID], Awaitable[Node]]


async def _organization(ctx: RequestContext, raw_id: uuid.UUID) -> Node:
    return OrganizationType.from_row(await organizations.get_organization(ctx, raw_id))


async def _user(ctx: RequestContext, raw_id: uuid.UUID) -> Node:
    return UserType.from_row(await organizations.get_user(ctx, raw_id))


async def _audit_event(ctx: RequestContext, raw_id: uuid.UUID) -> Node:
    return AuditEventType.from_row(await audit.get_event(ctx, raw_id))


async def _agent(ctx: RequestContext, raw_id: uuid.UUID) -> Node:
    return AgentType.from_row(await agents.get_agent(ctx, raw_id))


async def _manifest(ctx: RequestContext, raw_id: uuid.UUID) -> Node:
    return ManifestType.from_row(await manifests.get_manifest(ctx, raw_id))


async def _project(ctx: RequestContext, raw_id: uuid.UUID) -> Node:
    return ProjectType.from_row(await projects.get_project(ctx, raw_id))


async def _credential(ctx: RequestContext, raw_id: uuid.UUID) -> Node:
    return LlmCredentialType.from_row(await credentials.get_credential(ctx, raw_id))


async def _conversation(ctx: RequestContext, raw_id: uuid.UUID) -> Node:
    return ConversationType.from_row(await chat.get_conversation(ctx, raw_id))


async def _message(ctx: RequestContext, raw_id: uuid.UUID) -> Node:
    return MessageType.from_row(await chat.get_message(ctx, raw_id))


FETCHERS: dict[str, Fetch] = {
    "Conversation": _conversation,
    "Message": _message,
    "Organization": _organization,
    "User": _user,
    "AuditEvent": _audit_event,
    "Agent": _agent,
    "Manifest": _manifest,
    "Project": _project,
    "LlmCredential": _credential,
}


@strawberry.type
class NodeQuery:
    @strawberry.field(permission_classes=[IsAuthenticated])
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        type_name, raw_id = parse_global_id(id)
        fetch = FETCHERS.get(type_name)
        if fetch is None:
            raise NotFound()
        return await fetch(info.context, raw_id)
