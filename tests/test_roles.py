"""The role table: every operation by every role of the owning organization and by an outsider.

Organization A has one member of each role; the outsider owns organization B. Results
must match ``ROLE_TABLE`` exactly, every outcome must be visible in the data (a refused
mutation changes nothing), and an outsider's answer must be byte-for-byte the answer for
an organization ID that does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text, update

from kindrobots.db.models import Invitation
from tests.conftest import Account, Client, Response, RunningServer, set_tier, sign_up, unique_email
from tests.org_helpers import (
    accept,
    add_member,
    build_team,
    invitation_token,
    invite,
    member_roles,
    missing_id,
    only_error,
    quick_account,
    raw_id,
    remove,
    update_role,
)

ALLOWED = "ALLOWED"
FORBIDDEN = "FORBIDDEN"
NOT_FOUND = "NOT_FOUND"
UNAUTHENTICATED = "UNAUTHENTICATED"
NULL = "NULL"  # no error and no data: node(id) for what the caller may not know exists

CALLERS = ("OWNER", "ADMIN", "EDITOR", "VIEWER", "OUTSIDER", "ANONYMOUS")


def row(*outcomes: str) -> dict[str, str]:
    assert len(outcomes) == len(CALLERS)
    return dict(zip(CALLERS, outcomes, strict=True))


A, F, N, U, Z = ALLOWED, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED, NULL

# fmt: off
ROLE_TABLE: dict[str, dict[str, str]] = {
    #                       OWNER ADMIN EDITOR VIEWER OUTSIDER ANONYMOUS
    "organization":     row(A,    A,    A,     A,     N,       U),
    "members":          row(A,    A,    A,     A,     N,       U),
    "invitations":      row(A,    A,    F,     F,     N,       U),
    "auditLog":         row(A,    A,    F,     F,     N,       U),
    "node":             row(A,    A,    A,     A,     Z,       U),
    "inviteMember":     row(A,    A,    F,     F,     N,       U),
    "updateMemberRole": row(A,    A,    F,     F,     N,       U),
    "removeMember":     row(A,    A,    F,     F,     N,       U),
    "createOrganization": row(A,  A,    A,     A,     A,       U),
    "acceptInvitation": row(A,    A,    A,     A,     A,       U),
    # Last: it ends the caller's sessions.
    "signOutEverywhere": row(A,   A,    A,     A,     A,       U),
}
# fmt: on

# Operations that name organization A; an outsider's attempt must equal one on a missing ID.
SCOPED = frozenset(
    {
        "organization",
        "members",
        "invitations",
        "auditLog",
        "node",
        "inviteMember",
        "updateMemberRole",
        "removeMember",
    }
)


def dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def outcome(response: Response) -> str:
    if not response.errors:
        data = response.data
        if isinstance(data, dict) and data and all(value is None for value in data.values()):
            return NULL
        return ALLOWED
    code = only_error(response).get("extensions", {}).get("code")
    assert isinstance(code, str), response.body
    return code


@dataclass
class Attempt:
    response: Response
    # Whether the operation visibly did its job: the data came back, or the change is there.
    succeeded: Callable[[], Awaitable[bool]]


@dataclass
class Scenario:
    client: Client
    server: RunningServer
    team_owner: Account
    organization_id: str
    subject: Account  # a VIEWER of A whose role updateMemberRole changes
    other_owner: Account  # owns organization C, which invites callers for acceptInvitation

    async def roles(self) -> dict[str, str]:
        return await member_roles(self.client, self.team_owner.access_token, self.organization_id)

    async def pending_emails(self, organization_id: str, owner: Account) -> set[str]:
        response = await self.client.execute(
            "query($id: ID!) { organization(id: $id) { invitations { email } } }",
            {"id": organization_id},
            token=owner.access_token,
        )
        assert response.errors == [], response.errors
        return {item["email"] for item in response.data["organization"]["invitations"]}


Operation = Callable[[Scenario, Account | None, str], Awaitable[Attempt]]


def token_of(caller: Account | None) -> str | None:
    return caller.access_token if caller else None


async def op_organization(s: Scenario, caller: Account | None, org: str) -> Attempt:
    response = await s.client.execute(
        "query($id: ID!) { organization(id: $id) { id name tier } }",
        {"id": org},
        token=token_of(caller),
    )

    async def succeeded() -> bool:
        return bool(dig(response.data, "organization", "id") == org)

    return Attempt(response, succeeded)


async def op_members(s: Scenario, caller: Account | None, org: str) -> Attempt:
    response = await s.client.execute(
        "query($id: ID!) { organization(id: $id) {"
        " members(first: 50) { edges { node { role user { id } } } } } }",
        {"id": org},
        token=token_of(caller),
    )

    async def succeeded() -> bool:
        edges = dig(response.data, "organization", "members", "edges") or []
        users = {edge["node"]["user"]["id"] for edge in edges}
        return caller is not None and caller.user_id in users and s.team_owner.user_id in users

    return Attempt(response, succeeded)


async def op_invitations(s: Scenario, caller: Account | None, org: str) -> Attempt:
    response = await s.client.execute(
        "query($id: ID!) { organization(id: $id) { invitations { id email role expiresAt } } }",
        {"id": org},
        token=token_of(caller),
    )

    async def succeeded() -> bool:
        return isinstance(dig(response.data, "organization", "invitations"), list)

    return Attempt(response, succeeded)


async def op_audit_log(s: Scenario, caller: Account | None, org: str) -> Attempt:
    response = await s.client.execute(
        "query($id: ID!) { organization(id: $id) {"
        " auditLog(first: 100) { edges { node { action actor { id } } } } } }",
        {"id": org},
        token=token_of(caller),
    )

    async def succeeded() -> bool:
        edges = dig(response.data, "organization", "auditLog", "edges") or []
        return "organization.create" in {edge["node"]["action"] for edge in edges}

    return Attempt(response, succeeded)


async def op_node(s: Scenario, caller: Account | None, org: str) -> Attempt:
    response = await s.client.execute(
        "query($id: ID!) { node(id: $id) { __typename id ... on Organization { name } } }",
        {"id": org},
        token=token_of(caller),
    )

    async def succeeded() -> bool:
        node = dig(response.data, "node")
        return bool(dig(node, "__typename") == "Organization" and dig(node, "id") == org)

    return Attempt(response, succeeded)


async def op_invite_member(s: Scenario, caller: Account | None, org: str) -> Attempt:
    email = unique_email("invitee")
    response = await invite(s.client, token_of(caller) or "", org, email, "VIEWER")

    async def succeeded() -> bool:
        pending = await s.pending_emails(s.organization_id, s.team_owner)
        return email in pending

    return Attempt(response, succeeded)


async def op_update_member_role(s: Scenario, caller: Account | None, org: str) -> Attempt:
    reset = await update_role(
        s.client, s.team_owner.access_token, s.organization_id, s.subject.user_id, "VIEWER"
    )
    assert reset.errors == [], reset.errors
    response = await update_role(s.client, token_of(caller) or "", org, s.subject.user_id, "EDITOR")

    async def succeeded() -> bool:
        return (await s.roles()).get(s.subject.user_id) == "EDITOR"

    return Attempt(response, succeeded)


async def op_remove_member(s: Scenario, caller: Account | None, org: str) -> Attempt:
    target = await add_member(s.client, s.server, s.team_owner, s.organization_id, "VIEWER")
    response = await remove(s.client, token_of(caller) or "", org, target.user_id)

    async def succeeded() -> bool:
        return target.user_id not in await s.roles()

    return Attempt(response, succeeded)


async def op_create_organization(s: Scenario, caller: Account | None, org: str) -> Attempt:
    response = await s.client.execute(
        'mutation { createOrganization(input: {name: "Side project"}) { id tier } }',
        token=token_of(caller),
    )

    async def succeeded() -> bool:
        created = dig(response.data, "createOrganization", "id")
        if caller is None or not isinstance(created, str):
            return False
        roles = await member_roles(s.client, caller.access_token, created)
        return roles == {caller.user_id: "OWNER"}

    return Attempt(response, succeeded)


async def op_accept_invitation(s: Scenario, caller: Account | None, org: str) -> Attempt:
    email = caller.email if caller else unique_email("anonymous")
    invitation = await invitation_token(
        s.client, s.other_owner.access_token, s.other_owner.organization_id, email, "EDITOR"
    )
    response = await accept(s.client, token_of(caller) or "", invitation)

    async def succeeded() -> bool:
        pending = await s.pending_emails(s.other_owner.organization_id, s.other_owner)
        if email in pending:
            return False
        roles = await member_roles(
            s.client, s.other_owner.access_token, s.other_owner.organization_id
        )
        return caller is not None and roles.get(caller.user_id) == "EDITOR"

    return Attempt(response, succeeded)


async def op_sign_out_everywhere(s: Scenario, caller: Account | None, org: str) -> Attempt:
    response = await s.client.execute("mutation { signOutEverywhere }", token=token_of(caller))

    async def succeeded() -> bool:
        if caller is None:
            return False
        me = await s.client.execute("{ me { user { id } } }", token=caller.access_token)
        return me.errors == [] and me.data == {"me": None}

    return Attempt(response, succeeded)


OPERATIONS: dict[str, Operation] = {
    "organization": op_organization,
    "members": op_members,
    "invitations": op_invitations,
    "auditLog": op_audit_log,
    "node": op_node,
    "inviteMember": op_invite_member,
    "updateMemberRole": op_update_member_role,
    "removeMember": op_remove_member,
    "createOrganization": op_create_organization,
    "acceptInvitation": op_accept_invitation,
    "signOutEverywhere": op_sign_out_everywhere,
}


async def test_every_operation_by_every_role_matches_the_table(
    client: Client, server: RunningServer
) -> None:
    assert list(OPERATIONS) == list(ROLE_TABLE)
    team = await build_team(client, server)
    other_owner = await quick_account(server, organization="Org C")
    await set_tier(server, other_owner.organization_id, "ENTERPRISE")
    subject = await add_member(client, server, team.owner, team.organization_id, "VIEWER")
    scenario = Scenario(client, server, team.owner, team.organization_id, subject, other_owner)
    callers: dict[str, Account | None] = {
        "OWNER": team.owner,
        "ADMIN": team.admin,
        "EDITOR": team.editor,
        "VIEWER": team.viewer,
        "OUTSIDER": team.outsider,
        "ANONYMOUS": None,
    }

    observed: dict[str, dict[str, str]] = {}
    for name, operation in OPERATIONS.items():
        observed[name] = {}
        for caller_name, caller in callers.items():
            attempt = await operation(scenario, caller, team.organization_id)
            result = outcome(attempt.response)
            observed[name][caller_name] = result
            assert attempt.response.status == 200
            # Allowed: the data or the change is really there; refused: nothing happened.
            assert await attempt.succeeded() is (result == ALLOWED), (name, caller_name)
            if caller_name == "OUTSIDER" and name in SCOPED:
                missing = await operation(scenario, caller, missing_id("Organization"))
                assert attempt.response.body == missing.response.body, name
                assert await missing.succeeded() is False
    assert observed == ROLE_TABLE


async def test_cross_organization_targets_look_like_missing_ids(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    org_a, org_b = team.organization_id, team.other_organization_id
    stranger = team.outsider.user_id  # a real user, but not a member of A
    nobody = missing_id("User")

    for token in (team.owner.access_token, team.admin.access_token):
        # A user of another organization, inside my organization.
        foreign = await update_role(client, token, org_a, stranger, "EDITOR")
        absent = await update_role(client, token, org_a, nobody, "EDITOR")
        assert foreign.codes == ["NOT_FOUND"]
        assert foreign.body == absent.body
        foreign = await remove(client, token, org_a, stranger)
        absent = await remove(client, token, org_a, nobody)
        assert foreign.codes == ["NOT_FOUND"]
        assert foreign.body == absent.body

    # My role is OWNER in A, but B is not mine: B's members are as unknown as a missing org's.
    nowhere = missing_id("Organization")
    owner = team.owner.access_token
    pairs = [
        (
            await update_role(client, owner, org_b, stranger, "VIEWER"),
            await update_role(client, owner, nowhere, stranger, "VIEWER"),
        ),
        (
            await remove(client, owner, org_b, stranger),
            await remove(client, owner, nowhere, stranger),
        ),
        (
            await invite(client, owner, org_b, unique_email(), "OWNER"),
            await invite(client, owner, nowhere, unique_email(), "OWNER"),
        ),
    ]
    for foreign, absent in pairs:
        assert foreign.codes == ["NOT_FOUND"]
        assert foreign.body == absent.body
    # ... and an ID of the wrong type is just as unknown.
    wrong_type = await remove(client, owner, team.owner.user_id, stranger)
    assert wrong_type.body == pairs[1][1].body
    assert await member_roles(client, team.outsider.access_token, org_b) == {
        team.outsider.user_id: "OWNER"
    }


async def test_last_owner_can_never_be_demoted_or_removed(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    owner = team.owner

    for role in ("ADMIN", "EDITOR", "VIEWER"):
        response = await update_role(client, owner.access_token, org, owner.user_id, role)
        assert response.codes == ["CONFLICT"], response.body
    response = await remove(client, owner.access_token, org, owner.user_id)
    assert response.codes == ["CONFLICT"]
    assert (await member_roles(client, owner.access_token, org))[owner.user_id] == "OWNER"

    # With a second owner, one may step down; then the other is the last and is protected.
    promoted = await update_role(client, owner.access_token, org, team.admin.user_id, "OWNER")
    assert promoted.errors == []
    assert promoted.data["updateMemberRole"]["role"] == "OWNER"
    stepped_down = await update_role(client, owner.access_token, org, owner.user_id, "ADMIN")
    assert stepped_down.errors == []
    new_owner = team.admin
    assert (await remove(client, new_owner.access_token, org, new_owner.user_id)).codes == [
        "CONFLICT"
    ]
    demote = await update_role(client, new_owner.access_token, org, new_owner.user_id, "VIEWER")
    assert demote.codes == ["CONFLICT"]
    roles = await member_roles(client, new_owner.access_token, org)
    assert roles[new_owner.user_id] == "OWNER"
    assert roles[owner.user_id] == "ADMIN"
    assert list(roles.values()).count("OWNER") == 1

    # Two owners again: removing one owner works, the survivor is protected.
    assert (
        await update_role(client, new_owner.access_token, org, owner.user_id, "OWNER")
    ).errors == []
    assert (await remove(client, owner.access_token, org, new_owner.user_id)).data == {
        "removeMember": True
    }
    assert (await remove(client, owner.access_token, org, owner.user_id)).codes == ["CONFLICT"]
    roles = await member_roles(client, owner.access_token, org)
    assert new_owner.user_id not in roles
    assert roles[owner.user_id] == "OWNER"


async def test_admins_cannot_touch_owners(client: Client, server: RunningServer) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    admin = team.admin.access_token
    before = await member_roles(client, team.owner.access_token, org)

    owner_invite_email = unique_email("would-be-owner")
    refused = [
        await invite(client, admin, org, owner_invite_email, "OWNER"),
        await update_role(client, admin, org, team.owner.user_id, "ADMIN"),
        await update_role(client, admin, org, team.owner.user_id, "OWNER"),
        await update_role(client, admin, org, team.editor.user_id, "OWNER"),
        await update_role(client, admin, org, team.admin.user_id, "OWNER"),
        await remove(client, admin, org, team.owner.user_id),
    ]
    for response in refused:
        assert response.codes == ["FORBIDDEN"], response.body
    assert await member_roles(client, team.owner.access_token, org) == before
    invitations = await client.execute(
        "query($id: ID!) { organization(id: $id) { invitations { email } } }",
        {"id": org},
        token=team.owner.access_token,
    )
    assert owner_invite_email not in {
        i["email"] for i in invitations.data["organization"]["invitations"]
    }

    # A second owner is just as untouchable for an admin.
    assert (
        await update_role(client, team.owner.access_token, org, team.editor.user_id, "OWNER")
    ).errors == []
    assert (await update_role(client, admin, org, team.editor.user_id, "VIEWER")).codes == [
        "FORBIDDEN"
    ]
    assert (await remove(client, admin, org, team.editor.user_id)).codes == ["FORBIDDEN"]

    # Admins do manage everyone below owner, including other admins.
    assert (await update_role(client, admin, org, team.viewer.user_id, "ADMIN")).errors == []
    assert (await update_role(client, admin, org, team.viewer.user_id, "EDITOR")).errors == []
    assert (await remove(client, admin, org, team.viewer.user_id)).data == {"removeMember": True}

    # Owners may invite owners.
    newcomer = await quick_account(server)
    token = await invitation_token(client, team.owner.access_token, org, newcomer.email, "OWNER")
    joined = await accept(client, newcomer.access_token, token)
    assert joined.errors == []
    roles = await member_roles(client, team.owner.access_token, org)
    assert roles[newcomer.user_id] == "OWNER"
    assert roles[team.editor.user_id] == "OWNER"
    assert roles[team.owner.user_id] == "OWNER"
    assert team.viewer.user_id not in roles


async def _bogus_acceptance(client: Client, account: Account) -> Response:
    return await accept(client, account.access_token, "not-a-real-invitation-token")


async def test_invitation_token_works_once(client: Client, server: RunningServer) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    invitee = await quick_account(server)
    token = await invitation_token(client, team.owner.access_token, org, invitee.email, "EDITOR")

    first = await accept(client, invitee.access_token, token)
    assert first.errors == []
    assert first.data["acceptInvitation"]["organization"]["id"] == org
    assert first.data["acceptInvitation"]["role"] == "EDITOR"

    again = await accept(client, invitee.access_token, token)
    bogus = await _bogus_acceptance(client, invitee)
    assert again.codes == ["NOT_FOUND"]
    assert again.body == bogus.body

    # Removed, the old link does not bring them back.
    assert (await remove(client, team.owner.access_token, org, invitee.user_id)).errors == []
    replay = await accept(client, invitee.access_token, token)
    assert replay.body == bogus.body
    assert invitee.user_id not in await member_roles(client, team.owner.access_token, org)


async def test_expired_invitation_is_not_found(client: Client, server: RunningServer) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    invitee = await quick_account(server)
    invited = await invite(client, team.owner.access_token, org, invitee.email, "EDITOR")
    assert invited.errors == []
    token = invited.data["inviteMember"]["token"]
    invitation_id = raw_id(invited.data["inviteMember"]["invitation"]["id"], "Invitation")

    async with server.services.write() as session:
        row = await session.get(Invitation, invitation_id)
        assert row is not None
        await session.execute(
            update(Invitation)
            .where(Invitation.id == invitation_id)
            .values(expires_at=row.created_at - timedelta(minutes=1))
        )

    expired = await accept(client, invitee.access_token, token)
    bogus = await _bogus_acceptance(client, invitee)
    assert expired.codes == ["NOT_FOUND"]
    assert expired.body == bogus.body
    assert invitee.user_id not in await member_roles(client, team.owner.access_token, org)
    listed = await client.execute(
        "query($id: ID!) { organization(id: $id) { invitations { email } } }",
        {"id": org},
        token=team.owner.access_token,
    )
    assert invitee.email not in {i["email"] for i in listed.data["organization"]["invitations"]}


async def test_invitation_is_bound_to_the_invited_email(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    invitee_email = unique_email("invitee")
    token = await invitation_token(
        client, team.owner.access_token, org, invitee_email.upper(), "ADMIN"
    )

    # Someone else holding the link: exactly as if the token did not exist.
    thief = await quick_account(server)
    stolen = await accept(client, thief.access_token, token)
    assert stolen.codes == ["NOT_FOUND"]
    assert stolen.body == (await _bogus_acceptance(client, thief)).body
    assert thief.user_id not in await member_roles(client, team.owner.access_token, org)
    # An existing member of the organization cannot use it either.
    assert (await accept(client, team.viewer.access_token, token)).codes == ["NOT_FOUND"]
    signed_out = await accept(client, "", token)
    assert signed_out.codes == ["UNAUTHENTICATED"]

    # The invited person still can, with the role they were invited to.
    invitee = await sign_up(client, invitee_email)
    accepted = await accept(client, invitee.access_token, token)
    assert accepted.errors == [], accepted.body
    roles = await member_roles(client, team.owner.access_token, org)
    assert roles[invitee.user_id] == "ADMIN"
    assert roles[team.viewer.user_id] == "VIEWER"


async def test_invitation_token_is_stored_only_as_its_hash(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    email = unique_email("hashed")
    invited = await invite(client, team.owner.access_token, team.organization_id, email, "VIEWER")
    assert invited.errors == []
    token = invited.data["inviteMember"]["token"]
    assert len(token) >= 32
    invitation_id = raw_id(invited.data["inviteMember"]["invitation"]["id"], "Invitation")

    async with server.services.read() as session:
        stored = await session.scalar(
            select(Invitation.token_hash).where(Invitation.id == invitation_id)
        )
        raw_rows = (await session.execute(text("SELECT * FROM invitations"))).all()
        audit_rows = (await session.execute(text("SELECT * FROM audit_events"))).all()
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    dump = repr(raw_rows) + repr(audit_rows)
    assert token not in dump
    assert email in dump  # the dump is real: the invitation is in it

    # The token is shown once: listing the organization's invitations never repeats it.
    listed = await client.execute(
        "query($id: ID!) { organization(id: $id) { invitations { id email role expiresAt } } }",
        {"id": team.organization_id},
        token=team.owner.access_token,
    )
    assert listed.errors == []
    assert email in repr(listed.body)
    assert token not in repr(listed.body)


async def test_reinviting_replaces_the_pending_invitation(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    invitee = await quick_account(server)
    old = await invitation_token(client, team.owner.access_token, org, invitee.email, "ADMIN")
    new = await invitation_token(client, team.owner.access_token, org, invitee.email, "VIEWER")
    assert old != new
    assert (await accept(client, invitee.access_token, old)).codes == ["NOT_FOUND"]
    assert (await accept(client, invitee.access_token, new)).errors == []
    assert (await member_roles(client, team.owner.access_token, org))[invitee.user_id] == "VIEWER"
    # A member cannot be invited again.
    again = await invite(client, team.owner.access_token, org, invitee.email, "VIEWER")
    assert again.codes == ["CONFLICT"]


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    first, second = team.owner, team.admin
    assert (
        await update_role(client, first.access_token, org, second.user_id, "OWNER")
    ).errors == []

    results = await asyncio.gather(
        update_role(client, first.access_token, org, second.user_id, "ADMIN"),
        update_role(client, second.access_token, org, first.user_id, "ADMIN"),
    )
    codes = sorted(code for response in results for code in response.codes)
    # One of them loses: CONFLICT when both were owners as their requests began, FORBIDDEN
    # when the other's demotion had committed before the loser's request was identified.
    assert codes in (["CONFLICT"], ["FORBIDDEN"]), [r.body for r in results]
    roles = await member_roles(client, team.editor.access_token, org)
    assert [roles[first.user_id], roles[second.user_id]].count("OWNER") == 1


async def test_two_owners_removing_each_other_at_once_leave_one_owner(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    first, second = team.owner, team.admin
    assert (
        await update_role(client, first.access_token, org, second.user_id, "OWNER")
    ).errors == []

    results = await asyncio.gather(
        remove(client, first.access_token, org, second.user_id),
        remove(client, second.access_token, org, first.user_id),
    )
    codes = sorted(code for response in results for code in response.codes)
    # The loser hears CONFLICT, or NOT_FOUND when it had been removed before its request
    # was identified (it is no member any more).
    assert codes in (["CONFLICT"], ["NOT_FOUND"]), [r.body for r in results]
    roles = await member_roles(client, team.editor.access_token, org)
    assert list(roles.values()).count("OWNER") == 1


async def test_accepting_one_invitation_many_times_at_once_joins_once(
    client: Client, server: RunningServer
) -> None:
    team = await build_team(client, server)
    org = team.organization_id
    invitee = await quick_account(server)
    token = await invitation_token(client, team.owner.access_token, org, invitee.email, "EDITOR")

    results = await asyncio.gather(*(accept(client, invitee.access_token, token) for _ in range(4)))
    outcomes = sorted(outcome(response) for response in results)
    assert outcomes == [ALLOWED, NOT_FOUND, NOT_FOUND, NOT_FOUND], [r.body for r in results]
    assert (await member_roles(client, team.owner.access_token, org))[invitee.user_id] == "EDITOR"
