"""The dashboard page: a page of agents with their credential, manifests and operations.

Its plain fields are completed in one walk and its children preloaded for the whole page
(kindrobots.schema.plain); these tests hold that to the answers of graphql-core's own
execution with per-item loaders, for many selections and roles, and to statement
counts that do not grow with the page. Also: an agent's tools are bounded, so that the
default cost limit can admit the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from kindrobots.db.bounds import MAX_OPERATIONS_PER_AGENT
from kindrobots.db.enums import Role
from kindrobots.db.models import Membership
from kindrobots.ids import from_global_id
from kindrobots.schema import organizations as organization_types
from kindrobots.schema.plain import PlainExecutionContext
from tests.conftest import Account, Client, RunningServer, count_statements, sign_up
from tests.test_manifests import CREATE_AGENT, create_manifest, created, many_operations
from tests.test_query_counts_agents import MANIFESTS_PER_AGENT, organization_of

PAGE = """
query Page($id: ID!) {
  organization(id: $id) {
    id name
    agents(first: 50) {
      edges {
        cursor
        node {
          id name model temperature systemPrompt createdAt updatedAt
          llmCredential { id provider label keyHint baseUrl createdAt }
          manifests {
            id name version createdAt sourceUrl
            operations { operationId method path summary parameters }
          }
        }
      }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}
"""
# Aliases, __typename, named and inline fragments, a field asked for twice.
SHAPES = """
query Shapes($id: ID!) {
  org: organization(id: $id) {
    __typename
    list: agents(first: 50) {
      __typename
      edges {
        node {
          __typename
          ...AgentCard
          again: name
          key: llmCredential { __typename label ... on LlmCredential { hint: keyHint } }
          tools: manifests { ...ManifestTools __typename }
        }
      }
    }
  }
}
fragment AgentCard on Agent { id name llmCredential { id provider } }
fragment ManifestTools on Manifest {
  title: name
  operations { id: operationId method ... on ManifestOperation { path } }
}
"""
CONDITIONAL = """
query Conditional($id: ID!, $credential: Boolean!, $operations: Boolean!) {
  organization(id: $id) {
    agents(first: 50) {
      edges {
        node {
          name
          llmCredential @include(if: $credential) { label }
          manifests { name operations @skip(if: $operations) { operationId } }
        }
      }
    }
  }
}
"""
MANIFESTS = """
query Manifests($id: ID!) {
  organization(id: $id) {
    manifests(first: 50) {
      edges { node { id name version sourceUrl operations { operationId path parameters } } }
    }
  }
}
"""
# Agents reached without a page above them: the resolvers load their children.
AGENT_NODE = """
query Agent($id: ID!) {
  node(id: $id) {
    ... on Agent {
      name
      llmCredential { label keyHint }
      manifests { name operations { operationId } }
    }
  }
}
"""
SELECTIONS = {
    "page": (PAGE, {}),
    "shapes": (SHAPES, {}),
    "conditional-all": (CONDITIONAL, {"credential": True, "operations": False}),
    "conditional-none": (CONDITIONAL, {"credential": False, "operations": True}),
    "manifests": (MANIFESTS, {}),
}


@dataclass
class Members:
    """An organization of 50 agents and its members, by role; and one of a single agent."""

    owner: Account
    editor: Account
    viewer: Account
    one: Account
    agent_id: str


@pytest_asyncio.fixture(scope="module")
async def members(server: RunningServer, http: aiohttp.ClientSession) -> Members:
    client = Client(http, server.base_url)
    owner = await sign_up(client, organization="Fifty")
    one = await sign_up(client, organization="One")
    await organization_of(server, owner, 50)
    await organization_of(server, one, 1)
    editor, viewer = await sign_up(client), await sign_up(client)
    organization_id = from_global_id(owner.organization_id, "Organization")
    async with server.services.write() as session:
        for account, role in ((editor, Role.EDITOR), (viewer, Role.VIEWER)):
            session.add(
                Membership(
                    organization_id=organization_id,
                    user_id=from_global_id(account.user_id, "User"),
                    role=role.value,
                )
            )
    page = await client.execute(PAGE, {"id": owner.organization_id}, token=owner.access_token)
    assert page.errors == [], page.errors
    agent_id = page.data["organization"]["agents"]["edges"][0]["node"]["id"]
    return Members(owner, editor, viewer, one, agent_id)


def answer(response: Any) -> str:
    """The whole answer, data and errors with their paths, in a canonical form. Errors as
    a set: their order follows when concurrent resolvers finish, in either execution."""
    errors = sorted(json.dumps(error, sort_keys=True) for error in response.errors)
    return json.dumps({"data": response.data, "errors": errors}, sort_keys=True)


def per_item(monkeypatch: pytest.MonkeyPatch) -> None:
    """Execution as before: every field through graphql-core, children by loaders."""
    monkeypatch.setattr(
        PlainExecutionContext,
        "execute_field",
        StrawberryGraphQLCoreExecutionContext.execute_field,
    )

    async def no_preload(*_args: Any) -> None:
        return None

    monkeypatch.setattr(organization_types, "preload_agents", no_preload)
    monkeypatch.setattr(organization_types, "preload_versions", lambda *_args: None)


@pytest.mark.parametrize("role", ["owner", "editor", "viewer"])
@pytest.mark.parametrize("selection", list(SELECTIONS))
async def test_the_page_answers_exactly_as_per_item_execution(
    client: Client,
    members: Members,
    monkeypatch: pytest.MonkeyPatch,
    selection: str,
    role: str,
) -> None:
    document, extra = SELECTIONS[selection]
    account: Account = getattr(members, role)
    variables = {"id": members.owner.organization_id, **extra}
    fast = await client.execute(document, variables, token=account.access_token)
    with monkeypatch.context() as patch:
        per_item(patch)
        before = await client.execute(document, variables, token=account.access_token)
    assert answer(fast) == answer(before)
    (organization,) = fast.data.values()
    (connection,) = (value for value in organization.values() if isinstance(value, dict))
    assert len(connection["edges"]) == 50
    # Credentials are for EDITORs, their key hints and URLs for ADMINs: refused per agent.
    hints = selection in ("page", "shapes")
    refused = (role == "viewer" and (hints or extra.get("credential"))) or (
        role == "editor" and hints
    )
    if refused:
        assert {error["extensions"]["code"] for error in fast.errors} == {"FORBIDDEN"}
        assert len(fast.errors) >= 50
    else:
        assert fast.errors == []


async def test_an_agent_reached_alone_loads_its_children(
    client: Client, members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = members.owner.access_token
    fast = await client.execute(AGENT_NODE, {"id": members.agent_id}, token=token)
    with monkeypatch.context() as patch:
        per_item(patch)
        before = await client.execute(AGENT_NODE, {"id": members.agent_id}, token=token)
    assert fast.errors == [] and answer(fast) == answer(before)
    assert len(fast.data["node"]["manifests"]) == MANIFESTS_PER_AGENT
    # Outsiders see no agent, exactly as before.
    outsider = await client.execute(
        AGENT_NODE, {"id": members.agent_id}, token=members.one.access_token
    )
    assert outsider.data == {"node": None} or outsider.codes == ["NOT_FOUND"]


async def test_the_page_costs_the_same_statements_for_1_and_50_agents(
    client: Client, server: RunningServer, members: Members
) -> None:
    counts = []
    for account in (members.one, members.owner):
        variables = {"id": account.organization_id}
        await client.execute(PAGE, variables, token=account.access_token)
        with count_statements(server) as counter:
            response = await client.execute(PAGE, variables, token=account.access_token)
        assert response.errors == [], response.errors
        counts.append(counter.statements)
    one, fifty = counts
    # The caller, the organization, the page, and one statement per level below it:
    # manifests, their newest versions, credentials.
    assert len(one) == len(fifty) == 6, "\n".join(["--- one", *one, "--- fifty", *fifty])
    # Only the columns the types show: never a credential's key material.
    assert not any("ciphertext" in statement or "nonce" in statement for statement in fifty)


async def test_a_viewer_s_page_reads_no_credentials(
    client: Client, server: RunningServer, members: Members
) -> None:
    variables = {"id": members.owner.organization_id}
    with count_statements(server) as counter:
        response = await client.execute(PAGE, variables, token=members.viewer.access_token)
    assert {error["extensions"]["code"] for error in response.errors} == {"FORBIDDEN"}
    assert not any("llm_credentials" in statement for statement in counter.statements)


async def test_an_agent_calls_at_most_its_tools(client: Client) -> None:
    account = await sign_up(client)
    half = MAX_OPERATIONS_PER_AGENT // 2
    first = await created(client, account, "first", many_operations(half))
    second = await created(client, account, "second", many_operations(half + 1))
    small = await created(client, account, "small", many_operations(half - 1))

    async def create_agent(*manifests: dict[str, Any]) -> Any:
        return await client.execute(
            CREATE_AGENT,
            {
                "input": {
                    "organizationId": account.organization_id,
                    "name": "agent",
                    "model": "gpt-4o",
                    "manifestIds": [manifest["id"] for manifest in manifests],
                }
            },
            token=account.access_token,
        )

    refused = await create_agent(first, second)
    assert refused.codes == ["BAD_USER_INPUT"], refused.errors
    assert refused.errors[0]["extensions"]["field"] == "manifestIds"
    assert f"at most {MAX_OPERATIONS_PER_AGENT} operations" in refused.errors[0]["message"]
    fits = await create_agent(first, small)
    assert fits.errors == [], fits.errors
    # A new version that would take the agent past its tools is refused, and the
    # manifest stays at its version; one that fits is a new version as ever.
    grown = await create_manifest(client, account, "small", many_operations(half + 1))
    assert grown.codes == ["BAD_USER_INPUT"], grown.errors
    assert grown.data is None
    fitting = await create_manifest(client, account, "small", many_operations(half))
    assert fitting.errors == [], fitting.errors
    assert fitting.data["createManifest"]["version"] == 2
