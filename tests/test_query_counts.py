"""N+1 guard: the SQL statements of a query do not grow with the length of its lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest_asyncio

from tests.conftest import Account, Client, RunningServer, count_statements, set_tier
from tests.org_helpers import (
    CREATE_ORGANIZATION,
    accept,
    add_member,
    invitation_token,
    quick_account,
)

MEMBERS_DEEP = """
query($id: ID!, $first: Int!) {
  organization(id: $id) {
    id
    members(first: $first) {
      edges { node { role createdAt user { id email } organization { id name } } }
    }
  }
}
"""

AUDIT_DEEP = """
query($id: ID!) {
  organization(id: $id) {
    auditLog(first: 100) {
      edges { node { id action targetType targetId ip actor { id email displayName } } }
    }
  }
}
"""

MY_MEMBERSHIPS = "{ me { user { id } memberships { role organization { id name } user { id } } } }"


async def organization_with(
    client: Client, server: RunningServer, members: int
) -> tuple[Account, str]:
    """An Enterprise organization of ``members`` members (owner included), joined by invitation."""
    owner = await quick_account(server, organization=f"{members} members")
    await set_tier(server, owner.organization_id, "ENTERPRISE")
    for index in range(members - 1):
        await add_member(
            client, server, owner, owner.organization_id, ("ADMIN", "VIEWER")[index % 2]
        )
    return owner, owner.organization_id


async def statements_for(
    client: Client, server: RunningServer, query: str, variables: dict[str, Any], token: str
) -> tuple[int, Any]:
    # Warm up once: a fresh connection may run one-off setup queries.
    warm = await client.execute(query, variables, token=token)
    assert warm.errors == [], warm.errors
    with count_statements(server) as counter:
        response = await client.execute(query, variables, token=token)
    assert response.errors == [], response.errors
    return counter.count, response.data


@dataclass
class SmallAndLarge:
    small_owner: Account
    small: str
    large_owner: Account
    large: str


@pytest_asyncio.fixture(scope="module")
async def orgs(server: RunningServer, http: aiohttp.ClientSession) -> SmallAndLarge:
    """Organizations of 3 and 30 members, built once per backend for this module."""
    client = Client(http, server.base_url)
    small_owner, small = await organization_with(client, server, 3)
    large_owner, large = await organization_with(client, server, 30)
    return SmallAndLarge(small_owner, small, large_owner, large)


async def test_member_list_costs_the_same_for_3_and_30(
    client: Client, server: RunningServer, orgs: SmallAndLarge
) -> None:
    small_owner, small, large_owner, large = (
        orgs.small_owner,
        orgs.small,
        orgs.large_owner,
        orgs.large,
    )

    small_count, small_data = await statements_for(
        client, server, MEMBERS_DEEP, {"id": small, "first": 50}, small_owner.access_token
    )
    large_count, large_data = await statements_for(
        client, server, MEMBERS_DEEP, {"id": large, "first": 50}, large_owner.access_token
    )
    small_edges = small_data["organization"]["members"]["edges"]
    large_edges = large_data["organization"]["members"]["edges"]
    assert len(small_edges) == 3
    assert len(large_edges) == 30
    assert len({edge["node"]["user"]["email"] for edge in large_edges}) == 30
    assert {edge["node"]["organization"]["id"] for edge in large_edges} == {large}
    assert large_count == small_count, (small_count, large_count)


async def test_audit_log_with_actors_costs_the_same_for_few_and_many(
    client: Client, server: RunningServer, orgs: SmallAndLarge
) -> None:
    small_owner, small, large_owner, large = (
        orgs.small_owner,
        orgs.small,
        orgs.large_owner,
        orgs.large,
    )

    small_count, small_data = await statements_for(
        client, server, AUDIT_DEEP, {"id": small}, small_owner.access_token
    )
    large_count, large_data = await statements_for(
        client, server, AUDIT_DEEP, {"id": large}, large_owner.access_token
    )
    small_edges = small_data["organization"]["auditLog"]["edges"]
    large_edges = large_data["organization"]["auditLog"]["edges"]
    assert len(small_edges) == 2 * 2  # an invitation and an acceptance per member
    assert len(large_edges) == 29 * 2
    # Every member accepted their own invitation: 30 distinct actors (owner included).
    assert len({edge["node"]["actor"]["id"] for edge in large_edges}) == 30
    assert large_count == small_count, (small_count, large_count)


async def test_my_memberships_cost_the_same_for_one_and_many(
    client: Client, server: RunningServer
) -> None:
    loner = await quick_account(server)
    busy = await quick_account(server)
    for index in range(6):
        created = await client.execute(
            CREATE_ORGANIZATION, {"name": f"Busy {index}"}, token=busy.access_token
        )
        assert created.errors == []
    # ... and a member (not owner) of someone else's organization.
    other = await quick_account(server)
    await set_tier(server, other.organization_id, "PROFESSIONAL")
    token = await invitation_token(client, other.access_token, other.organization_id, busy.email)
    assert (await accept(client, busy.access_token, token)).errors == []

    one_count, one_data = await statements_for(
        client, server, MY_MEMBERSHIPS, {}, loner.access_token
    )
    many_count, many_data = await statements_for(
        client, server, MY_MEMBERSHIPS, {}, busy.access_token
    )
    assert len(one_data["me"]["memberships"]) == 1
    memberships = many_data["me"]["memberships"]
    assert len(memberships) == 8
    assert len({m["organization"]["id"] for m in memberships}) == 8
    assert {m["user"]["id"] for m in memberships} == {busy.user_id}
    assert sorted(m["role"] for m in memberships) == ["OWNER"] * 7 + ["VIEWER"]
    assert many_count == one_count, (one_count, many_count)
