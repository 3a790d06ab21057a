"""Helpers for organization tests: members of every role, invitations, global IDs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from argon2 import PasswordHasher

from kindrobots.db.models import AuthSession, Membership, Organization, User
from kindrobots.ids import from_global_id, to_global_id
from tests.conftest import (
    PASSWORD,
    Account,
    Client,
    Response,
    RunningServer,
    set_tier,
    sign_up,
    unique_email,
)

INVITE = """
mutation Invite($input: InviteMemberInput!) {
  inviteMember(input: $input) { token invitation { id email role expiresAt } }
}
"""

ACCEPT = """
mutation Accept($token: String!) {
  acceptInvitation(token: $token) { role organization { id } user { id email } }
}
"""

UPDATE_ROLE = """
mutation UpdateRole($input: UpdateMemberRoleInput!) {
  updateMemberRole(input: $input) { role user { id } organization { id } }
}
"""

REMOVE = """
mutation Remove($organizationId: ID!, $userId: ID!) {
  removeMember(organizationId: $organizationId, userId: $userId)
}
"""

CREATE_ORGANIZATION = """
mutation Create($name: String!) { createOrganization(input: {name: $name}) { id name tier } }
"""

MEMBERS = """
query Members($id: ID!, $first: Int, $after: String) {
  organization(id: $id) {
    members(first: $first, after: $after) {
      edges { node { role user { id email } } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""

AUDIT_LOG = """
query Audit($id: ID!, $first: Int, $after: String, $action: String) {
  organization(id: $id) {
    auditLog(first: $first, after: $after, action: $action) {
      edges {
        cursor
        node { id action actor { id email } targetType targetId metadata ip createdAt }
      }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}
"""


def missing_id(type_name: str) -> str:
    """A well-formed global ID of ``type_name`` that names nothing."""
    return to_global_id(type_name, uuid.uuid4())


def raw_id(global_id: str, type_name: str) -> uuid.UUID:
    return from_global_id(global_id, type_name)


async def invite(
    client: Client, token: str, organization_id: str, email: str, role: str = "VIEWER"
) -> Response:
    return await client.execute(
        INVITE,
        {"input": {"organizationId": organization_id, "email": email, "role": role}},
        token=token,
    )


async def invitation_token(
    client: Client, token: str, organization_id: str, email: str, role: str = "VIEWER"
) -> str:
    response = await invite(client, token, organization_id, email, role)
    assert response.errors == [], response.errors
    value = response.data["inviteMember"]["token"]
    assert isinstance(value, str)
    return value


async def accept(client: Client, token: str, invitation: str) -> Response:
    return await client.execute(ACCEPT, {"token": invitation}, token=token)


@cache
def _password_hash() -> str:
    return PasswordHasher().hash(PASSWORD)


async def quick_account(
    server: RunningServer, email: str | None = None, organization: str = "Home"
) -> Account:
    """What ``sign_up`` makes (a user owning an organization, signed in), straight in the DB.

    Signing up hashes a password with Argon2 (a few hundred ms on a busy machine); tests
    that need dozens of members make them here and drive everything else over HTTP.
    """
    email = email or unique_email()
    now = datetime.now(UTC)
    async with server.services.write() as session:
        user = User(email=email, display_name="Test User", password_hash=_password_hash())
        organization_row = Organization(
            name=organization, slug=f"quick-{uuid.uuid4().hex}", tier="STARTER", created_at=now
        )
        session.add_all([user, organization_row])
        await session.flush()
        auth_session = AuthSession(user_id=user.id, created_at=now, expires_at=now + timedelta(1))
        session.add_all(
            [
                auth_session,
                Membership(
                    organization_id=organization_row.id,
                    user_id=user.id,
                    role="OWNER",
                    created_at=now,
                ),
            ]
        )
        await session.flush()
    access_token, _ = server.services.signer.issue(user.id, auth_session.id, now)
    return Account(
        email=email,
        password=PASSWORD,
        access_token=access_token,
        refresh_token="",
        user_id=to_global_id("User", user.id),
        organization_id=to_global_id("Organization", organization_row.id),
        cookies={},
    )


async def add_member(
    client: Client,
    server: RunningServer,
    inviter: Account,
    organization_id: str,
    role: str,
    email: str | None = None,
) -> Account:
    """A new user (with an organization of their own) who joins ``organization_id`` as ``role``.

    The invitation and its acceptance go over HTTP; only the sign-up is a shortcut.
    """
    account = await quick_account(server, email)
    invitation = await invitation_token(
        client, inviter.access_token, organization_id, account.email, role
    )
    response = await accept(client, account.access_token, invitation)
    assert response.errors == [], response.errors
    assert response.data["acceptInvitation"]["role"] == role
    return account


async def update_role(
    client: Client, token: str, organization_id: str, user_id: str, role: str
) -> Response:
    return await client.execute(
        UPDATE_ROLE,
        {"input": {"organizationId": organization_id, "userId": user_id, "role": role}},
        token=token,
    )


async def remove(client: Client, token: str, organization_id: str, user_id: str) -> Response:
    return await client.execute(
        REMOVE, {"organizationId": organization_id, "userId": user_id}, token=token
    )


async def member_roles(client: Client, token: str, organization_id: str) -> dict[str, str]:
    """User ID → role for every member (up to 100), as the organization reports it."""
    response = await client.execute(MEMBERS, {"id": organization_id, "first": 100}, token=token)
    assert response.errors == [], response.errors
    connection = response.data["organization"]["members"]
    assert connection["pageInfo"]["hasNextPage"] is False
    return {edge["node"]["user"]["id"]: edge["node"]["role"] for edge in connection["edges"]}


async def audit_events(
    client: Client, token: str, organization_id: str, action: str | None = None
) -> list[dict[str, Any]]:
    response = await client.execute(
        AUDIT_LOG, {"id": organization_id, "first": 100, "action": action}, token=token
    )
    assert response.errors == [], response.errors
    return [edge["node"] for edge in response.data["organization"]["auditLog"]["edges"]]


class Staff(NamedTuple):
    """An Enterprise organization's owner, and an editor and a viewer acting in it."""

    owner: Account
    editor: Account
    viewer: Account


def acting_in(account: Account, organization_id: str) -> Account:
    """``account`` (same user, same tokens) working in ``organization_id``."""
    return Account(**{**vars(account), "organization_id": organization_id})


async def owner_editor_viewer(client: Client, server: RunningServer) -> Staff:
    owner = await quick_account(server)
    await set_tier(server, owner.organization_id, "ENTERPRISE")
    editor = await add_member(client, server, owner, owner.organization_id, "EDITOR")
    viewer = await add_member(client, server, owner, owner.organization_id, "VIEWER")
    return Staff(
        owner, acting_in(editor, owner.organization_id), acting_in(viewer, owner.organization_id)
    )


@dataclass
class Team:
    """Organization A with one member of each role, and an outsider who owns organization B."""

    organization_id: str
    owner: Account
    admin: Account
    editor: Account
    viewer: Account
    outsider: Account

    def by_role(self, role: str) -> Account:
        return {
            "OWNER": self.owner,
            "ADMIN": self.admin,
            "EDITOR": self.editor,
            "VIEWER": self.viewer,
            "OUTSIDER": self.outsider,
        }[role]

    @property
    def other_organization_id(self) -> str:
        return self.outsider.organization_id


async def build_team(client: Client, server: RunningServer) -> Team:
    owner = await sign_up(client, organization="Org A")
    await set_tier(server, owner.organization_id, "ENTERPRISE")
    organization_id = owner.organization_id
    admin = await add_member(client, server, owner, organization_id, "ADMIN")
    editor = await add_member(client, server, owner, organization_id, "EDITOR")
    viewer = await add_member(client, server, owner, organization_id, "VIEWER")
    outsider = await sign_up(client, organization="Org B")
    await set_tier(server, outsider.organization_id, "ENTERPRISE")
    return Team(organization_id, owner, admin, editor, viewer, outsider)


def only_error(response: Response) -> dict[str, Any]:
    assert len(response.errors) == 1, response.body
    return response.errors[0]


async def organization_with_events(client: Client, server: RunningServer) -> str:
    """An organization whose audit chain holds four events (its creation, three invites)."""
    owner = await sign_up(client)
    await set_tier(server, owner.organization_id, "ENTERPRISE")
    for _ in range(3):
        response = await invite(client, owner.access_token, owner.organization_id, unique_email())
        assert response.errors == [], response.errors
    return owner.organization_id
