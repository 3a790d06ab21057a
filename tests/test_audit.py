"""The audit log: one event per administrative change, none for a refused one."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from kindrobots.db import audit_chain
from kindrobots.db.models import AuditEvent, Invitation, Membership
from kindrobots.ids import from_global_id
from tests.conftest import Account, Client, RunningServer, set_tier, sign_up, unique_email
from tests.org_helpers import (
    AUDIT_LOG,
    CREATE_ORGANIZATION,
    accept,
    audit_events,
    build_team,
    invite,
    member_roles,
    quick_account,
    raw_id,
    remove,
    update_role,
)


class AuditTrail:
    """Reads an organization's log and returns what each change added to it."""

    def __init__(self, client: Client, reader: Account, organization_id: str) -> None:
        self.client = client
        self.reader = reader
        self.organization_id = organization_id
        self.seen: set[str] = set()

    async def events(self) -> list[dict[str, Any]]:
        return await audit_events(self.client, self.reader.access_token, self.organization_id)

    async def start(self) -> list[dict[str, Any]]:
        events = await self.events()
        self.seen = {event["id"] for event in events}
        return events

    async def new(self) -> list[dict[str, Any]]:
        events = await self.events()
        fresh = [event for event in events if event["id"] not in self.seen]
        self.seen |= {event["id"] for event in fresh}
        return fresh


def check_event(
    event: dict[str, Any],
    *,
    action: str,
    actor: Account,
    target_type: str,
    target_id: str,
) -> None:
    assert event["action"] == action
    assert event["actor"] == {"id": actor.user_id, "email": actor.email}
    assert event["targetType"] == target_type
    assert event["targetId"] == target_id
    assert event["ip"] == "127.0.0.1"
    created = datetime.fromisoformat(event["createdAt"])
    assert created.tzinfo is not None
    assert isinstance(event["metadata"], dict)


async def stored_counts(server: RunningServer, organization_id: str) -> tuple[int, int, int]:
    """Audit events, invitations and memberships of the organization, straight from the DB."""
    org = raw_id(organization_id, "Organization")
    async with server.services.read() as session:
        events = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.organization_id == org)
        )
        invitations = await session.scalar(
            select(func.count()).select_from(Invitation).where(Invitation.organization_id == org)
        )
        members = await session.scalar(
            select(func.count()).select_from(Membership).where(Membership.organization_id == org)
        )
    return events or 0, invitations or 0, members or 0


async def test_every_administrative_mutation_writes_one_event(
    client: Client, server: RunningServer
) -> None:
    owner = await sign_up(client, organization="Audited")
    home = AuditTrail(client, owner, owner.organization_id)
    (signed_up,) = await home.start()
    check_event(
        signed_up,
        action="organization.create",
        actor=owner,
        target_type="Organization",
        target_id=owner.organization_id,
    )
    assert signed_up["metadata"] == {"name": "Audited"}

    created = await client.execute(
        CREATE_ORGANIZATION, {"name": "Second"}, token=owner.access_token
    )
    assert created.errors == []
    org = created.data["createOrganization"]["id"]
    await set_tier(server, org, "ENTERPRISE")
    trail = AuditTrail(client, owner, org)
    (event,) = await trail.start()
    check_event(
        event, action="organization.create", actor=owner, target_type="Organization", target_id=org
    )
    assert await home.new() == []  # the first organization's log did not change

    invitee = await quick_account(server)
    invited = await invite(client, owner.access_token, org, invitee.email, "EDITOR")
    assert invited.errors == []
    invitation = invited.data["inviteMember"]
    (event,) = await trail.new()
    check_event(
        event,
        action="member.invite",
        actor=owner,
        target_type="Invitation",
        target_id=invitation["invitation"]["id"],
    )
    assert event["metadata"] == {"email": invitee.email, "role": "EDITOR"}
    assert invitation["token"] not in repr(event)

    assert (await accept(client, invitee.access_token, invitation["token"])).errors == []
    (event,) = await trail.new()
    check_event(
        event,
        action="invitation.accept",
        actor=invitee,
        target_type="User",
        target_id=invitee.user_id,
    )

    assert (
        await update_role(client, owner.access_token, org, invitee.user_id, "ADMIN")
    ).errors == []
    (event,) = await trail.new()
    check_event(
        event,
        action="member.role_update",
        actor=owner,
        target_type="User",
        target_id=invitee.user_id,
    )
    assert event["metadata"] == {"from": "EDITOR", "to": "ADMIN"}

    # The new admin acts; the event names them, not the owner.
    other = await quick_account(server)
    assert (await invite(client, invitee.access_token, org, other.email)).errors == []
    (event,) = await trail.new()
    assert event["action"] == "member.invite"
    assert event["actor"]["id"] == invitee.user_id

    assert (await remove(client, owner.access_token, org, invitee.user_id)).errors == []
    (event,) = await trail.new()
    check_event(
        event, action="member.remove", actor=owner, target_type="User", target_id=invitee.user_id
    )

    # Oldest first, and the events name themselves as AuditEvent nodes.
    events = await trail.events()
    assert [e["action"] for e in events] == [
        "organization.create",
        "member.invite",
        "invitation.accept",
        "member.role_update",
        "member.invite",
        "member.remove",
    ]
    stamps = [datetime.fromisoformat(e["createdAt"]) for e in events]
    assert stamps == sorted(stamps)


