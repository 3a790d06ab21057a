"""Seats per tier: memberships plus pending invitations; beyond the plan, PAYMENT_REQUIRED."""

from __future__ import annotations

import asyncio

from sqlalchemy import update

from kindrobots.db.models import Invitation
from kindrobots.ids import from_global_id
from tests.conftest import Account, Client, RunningServer, set_tier, sign_up, unique_email
from tests.org_helpers import (
    MEMBERS,
    accept,
    add_member,
    audit_events,
    invitation_token,
    invite,
    member_roles,
    quick_account,
    remove,
)

PENDING = "query($id: ID!) { organization(id: $id) { invitations { email role } } }"


async def pending_emails(client: Client, owner: Account) -> list[str]:
    response = await client.execute(
        PENDING, {"id": owner.organization_id}, token=owner.access_token
    )
    assert response.errors == [], response.errors
    return [item["email"] for item in response.data["organization"]["invitations"]]


async def test_plans_state_the_seat_limits(client: Client) -> None:
    response = await client.execute("{ plans { tier name adminSeats } }")
    assert response.errors == []
    seats = {plan["tier"]: plan["adminSeats"] for plan in response.data["plans"]}
    assert seats == {"STARTER": 1, "PROFESSIONAL": 5, "ENTERPRISE": None}


async def test_starter_cannot_fill_seats_beyond_one(client: Client, server: RunningServer) -> None:
    owner = await sign_up(client)
    tier = await client.execute(
        "query($id: ID!) { organization(id: $id) { tier } }",
        {"id": owner.organization_id},
        token=owner.access_token,
    )
    assert tier.data == {"organization": {"tier": "STARTER"}}

    for role in ("VIEWER", "EDITOR", "ADMIN", "OWNER"):
        response = await invite(
            client, owner.access_token, owner.organization_id, unique_email(), role
        )
        assert response.codes == ["PAYMENT_REQUIRED"], response.body
        assert response.data is None

    assert await member_roles(client, owner.access_token, owner.organization_id) == {
        owner.user_id: "OWNER"
    }
    assert await pending_emails(client, owner) == []
    assert (
        await audit_events(client, owner.access_token, owner.organization_id, "member.invite") == []
    )


async def test_professional_takes_five_and_refuses_the_sixth(
    client: Client, server: RunningServer
) -> None:
    owner = await sign_up(client)
    await set_tier(server, owner.organization_id, "PROFESSIONAL")
    for role in ("ADMIN", "EDITOR", "VIEWER", "VIEWER"):
        await add_member(client, server, owner, owner.organization_id, role)
    assert len(await member_roles(client, owner.access_token, owner.organization_id)) == 5

    sixth = unique_email("sixth")
    refused = await invite(client, owner.access_token, owner.organization_id, sixth)
    assert refused.codes == ["PAYMENT_REQUIRED"]
    assert len(await member_roles(client, owner.access_token, owner.organization_id)) == 5
    assert await pending_emails(client, owner) == []

    # Upgrading makes room at once.
    await set_tier(server, owner.organization_id, "ENTERPRISE")
    assert (await invite(client, owner.access_token, owner.organization_id, sixth)).errors == []
    assert await pending_emails(client, owner) == [sixth]


