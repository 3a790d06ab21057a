"""Tenancy: another organization's credentials, agents, manifests and projects do not exist.

A member of organization B asks for, changes, attaches and deletes organization
A's objects by ID, by ``node`` and through agents and projects of B. Every answer
must be NOT_FOUND (``node``: null without an error, per API.md) and byte-for-byte the
answer for a random ID of the same type, so that nothing tells "someone else's" from
"nobody's".
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest_asyncio

from kindrobots.ids import to_global_id
from tests.conftest import Account, Client, Response, RunningServer, sign_up

OPENAPI = json.dumps(
    {
        "openapi": "3.1.0",
        "info": {"title": "Orders", "version": "1"},
        "servers": [{"url": "https://api.example.com"}],
        "paths": {
            "/orders/{id}": {
                "get": {
                    "operationId": "getOrder",
                    "summary": "One order",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                }
            }
        },
    }
)

ADD_CREDENTIAL = """
mutation($input: AddLlmCredentialInput!) { addLlmCredential(input: $input) { id } }
"""
CREATE_MANIFEST = """
mutation($input: CreateManifestInput!) { createManifest(input: $input) { id name version } }
"""
IMPORT_MANIFEST = """
mutation($input: ImportManifestInput!) { importManifest(input: $input) { id } }
"""
CREATE_AGENT = """
mutation($input: CreateAgentInput!) {
  createAgent(input: $input) { id llmCredential { id } manifests { id } }
}
"""
UPDATE_AGENT = """
mutation($input: UpdateAgentInput!) {
  updateAgent(input: $input) { id name llmCredential { id } manifests { id } }
}
"""
CREATE_PROJECT = """
mutation($input: CreateProjectInput!) { createProject(input: $input) { id agent { id } } }
"""
UPDATE_PROJECT = """
mutation($input: UpdateProjectInput!) {
  updateProject(input: $input) { id name agent { id } allowedOrigins }
}
"""
ROTATE_KEY = "mutation($id: ID!) { rotateProjectKey(id: $id) { id publishableKey } }"
DELETE = {
    "LlmCredential": "mutation($id: ID!) { deleteLlmCredential(id: $id) }",
    "Agent": "mutation($id: ID!) { deleteAgent(id: $id) }",
    "Manifest": "mutation($id: ID!) { deleteManifest(id: $id) }",
    "Project": "mutation($id: ID!) { deleteProject(id: $id) }",
}
NODE = """
query($id: ID!) {
  node(id: $id) {
    __typename id
    ... on LlmCredential { label keyHint }
    ... on Agent { name llmCredential { id keyHint } manifests { id operations { operationId } } }
    ... on Manifest { name version operations { operationId path } }
    ... on Project { name publishableKey agent { id llmCredential { id } manifests { id } } }
  }
}
"""
ORGANIZATION = """
query($id: ID!) {
  organization(id: $id) {
    id
    llmCredentials { id label keyHint }
    manifests(first: 100) { edges { node { id name version } } }
    agents(first: 100) {
      edges { node { id name llmCredential { id } manifests { id } } }
    }
    projects(first: 100) {
      edges { node { id name publishableKey allowedOrigins agent { id } } }
    }
    auditLog(first: 100) { edges { node { id action } } }
  }
}
"""


@dataclass
class Tenant:
    owner: Account
    organization_id: str
    credential_id: str
    manifest_id: str
    agent_id: str
    project_id: str

    @property
    def token(self) -> str:
        return self.owner.access_token

    def ids(self) -> dict[str, str]:
        return {
            "LlmCredential": self.credential_id,
            "Manifest": self.manifest_id,
            "Agent": self.agent_id,
            "Project": self.project_id,
        }


@dataclass
class World:
    a: Tenant
    b: Tenant


def missing(type_name: str) -> str:
    """A well-formed ID of ``type_name`` that names nothing."""
    return to_global_id(type_name, uuid.uuid4())


async def ok(client: Client, query: str, variables: dict[str, Any], token: str) -> Any:
    response = await client.execute(query, variables, token=token)
    assert response.errors == [], response.errors
    return response.data


async def tenant(client: Client, name: str) -> Tenant:
    """An organization with one of everything: a project on an agent with a credential and
    a manifest."""
    owner = await sign_up(client, organization=name)
    org, token = owner.organization_id, owner.access_token
    credential = await ok(
        client,
        ADD_CREDENTIAL,
        {
            "input": {
                "organizationId": org,
                "provider": "OPENAI",
                "apiKey": f"kr-{uuid.uuid4().hex}",
                "label": f"{name} key",
            }
        },
        token,
    )
    manifest = await ok(
        client,
        CREATE_MANIFEST,
        {"input": {"organizationId": org, "name": "Orders", "openapi": OPENAPI}},
        token,
    )
    credential_id = credential["addLlmCredential"]["id"]
    manifest_id = manifest["createManifest"]["id"]
    agent = await ok(
        client,
        CREATE_AGENT,
        {
            "input": {
                "organizationId": org,
                "name": f"{name} agent",
                "model": "gpt-4o",
                "llmCredentialId": credential_id,
                "manifestIds": [manifest_id],
            }
        },
        token,
    )
    agent_id = agent["createAgent"]["id"]
    project = await ok(
        client,
        CREATE_PROJECT,
        {
            "input": {
                "organizationId": org,
                "name": f"{name} site",
                "agentId": agent_id,
                "allowedOrigins": ["https://shop.example.com"],
            }
        },
        token,
    )
    return Tenant(owner, org, credential_id, manifest_id, agent_id, project["createProject"]["id"])


@pytest_asyncio.fixture(scope="module")
async def world(server: RunningServer, http: aiohttp.ClientSession) -> World:
    """Organizations A and B, built once per backend; the tests only try to change them."""
    client = Client(http, server.base_url)
    return World(await tenant(client, "Org A"), await tenant(client, "Org B"))


async def snapshot(client: Client, tenant: Tenant) -> dict[str, Any]:
    """Everything the owner sees of the organization, audit log included."""
    data = await ok(client, ORGANIZATION, {"id": tenant.organization_id}, tenant.token)
    result: dict[str, Any] = data["organization"]
    return result


async def assert_not_found_like_missing(
    client: Client,
    token: str,
    query: str,
    foreign: dict[str, Any],
    absent: dict[str, Any],
    *,
    codes: list[str] | None = None,
) -> Response:
    """Another organization's object answers exactly as a random ID does: NOT_FOUND
    (or ``codes``)."""
    refused = await client.execute(query, foreign, token=token)
    control = await client.execute(query, absent, token=token)
    expected = ["NOT_FOUND"] if codes is None else codes
    assert refused.codes == expected, (query, refused.body)
    assert refused.status == control.status
    assert refused.body == control.body, (query, refused.body, control.body)
    return refused


# --- reading ----------------------------------------------------------------------------


async def test_outsiders_read_nothing_by_node(client: Client, world: World) -> None:
    a, b = world.a, world.b
    for type_name, object_id in a.ids().items():
        mine = await ok(client, NODE, {"id": object_id}, a.token)
        assert mine["node"]["__typename"] == type_name  # the ID is real and readable at home
        refused = await assert_not_found_like_missing(
            client, b.token, NODE, {"id": object_id}, {"id": missing(type_name)}, codes=[]
        )
        assert refused.body == {"data": {"node": None}}


async def test_outsiders_read_nothing_through_the_organization(
    client: Client, world: World
) -> None:
    a, b = world.a, world.b
    refused = await assert_not_found_like_missing(
        client, b.token, ORGANIZATION, {"id": a.organization_id}, {"id": missing("Organization")}
    )
    assert refused.data == {"organization": None}
    # B's own lists, agents and projects lead to B's objects only.
    seen = json.dumps(await snapshot(client, b))
    for object_id in a.ids().values():
        assert object_id not in seen
    for object_id in b.ids().values():
        assert object_id in seen


# --- changing and deleting --------------------------------------------------------------


async def test_outsiders_cannot_update_or_delete(client: Client, world: World) -> None:
    a, b = world.a, world.b
    before_a, before_b = await snapshot(client, a), await snapshot(client, b)

    attempts: list[tuple[str, str, Any]] = [
        (UPDATE_AGENT, "Agent", lambda i: {"input": {"id": i, "name": "Taken over"}}),
        (UPDATE_AGENT, "Agent", lambda i: {"input": {"id": i, "llmCredentialId": None}}),
        (UPDATE_AGENT, "Agent", lambda i: {"input": {"id": i, "manifestIds": []}}),
        (
            UPDATE_PROJECT,
            "Project",
            lambda i: {"input": {"id": i, "allowedOrigins": ["https://evil.example"]}},
        ),
        (ROTATE_KEY, "Project", lambda i: {"id": i}),
        *((DELETE[type_name], type_name, lambda i: {"id": i}) for type_name in DELETE),
    ]
    ids = a.ids()
    for query, type_name, variables in attempts:
        await assert_not_found_like_missing(
            client, b.token, query, variables(ids[type_name]), variables(missing(type_name))
        )

    assert await snapshot(client, a) == before_a  # audit log included: nothing was recorded
    assert await snapshot(client, b) == before_b


async def test_outsiders_cannot_create_in_another_organization(
    client: Client, world: World
) -> None:
    a, b = world.a, world.b
    before = await snapshot(client, a)
    attempts: list[tuple[str, Any]] = [
        (
            ADD_CREDENTIAL,
            lambda org: {
                "input": {
                    "organizationId": org,
                    "provider": "OPENAI",
                    "apiKey": "kr-0123456789abcdef",
                    "label": "Mine now",
                }
            },
        ),
        # Same name as A's manifest: would otherwise become its version 2.
        (
            CREATE_MANIFEST,
            lambda org: {"input": {"organizationId": org, "name": "Orders", "openapi": OPENAPI}},
        ),
        (
            IMPORT_MANIFEST,
            lambda org: {
                "input": {
                    "organizationId": org,
                    "name": "Orders",
                    "url": "https://api.example.com/openapi.json",
                }
            },
        ),
        (
            CREATE_AGENT,
            lambda org: {"input": {"organizationId": org, "name": "Spy", "model": "gpt-4o"}},
        ),
        (
            CREATE_PROJECT,
            lambda org: {"input": {"organizationId": org, "name": "Spy", "agentId": a.agent_id}},
        ),
    ]
    for query, variables in attempts:
        await assert_not_found_like_missing(
            client, b.token, query, variables(a.organization_id), variables(missing("Organization"))
        )
    assert await snapshot(client, a) == before


# --- attaching through B's own agents and projects ---------------------------------------


async def test_outsiders_cannot_attach_another_organizations_objects(
    client: Client, world: World
) -> None:
    a, b = world.a, world.b
    before_a, before_b = await snapshot(client, a), await snapshot(client, b)
    org = b.organization_id

    def new_agent(credential: str | None = None, manifests: list[str] | None = None) -> Any:
        fields: dict[str, Any] = {"organizationId": org, "name": "Borrower", "model": "gpt-4o"}
        if credential is not None:
            fields["llmCredentialId"] = credential
        if manifests is not None:
            fields["manifestIds"] = manifests
        return {"input": fields}

    cases: list[tuple[str, Any, Any]] = [
        (CREATE_AGENT, new_agent(credential=a.credential_id), new_agent(missing("LlmCredential"))),
        (
            CREATE_AGENT,
            new_agent(manifests=[b.manifest_id, a.manifest_id]),
            new_agent(manifests=[b.manifest_id, missing("Manifest")]),
        ),
        (
            UPDATE_AGENT,
            {"input": {"id": b.agent_id, "llmCredentialId": a.credential_id}},
            {"input": {"id": b.agent_id, "llmCredentialId": missing("LlmCredential")}},
        ),
        (
            UPDATE_AGENT,
            {"input": {"id": b.agent_id, "manifestIds": [a.manifest_id]}},
            {"input": {"id": b.agent_id, "manifestIds": [missing("Manifest")]}},
        ),
        (
            CREATE_PROJECT,
            {"input": {"organizationId": org, "name": "Borrowed", "agentId": a.agent_id}},
            {"input": {"organizationId": org, "name": "Borrowed", "agentId": missing("Agent")}},
        ),
        (
            UPDATE_PROJECT,
            {"input": {"id": b.project_id, "agentId": a.agent_id}},
            {"input": {"id": b.project_id, "agentId": missing("Agent")}},
        ),
    ]
    for query, foreign, absent in cases:
        await assert_not_found_like_missing(client, b.token, query, foreign, absent)

    # B's agent and project still point at B's own objects, and neither log moved.
    agent = await ok(client, NODE, {"id": b.agent_id}, b.token)
    assert agent["node"]["llmCredential"]["id"] == b.credential_id
    assert [m["id"] for m in agent["node"]["manifests"]] == [b.manifest_id]
    project = await ok(client, NODE, {"id": b.project_id}, b.token)
    assert project["node"]["agent"]["id"] == b.agent_id
    assert await snapshot(client, a) == before_a
    assert await snapshot(client, b) == before_b