async def test_ip_is_the_connecting_address_not_a_spoofed_header(
    client: Client, server: RunningServer
) -> None:
    owner = await sign_up(client)
    created = await client.execute(
        CREATE_ORGANIZATION,
        {"name": "Spoofed"},
        token=owner.access_token,
        headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"},
    )
    assert created.errors == []
    (event,) = await audit_events(
        client, owner.access_token, created.data["createOrganization"]["id"]
    )
    assert event["ip"] == "127.0.0.1"


async def test_audit_log_is_for_admins_and_owners(client: Client, server: RunningServer) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    by_owner = await audit_events(client, team.owner.access_token, org)
    by_admin = await audit_events(client, team.admin.access_token, org)
    assert by_owner == by_admin
    assert len(by_owner) == 7  # create, then invite + accept for three members

    for member in (team.editor, team.viewer):
        response = await client.execute(AUDIT_LOG, {"id": org}, token=member.access_token)
        assert response.codes == ["FORBIDDEN"]
        assert response.data == {"organization": None}
        assert "member.invite" not in repr(response.body)
    outsider = await client.execute(AUDIT_LOG, {"id": org}, token=team.outsider.access_token)
    assert outsider.codes == ["NOT_FOUND"]
    signed_out = await client.execute(AUDIT_LOG, {"id": org})
    assert signed_out.codes == ["UNAUTHENTICATED"]


async def test_refused_mutations_write_no_event_and_change_nothing(
    client: Client, server: RunningServer
) -> None:
    starter = await sign_up(client)
    before = await stored_counts(server, starter.organization_id)
    log = await audit_events(client, starter.access_token, starter.organization_id)
    refused = [
        await invite(client, starter.access_token, starter.organization_id, unique_email()),
        await update_role(
            client, starter.access_token, starter.organization_id, starter.user_id, "ADMIN"
        ),
        await remove(client, starter.access_token, starter.organization_id, starter.user_id),
        await invite(client, starter.access_token, starter.organization_id, "not an email"),
    ]
    assert [r.codes for r in refused] == [
        ["PAYMENT_REQUIRED"],
        ["CONFLICT"],
        ["CONFLICT"],
        ["BAD_USER_INPUT"],
    ]
    assert await stored_counts(server, starter.organization_id) == before
    assert await audit_events(client, starter.access_token, starter.organization_id) == log

    team = await build_team(client, server)
    org = team.organization_id
    before = await stored_counts(server, org)
    log = await audit_events(client, team.owner.access_token, org)
    refused = [
        await invite(client, team.editor.access_token, org, unique_email()),
        await invite(client, team.admin.access_token, org, unique_email(), "OWNER"),
        await invite(client, team.owner.access_token, org, team.viewer.email),
        await update_role(client, team.viewer.access_token, org, team.editor.user_id, "ADMIN"),
        await update_role(client, team.admin.access_token, org, team.owner.user_id, "VIEWER"),
        await remove(client, team.editor.access_token, org, team.viewer.user_id),
        await remove(client, team.outsider.access_token, org, team.viewer.user_id),
        await accept(client, team.outsider.access_token, "no-such-token"),
    ]
    assert [r.codes for r in refused] == [
        ["FORBIDDEN"],
        ["FORBIDDEN"],
        ["CONFLICT"],
        ["FORBIDDEN"],
        ["FORBIDDEN"],
        ["FORBIDDEN"],
        ["NOT_FOUND"],
        ["NOT_FOUND"],
    ]
    assert await stored_counts(server, org) == before
    assert await audit_events(client, team.owner.access_token, org) == log
    assert (await member_roles(client, team.owner.access_token, org))[team.owner.user_id] == "OWNER"