async def test_pending_invitations_count_as_seats(client: Client, server: RunningServer) -> None:
    owner = await sign_up(client)
    org = owner.organization_id
    await set_tier(server, org, "PROFESSIONAL")
    member = await add_member(client, server, owner, org, "EDITOR")
    pending = [unique_email("pending") for _ in range(3)]
    tokens = [await invitation_token(client, owner.access_token, org, email) for email in pending]
    # 2 members + 3 pending = 5 seats.
    assert (await invite(client, owner.access_token, org, unique_email())).codes == [
        "PAYMENT_REQUIRED"
    ]
    assert sorted(await pending_emails(client, owner)) == sorted(pending)

    # Inviting a pending address again replaces its invitation and takes no extra seat.
    reinvited = await invite(client, owner.access_token, org, pending[0], "ADMIN")
    assert reinvited.errors == [], reinvited.body

    # Accepting moves a seat from pending to member: still full.
    joiner = await quick_account(server, pending[1])
    assert (await accept(client, joiner.access_token, tokens[1])).errors == []
    assert (await invite(client, owner.access_token, org, unique_email())).codes == [
        "PAYMENT_REQUIRED"
    ]

    # An expired invitation frees its seat.
    async with server.services.write() as session:
        await session.execute(
            update(Invitation)
            .where(
                Invitation.organization_id == from_global_id(org, "Organization"),
                Invitation.email == pending[2],
            )
            .values(expires_at=Invitation.created_at)
        )
    assert (
        await invite(client, owner.access_token, org, unique_email("after-expiry"))
    ).errors == []
    assert (await invite(client, owner.access_token, org, unique_email())).codes == [
        "PAYMENT_REQUIRED"
    ]

    # So does a removed member.
    assert (await remove(client, owner.access_token, org, member.user_id)).errors == []
    assert (
        await invite(client, owner.access_token, org, unique_email("after-removal"))
    ).errors == []
    roles = await member_roles(client, owner.access_token, org)
    assert len(roles) + len(await pending_emails(client, owner)) == 5


async def test_acceptance_beyond_the_limit_after_a_downgrade_is_refused(
    client: Client, server: RunningServer
) -> None:
    owner = await sign_up(client)
    org = owner.organization_id
    await set_tier(server, org, "PROFESSIONAL")
    invitee = await quick_account(server)
    token = await invitation_token(client, owner.access_token, org, invitee.email)
    await set_tier(server, org, "STARTER")

    refused = await accept(client, invitee.access_token, token)
    assert refused.codes == ["PAYMENT_REQUIRED"]
    assert await member_roles(client, owner.access_token, org) == {owner.user_id: "OWNER"}
    # The invitation is not spent: after an upgrade it still works.
    await set_tier(server, org, "PROFESSIONAL")
    assert (await accept(client, invitee.access_token, token)).errors == []
    assert set(await member_roles(client, owner.access_token, org)) == {
        owner.user_id,
        invitee.user_id,
    }


async def test_concurrent_invitations_never_exceed_the_seats(
    client: Client, server: RunningServer
) -> None:
    owner = await sign_up(client)
    await set_tier(server, owner.organization_id, "PROFESSIONAL")
    responses = await asyncio.gather(
        *(
            invite(client, owner.access_token, owner.organization_id, unique_email("rush"))
            for _ in range(8)
        )
    )
    codes = sorted(code for response in responses for code in response.codes)
    assert codes == ["PAYMENT_REQUIRED"] * 4
    assert len(await pending_emails(client, owner)) == 4


async def test_enterprise_takes_fifty(client: Client, server: RunningServer) -> None:
    owner = await sign_up(client)
    org = owner.organization_id
    await set_tier(server, org, "ENTERPRISE")
    roles = ("ADMIN", "EDITOR", "VIEWER")
    for index in range(49):
        await add_member(client, server, owner, org, roles[index % 3])

    seen: dict[str, str] = {}
    after: str | None = None
    while True:
        page = await client.execute(
            MEMBERS, {"id": org, "first": 20, "after": after}, token=owner.access_token
        )
        assert page.errors == [], page.errors
        connection = page.data["organization"]["members"]
        seen.update({e["node"]["user"]["id"]: e["node"]["role"] for e in connection["edges"]})
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert len(seen) == 50
    too_many = await client.execute(MEMBERS, {"id": org, "first": 101}, token=owner.access_token)
    assert too_many.codes == ["BAD_USER_INPUT"]
    assert too_many.errors[0]["extensions"]["field"] == "first"
    assert sorted(seen.values()).count("OWNER") == 1
    assert sorted(seen.values()).count("ADMIN") == 17
    # ... and still takes more.
    assert (await invite(client, owner.access_token, org, unique_email("fifty-first"))).errors == []
