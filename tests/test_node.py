"""``node(id)``: what a caller may see by global ID, and nothing that tells others apart."""

from __future__ import annotations

import base64
import uuid

from tests.conftest import Client, RunningServer, unique_email
from tests.org_helpers import (
    audit_events,
    build_team,
    invite,
    missing_id,
    raw_id,
    remove,
)

NODE = """
query($id: ID!) {
  node(id: $id) {
    __typename
    id
    ... on Organization { name tier }
    ... on User { email displayName }
    ... on AuditEvent { action targetId actor { id } }
  }
}
"""

ORGANIZATION = "query($id: ID!) { organization(id: $id) { id name } }"


def encoded(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


GARBAGE_IDS = [
    "",
    "not-an-id",
    "!!!",
    "ø",
    "abcde",
    "x" * 2000,
    encoded("Organization:not-a-uuid"),
    encoded("Organization"),
    encoded(f"organization:{uuid.uuid4()}"),
    encoded(f"Membership:{uuid.uuid4()}"),
    encoded(f"Invitation:{uuid.uuid4()}"),
    encoded(f"Nonsense:{uuid.uuid4()}"),
    base64.urlsafe_b64encode(b"\xff\xfe:" + uuid.uuid4().bytes).decode(),
]


async def test_node_fetches_organizations_users_and_audit_events(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    org = team.organization_id

    organization = await client.execute(NODE, {"id": org}, token=team.viewer.access_token)
    assert organization.errors == []
    assert organization.data["node"] == {
        "__typename": "Organization",
        "id": org,
        "name": "Org A",
        "tier": "ENTERPRISE",
    }

    me = await client.execute(NODE, {"id": team.viewer.user_id}, token=team.viewer.access_token)
    assert me.errors == []
    assert me.data["node"] == {
        "__typename": "User",
        "id": team.viewer.user_id,
        "email": team.viewer.email,
        "displayName": "Test User",
    }
    colleague = await client.execute(
        NODE, {"id": team.owner.user_id}, token=team.viewer.access_token
    )
    assert colleague.errors == []
    assert colleague.data["node"]["email"] == team.owner.email

    events = await audit_events(client, team.admin.access_token, org)
    created = events[0]
    assert created["action"] == "organization.create"
    for reader in (team.owner, team.admin):
        event = await client.execute(NODE, {"id": created["id"]}, token=reader.access_token)
        assert event.errors == []
        assert event.data["node"] == {
            "__typename": "AuditEvent",
            "id": created["id"],
            "action": "organization.create",
            "targetId": org,
            "actor": {"id": team.owner.user_id},
        }
    # Members below ADMIN see the audit log neither as a list nor by ID.
    for reader in (team.editor, team.viewer):
        event = await client.execute(NODE, {"id": created["id"]}, token=reader.access_token)
        assert event.codes == ["FORBIDDEN"]
        assert event.data == {"node": None}


async def test_other_organizations_objects_look_exactly_like_missing_ids(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    foreign_event = (
        await audit_events(client, team.outsider.access_token, team.other_organization_id)
    )[0]
    foreign = {
        "Organization": team.other_organization_id,
        "User": team.outsider.user_id,
        "AuditEvent": foreign_event["id"],
    }
    # The outsider can read each of them: they exist.
    for global_id in foreign.values():
        own = await client.execute(NODE, {"id": global_id}, token=team.outsider.access_token)
        assert own.errors == [], own.body

    for member in (team.owner, team.admin, team.editor, team.viewer):
        reference = await client.execute(
            NODE, {"id": missing_id("Organization")}, token=member.access_token
        )
        # API.md: null, without an error, for unknown and foreign IDs alike.
        assert reference.body == {"data": {"node": None}}
        for type_name, global_id in foreign.items():
            attempt = await client.execute(NODE, {"id": global_id}, token=member.access_token)
            absent = await client.execute(
                NODE, {"id": missing_id(type_name)}, token=member.access_token
            )
            assert attempt.body == absent.body == reference.body, type_name
        for garbage in GARBAGE_IDS:
            attempt = await client.execute(NODE, {"id": garbage}, token=member.access_token)
            assert attempt.status == 200
            assert attempt.body == reference.body, garbage

    # An ID of the wrong type where an organization is expected is just as unknown.
    owner = team.owner.access_token
    reference = await client.execute(ORGANIZATION, {"id": missing_id("Organization")}, token=owner)
    assert reference.codes == ["NOT_FOUND"]
    for wrong in (team.owner.user_id, foreign_event["id"], team.other_organization_id, "junk"):
        attempt = await client.execute(ORGANIZATION, {"id": wrong}, token=owner)
        assert attempt.body == reference.body, wrong


async def test_removed_colleague_becomes_unknown(client: Client, server: RunningServer) -> None:
    team = await build_team(client, server)
    viewer = team.viewer
    seen = await client.execute(NODE, {"id": team.editor.user_id}, token=viewer.access_token)
    assert seen.data["node"]["email"] == team.editor.email

    removed = await remove(client, team.owner.access_token, team.organization_id, viewer.user_id)
    assert removed.errors == []
    reference = await client.execute(NODE, {"id": missing_id("User")}, token=viewer.access_token)
    for global_id in (team.editor.user_id, team.organization_id):
        gone = await client.execute(NODE, {"id": global_id}, token=viewer.access_token)
        assert gone.body == {"data": {"node": None}}
        assert gone.body == reference.body
    # Themself they still see.
    me = await client.execute(NODE, {"id": viewer.user_id}, token=viewer.access_token)
    assert me.data["node"]["email"] == viewer.email


async def test_invitations_are_not_nodes(client: Client, server: RunningServer) -> None:
    team = await build_team(client, server)
    invited = await invite(
        client, team.owner.access_token, team.organization_id, unique_email(), "VIEWER"
    )
    assert invited.errors == []
    invitation_id = invited.data["inviteMember"]["invitation"]["id"]
    assert raw_id(invitation_id, "Invitation")  # a real invitation's ID
    attempt = await client.execute(NODE, {"id": invitation_id}, token=team.owner.access_token)
    reference = await client.execute(
        NODE, {"id": missing_id("Organization")}, token=team.owner.access_token
    )
    assert attempt.body == reference.body


async def test_signed_out_callers_are_unauthenticated(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    event_id = (await audit_events(client, team.owner.access_token, team.organization_id))[0]["id"]
    for global_id in (
        team.organization_id,
        team.owner.user_id,
        event_id,
        missing_id("Organization"),
        "garbage",
    ):
        for token in (None, "not-a-jwt", team.owner.access_token + "x"):
            response = await client.execute(NODE, {"id": global_id}, token=token)
            assert response.codes == ["UNAUTHENTICATED"], (global_id, token)
            assert response.data == {"node": None}
            assert "Org A" not in repr(response.body)