async def test_action_filter_and_cursor_pagination(client: Client, server: RunningServer) -> None:
    owner = await sign_up(client)
    org = owner.organization_id
    await set_tier(server, org, "ENTERPRISE")
    emails = [unique_email("paged") for _ in range(5)]
    for email in emails:
        assert (await invite(client, owner.access_token, org, email)).errors == []
    everything = await audit_events(client, owner.access_token, org)
    assert len(everything) == 6

    invites = await audit_events(client, owner.access_token, org, action="member.invite")
    assert [event["metadata"]["email"] for event in invites] == emails
    assert await audit_events(client, owner.access_token, org, action="member.remove") == []

    async def page(first: int, after: str | None, action: str | None = None) -> dict[str, Any]:
        response = await client.execute(
            AUDIT_LOG,
            {"id": org, "first": first, "after": after, "action": action},
            token=owner.access_token,
        )
        assert response.errors == [], response.errors
        connection: dict[str, Any] = response.data["organization"]["auditLog"]
        return connection

    collected: list[dict[str, Any]] = []
    after: str | None = None
    pages = []
    while True:
        connection = await page(4, after)
        pages.append(connection["pageInfo"])
        collected.extend(edge["node"] for edge in connection["edges"])
        assert connection["pageInfo"]["endCursor"] == connection["edges"][-1]["cursor"]
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert collected == everything
    assert [(p["hasNextPage"], p["hasPreviousPage"]) for p in pages] == [
        (True, False),
        (False, True),
    ]

    # Filter and pages together.
    first_two = await page(2, None, "member.invite")
    assert [e["node"]["metadata"]["email"] for e in first_two["edges"]] == emails[:2]
    assert first_two["pageInfo"]["hasNextPage"] is True
    rest = await page(10, first_two["pageInfo"]["endCursor"], "member.invite")
    assert [e["node"]["metadata"]["email"] for e in rest["edges"]] == emails[2:]
    assert rest["pageInfo"]["hasNextPage"] is False

    # A page size of exactly the limit is fine; past it is the client's mistake.
    assert len((await page(100, None))["edges"]) == 6
    for first in (101, 1000, -1):
        response = await client.execute(
            AUDIT_LOG, {"id": org, "first": first}, token=owner.access_token
        )
        assert response.codes == ["BAD_USER_INPUT"], response.body
        assert response.errors[0]["extensions"]["field"] == "first"
    garbage = await client.execute(
        AUDIT_LOG, {"id": org, "after": "not-a-cursor"}, token=owner.access_token
    )
    assert garbage.codes == ["BAD_USER_INPUT"]
    assert garbage.errors[0]["extensions"]["field"] == "after"


async def test_concurrent_changes_each_write_their_event(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    trail = AuditTrail(client, team.owner, org)
    await trail.start()
    emails = [unique_email("rush") for _ in range(3)]
    results = await asyncio.gather(
        *(invite(client, team.admin.access_token, org, email) for email in emails),
        update_role(client, team.owner.access_token, org, team.editor.user_id, "VIEWER"),
        update_role(client, team.admin.access_token, org, team.viewer.user_id, "EDITOR"),
        remove(client, team.owner.access_token, org, team.admin.user_id),
    )
    assert [r.errors for r in results] == [[]] * 6
    fresh = await trail.new()
    assert sorted(event["action"] for event in fresh) == sorted(
        ["member.invite"] * 3 + ["member.role_update"] * 2 + ["member.remove"]
    )
    async with server.services.read() as session:
        report = await audit_chain.verify(session, server.settings.audit_key)
    # Other tests on this server tamper with chains of their own on purpose.
    raw = from_global_id(org, "Organization")
    assert [link for link in report.broken if link.organization_id == raw] == []
