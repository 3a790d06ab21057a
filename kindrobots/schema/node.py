"""``node(id)``: any object by its global ID, with the same scoping and roles as its own
field (an AuditEvent needs ADMIN, an LlmCredential ADMIN); null for what the caller
cannot see."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import UserActor
from kindrobots.db.enums import Role
from kindrobots.errors import NotFound
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
from kindrobots.resolvers.access import require_role
from kindrobots.schema.agents import AgentType
from kindrobots.schema.audit import AuditEventType
from kindrobots.schema.base import Info, Node
from kindrobots.schema.chat import ConversationType, MessageType
from kindrobots.schema.credentials import LlmCredentialType
from kindrobots.schema.manifests import ManifestType
from kindrobots.schema.organizations import OrganizationType
from kindrobots.schema.permissions import authenticated, signed_in
from kindrobots.schema.projects import ProjectType
from kindrobots.schema.users import UserType

Fetch = Callable[[AsyncSession, UserActor, uuid.UUID], Awaitable[Node]]


async def _organization(session: AsyncSession, actor: UserActor, raw_id: uuid.UUID) -> Node:
    return OrganizationType.from_row(await organizations.get_organization(session, actor, raw_id))


async def _user(session: AsyncSession, actor: UserActor, raw_id: uuid.UUID) -> Node:
    return UserType.from_row(await organizations.get_user(session, actor, raw_id))


async def _audit_event(session: AsyncSession, actor: UserActor, raw_id: uuid.UUID) -> Node:
    event = await audit.get_event(session, actor, raw_id)
    assert event.organization_id is not None  # platform events are in no member's scope
    require_role(actor, event.organization_id, Role.ADMIN)
    return AuditEventType.from_row(event)


async def _agent(session: AsyncSession, actor: UserActor, raw_id: uuid.UUID) -> Node:
    return AgentType.from_row(await agents.get_agent(session, actor, raw_id))


async def _manifest(session: AsyncSession, actor: UserActor, raw_id: uuid.UUID) -> Node:
    return ManifestType.from_row(await manifests.get_manifest(session, actor, raw_id))


async def _project(session: AsyncSession, actor: UserActor, raw_id: uuid.UUID) -> Node:
    return ProjectType.from_row(await projects.get_project(session, actor, raw_id))


async def _credential(session: AsyncSession, actor: UserActor, raw_id: uuid.UUID) -> Node:
    row = await credentials.get_credential(session, actor, raw_id)
    require_role(actor, row.organization_id, Role.ADMIN)
    return LlmCredentialType.from_row(row)


async def _conversation(session: AsyncSession, actor: UserActor, raw_id: uuid.UUID) -> Node:
    return ConversationType.from_row(await chat.get_conversation(session, actor, raw_id))


async def _message(session: AsyncSession, actor: UserActor, raw_id: uuid.UUID) -> Node:
    return MessageType.from_row(await chat.get_message(session, actor, raw_id))


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
    @strawberry.field(extensions=authenticated())
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        """API.md: null, without an error, for an unknown ID and for another organization's
        alike (malformed IDs and types that are not nodes too); a member whose role is too
        weak for the type still gets FORBIDDEN."""
        try:
            type_name, raw_id = parse_global_id(id)
            fetch = FETCHERS.get(type_name)
            if fetch is None:
                return None
            async with info.context.services.read() as session:
                return await fetch(session, signed_in(info), raw_id)
        except NotFound:
            return None
