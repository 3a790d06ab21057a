"""N+1 guard for agents, manifests and projects: one item or fifty, the same SQL statements.

Each organization gets its rows straight in the database (fifty agents over HTTP
would make the module slow without testing anything more); the queries under
test go over HTTP as the dashboard sends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest_asyncio

from kindrobots.db.models import (
    Agent,
    AgentManifest,
    LlmCredential,
    Manifest,
    ManifestVersion,
    Project,
)
from kindrobots.ids import from_global_id
from kindrobots.resolvers.credentials import associated_data
from kindrobots.resolvers.projects import new_publishable_key
from tests.conftest import Account, Client, RunningServer, count_statements, sign_up

AGENTS = """
query($id: ID!) {
  organization(id: $id) {
    agents(first: 50) {
      edges {
        node {
          id name model temperature
          llmCredential { id provider label keyHint }
          manifests { id name version sourceUrl }
        }
      }
    }
  }
}
"""
MANIFESTS = """
query($id: ID!) {
  organization(id: $id) {
    manifests(first: 50) {
      edges { node { id name version sourceUrl operations { operationId method path summary } } }
    }
  }
}
"""
PROJECTS = """
query($id: ID!) {
  organization(id: $id) {
    projects(first: 50) {
      edges {
        node {
          id name publishableKey
          agent {
            id name
            llmCredential { id keyHint }
            manifests { id name version }
          }
        }
      }
    }
  }
}
"""

MANIFESTS_PER_AGENT = 2


def operations(name: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "operationId": f"{name}_{index}",
            "method": "get",
            "path": f"/{name}/{index}",
            "summary": None,
            "parameters": {"type": "object", "properties": {}},
            "locations": {},
        }
        for index in range(count)
    ]


async def organization_of(server: RunningServer, owner: Account, size: int) -> None:
    """``size`` agents, manifests and projects; every agent has a credential and two
    manifests (of several versions each), every project its own agent."""
    organization_id = from_global_id(owner.organization_id, "Organization")
    keyring = server.services.keyring
    start = datetime.now(UTC)
    async with server.services.write() as session:
        credentials = []
        for index in range(2):
            credential = LlmCredential(
                organization_id=organization_id,
                provider="OPENAI",
                label=f"key {index}",
                key_id="",
                nonce=b"",
                ciphertext=b"",
                key_hint=f"{index:04d}",
                created_at=start,
            )
            session.add(credential)
            await session.flush()
            sealed = keyring.seal(
                f"kr-key-{index}", associated_data(organization_id, credential.id)
            )
            credential.key_id, credential.nonce = sealed.key_id, sealed.nonce
            credential.ciphertext = sealed.ciphertext
            credentials.append(credential)
        manifests = []
        for index in range(max(size, MANIFESTS_PER_AGENT)):
            manifest = Manifest(
                organization_id=organization_id,
                name=f"tools {index}",
                version=2,
                created_at=start + timedelta(seconds=index),
                updated_at=start,
            )
            session.add(manifest)
            await session.flush()
            for version in (1, 2):
                session.add(
                    ManifestVersion(
                        manifest_id=manifest.id,
                        organization_id=organization_id,
                        version=version,
                        source_url=f"https://api.example.com/v{version}.json",
                        servers=["https://api.example.com"],
                        operations=operations(f"m{index}v{version}", 1 + version),
                        created_at=start,
                    )
                )
            manifests.append(manifest)
        for index in range(size):
            agent = Agent(
                organization_id=organization_id,
                name=f"agent {index}",
                system_prompt="",
                model="gpt-4o",
                temperature=0.5,
                llm_credential_id=credentials[index % 2].id,
                created_at=start + timedelta(seconds=index),
                updated_at=start,
            )
            session.add(agent)
            await session.flush()
            session.add_all(
                AgentManifest(
                    agent_id=agent.id,
                    manifest_id=manifests[(index + offset) % len(manifests)].id,
                    organization_id=organization_id,
                    position=offset,
                )
                for offset in range(MANIFESTS_PER_AGENT)
            )
            session.add(
                Project(
                    organization_id=organization_id,
                    name=f"site {index}",
                    agent_id=agent.id,
                    publishable_key=new_publishable_key(),
                    allowed_origins=["https://shop.example.com"],
                    access_mode="PUBLIC",
                    created_at=start + timedelta(seconds=index),
                    updated_at=start,
                )
            )


@dataclass
class OneAndFifty:
    one: Account
    fifty: Account


@pytest_asyncio.fixture(scope="module")
async def orgs(server: RunningServer, http: aiohttp.ClientSession) -> OneAndFifty:
    client = Client(http, server.base_url)
    one, fifty = (
        await sign_up(client, organization="One"),
        await sign_up(client, organization="Fifty"),
    )
    await organization_of(server, one, 1)
    await organization_of(server, fifty, 50)
    return OneAndFifty(one, fifty)


async def statements(
    client: Client, server: RunningServer, query: str, owner: Account
) -> tuple[int, list[dict[str, Any]], list[str]]:
    """SQL statements of one run (after a warm-up run), and the nodes it answered."""
    variables = {"id": owner.organization_id}
    warm = await client.execute(query, variables, token=owner.access_token)
    assert warm.errors == [], warm.errors
    with count_statements(server) as counter:
        response = await client.execute(query, variables, token=owner.access_token)
    assert response.errors == [], response.errors
    (connection,) = response.data["organization"].values()
    return counter.count, [edge["node"] for edge in connection["edges"]], counter.statements


def assert_same(small: tuple[int, Any, list[str]], large: tuple[int, Any, list[str]]) -> None:
    assert small[0] == large[0], "\n".join(["--- one", *small[2], "--- fifty", *large[2]])


async def test_agents_with_credential_and_manifests_cost_the_same_for_1_and_50(
    client: Client, server: RunningServer, orgs: OneAndFifty
) -> None:
    small = await statements(client, server, AGENTS, orgs.one)
    large = await statements(client, server, AGENTS, orgs.fifty)
    assert len(small[1]) == 1 and len(large[1]) == 50
    for agent in large[1]:
        assert agent["llmCredential"]["keyHint"] in ("…0000", "…0001")
        assert len(agent["manifests"]) == MANIFESTS_PER_AGENT
        for manifest in agent["manifests"]:
            # The newest version, not the first one.
            assert manifest["version"] == 2
            assert manifest["sourceUrl"] == "https://api.example.com/v2.json"
    assert len({agent["llmCredential"]["id"] for agent in large[1]}) == 2
    assert_same(small, large)


async def test_manifests_with_operations_cost_the_same_for_few_and_50(
    client: Client, server: RunningServer, orgs: OneAndFifty
) -> None:
    small = await statements(client, server, MANIFESTS, orgs.one)
    large = await statements(client, server, MANIFESTS, orgs.fifty)
    assert len(small[1]) == MANIFESTS_PER_AGENT and len(large[1]) == 50
    for manifest in large[1]:
        # The newest version's operations, not the first version's.
        assert [op["operationId"][-4:] for op in manifest["operations"]] == ["v2_0", "v2_1", "v2_2"]
    assert_same(small, large)


async def test_projects_with_agent_credential_and_manifests_cost_the_same_for_1_and_50(
    client: Client, server: RunningServer, orgs: OneAndFifty
) -> None:
    small = await statements(client, server, PROJECTS, orgs.one)
    large = await statements(client, server, PROJECTS, orgs.fifty)
    assert len(small[1]) == 1 and len(large[1]) == 50
    assert len({project["agent"]["id"] for project in large[1]}) == 50
    for project in large[1]:
        assert project["agent"]["llmCredential"] is not None
        assert len(project["agent"]["manifests"]) == MANIFESTS_PER_AGENT
        assert all(m["version"] == 2 for m in project["agent"]["manifests"])
    assert_same(small, large)


UPDATE_AGENT = """
mutation($input: UpdateAgentInput!) { updateAgent(input: $input) { id name temperature } }
"""


async def test_update_agent_costs_at_most_six_statements(
    client: Client, server: RunningServer
) -> None:
    """The caller's session, the agent's organization, the lock with the agent and the
    audit head, the update, the audit event and the new head: six, on both databases."""
    account = await sign_up(client)
    created = await client.execute(
        "mutation($input: CreateAgentInput!) { createAgent(input: $input) { id } }",
        {"input": {"organizationId": account.organization_id, "name": "A", "model": "gpt-4o"}},
        token=account.access_token,
    )
    agent_id = created.data["createAgent"]["id"]
    for name in ("B", "C"):
        with count_statements(server) as counter:
            response = await client.execute(
                UPDATE_AGENT,
                {"input": {"id": agent_id, "name": name, "temperature": 0.2}},
                token=account.access_token,
            )
        assert response.errors == [], response.errors
        assert response.data["updateAgent"]["name"] == name
        assert counter.count <= 6, counter.statements
        assert counter.transactions <= 3, counter.transactions
