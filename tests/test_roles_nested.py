"""The role table on nested paths: what each role reads under an organization.

A field nested under an object obeys the same roles as a root field would: a VIEWER
who may read an agent may not read its credential, an EDITOR sees which credential
an agent uses but not where its key goes or how it ends. Every object field of the
tenant types is in ``NESTED`` (a test fails on one that is not), and each is asked
for by every role and by an outsider.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from graphql import GraphQLInterfaceType, GraphQLObjectType, get_named_type

from kindrobots.schema import build_schema
from kindrobots.schema.permissions import role_permissions
from tests.chat_helpers import deploy
from tests.conftest import Client, Response, RunningServer
from tests.org_helpers import Team, build_team, invite
from tests.test_tenancy import ADD_CREDENTIAL, CREATE_MANIFEST, OPENAPI, ok

ROLES = ("OWNER", "ADMIN", "EDITOR", "VIEWER")
RANK = {"VIEWER": 1, "EDITOR": 2, "ADMIN": 3, "OWNER": 4}
AGENT = "agents { edges { node { %s } } }"
CREDENTIAL = AGENT % "llmCredential { %s }"

# Type.field -> (selection under `organization(id:)`, the weakest role that may read it).
NESTED: dict[str, tuple[str, str]] = {
    "Organization.members": ("members { edges { node { role } } }", "VIEWER"),
    "Membership.user": ("members { edges { node { user { email } } } }", "VIEWER"),
    "Membership.organization": ("members { edges { node { organization { id } } } }", "VIEWER"),
    "Organization.agents": (AGENT % "name", "VIEWER"),
    "Agent.llmCredential": (CREDENTIAL % "id label provider createdAt", "EDITOR"),
    "LlmCredential.baseUrl": (CREDENTIAL % "id baseUrl", "ADMIN"),
    "LlmCredential.keyHint": (CREDENTIAL % "keyHint", "ADMIN"),
    "Agent.manifests": (AGENT % "manifests { name }", "VIEWER"),
    "Agent.feedback": (AGENT % "feedback { up down }", "VIEWER"),
    "Organization.manifests": ("manifests { edges { node { name } } }", "VIEWER"),
    "Manifest.operations": (
        "manifests { edges { node { operations { operationId } } } }",
        "VIEWER",
    ),
    "Organization.projects": ("projects { edges { node { name } } }", "VIEWER"),
    "Project.agent": ("projects { edges { node { agent { name } } } }", "VIEWER"),
    "Project.usage": ("projects { edges { node { usage(days: 2) { day messages } } } }", "VIEWER"),
    "Organization.conversations": ("conversations { edges { node { id } } }", "VIEWER"),
    "Conversation.project": ("conversations { edges { node { project { name } } } }", "VIEWER"),
    "Conversation.messages": (
        "conversations { edges { node { messages { edges { node { content } } } } } }",
        "VIEWER",
    ),
    "Organization.llmCredentials": ("llmCredentials { label }", "ADMIN"),
    "Organization.invitations": ("invitations { email }", "ADMIN"),
    "Organization.auditLog": ("auditLog { edges { node { action } } }", "ADMIN"),
    "Organization.billing": ("billing { tier seatsUsed }", "ADMIN"),
    "AuditEvent.actor": ("auditLog { edges { node { actor { email } } } }", "ADMIN"),
}
# The types a member reaches under an organization (payloads of a caller's own
# mutations and chat events are not tenant data read by role).
TENANT_TYPES = (
    "Organization",
    "Membership",
    "Agent",
    "LlmCredential",
    "Manifest",
    "Project",
    "Conversation",
    "AuditEvent",
)


def _returns_object(field: Any) -> bool:
    return isinstance(get_named_type(field.type), GraphQLObjectType | GraphQLInterfaceType)


def test_every_nested_object_field_and_gated_field_is_in_the_table() -> None:
    schema = build_schema()
    missing = []
    for type_name in TENANT_TYPES:
        graphql_type = schema._schema.type_map[type_name]
        for name, field in graphql_type.fields.items():  # type: ignore[attr-defined]
            definition = (field.extensions or {}).get("strawberry-definition")
            gated = definition is not None and role_permissions(definition)
            if (_returns_object(field) or gated) and f"{type_name}.{name}" not in NESTED:
                missing.append(f"{type_name}.{name}")
    assert missing == [], f"nested fields without a row in NESTED: {missing}"


def test_the_table_matches_the_declared_roles() -> None:
    """Where a field declares a role, it is the table's (the table is checked by
    behaviour below; this keeps the declaration and the table from drifting)."""
    schema = build_schema()
    for key, (_, role) in NESTED.items():
        type_name, field_name = key.split(".")
        field = schema._schema.type_map[type_name].fields[field_name]  # type: ignore[attr-defined]
        definition = field.extensions["strawberry-definition"]
        declared = [permission.role.value for permission in role_permissions(definition)]
        assert declared in ([], [role]), (key, declared)


def values_of(data: Any, key: str) -> list[Any]:
    if isinstance(data, dict):
        found = [data[key]] if key in data else []
        return found + [v for value in data.values() for v in values_of(value, key)]
    if isinstance(data, list):
        return [v for item in data for v in values_of(item, key)]
    return []


@pytest_asyncio.fixture(scope="module")
async def team(server: RunningServer, http: aiohttp.ClientSession) -> Team:
    """Organization A with one of everything each path reads, and a member of each role."""
    client = Client(http, server.base_url)
    team = await build_team(client, server)
    owner = team.owner
    credential = await ok(
        client,
        ADD_CREDENTIAL,
        {
            "input": {
                "organizationId": team.organization_id,
                "provider": "OPENAI",
                "apiKey": "kr-nested-roles-key-0001",
                "label": "Shop key",
            }
        },
        owner.access_token,
    )
    manifest = await ok(
        client,
        CREATE_MANIFEST,
        {"input": {"organizationId": team.organization_id, "name": "Orders", "openapi": OPENAPI}},
        owner.access_token,
    )
    # One agent carries the credential and the manifest; the deployed one chats with the
    # local demo provider, so that a conversation exists.
    await deploy(
        client,
        owner,
        credential_id=credential["addLlmCredential"]["id"],
        manifest_ids=[manifest["createManifest"]["id"]],
    )
    chatting = await deploy(client, owner)
    sent = await client.execute(
        "mutation($input: ChatInput!) { sendMessage(input: $input) { content } }",
        {"input": {"message": "Hello"}},
        headers={"X-Project-Key": chatting.project_key},
    )
    assert sent.errors == [], sent.errors
    invited = await invite(client, owner.access_token, team.organization_id, "new@example.com")
    assert invited.errors == [], invited.errors
    return team


async def read(client: Client, team: Team, caller: str, selection: str) -> Response:
    return await client.execute(
        f"query($id: ID!) {{ organization(id: $id) {{ {selection} }} }}",
        {"id": team.organization_id},
        token=team.by_role(caller).access_token,
    )


@pytest.mark.parametrize("key", sorted(NESTED))
async def test_each_role_reads_exactly_what_the_table_allows(
    client: Client, team: Team, key: str
) -> None:
    selection, weakest = NESTED[key]
    field_name = key.split(".")[1]
    for role in ROLES:
        rank = RANK[role]
        response = await read(client, team, role, selection)
        if rank >= RANK[weakest]:
            assert response.errors == [], (key, role, response.errors)
            values = values_of(response.data, field_name)
            if field_name == "baseUrl":  # an OpenAI credential has none: the answer is null
                assert values, (key, role, response.body)
            else:
                assert any(value not in (None, [], {}) for value in values), (key, role)
        else:
            assert set(response.codes) == {"FORBIDDEN"}, (key, role, response.body)
            # Refused at the field, or at the first field above it the role may not read.
            refused = {name.split(".")[1] for name, row in NESTED.items() if RANK[row[1]] > rank}
            assert all(error["path"][-1] in refused for error in response.errors), (key, role)
            assert "0001" not in json.dumps(response.data)


@pytest.mark.parametrize("key", sorted(NESTED))
async def test_an_outsider_reads_nothing_of_it(client: Client, team: Team, key: str) -> None:
    response = await read(client, team, "OUTSIDER", NESTED[key][0])
    assert response.codes == ["NOT_FOUND"], response.body
    assert response.data == {"organization": None}


@pytest.mark.parametrize("field", ["baseUrl", "keyHint"])
async def test_node_applies_the_same_rule_to_a_credential_as_the_nested_path(
    client: Client, team: Team, field: str
) -> None:
    """The credential's metadata needs ADMIN whichever way it is reached."""
    listed = await read(client, team, "OWNER", "llmCredentials { id }")
    credential_id = listed.data["organization"]["llmCredentials"][0]["id"]
    for role in ROLES:
        response = await client.execute(
            f"query($id: ID!) {{ node(id: $id) {{ ... on LlmCredential {{ {field} }} }} }}",
            {"id": credential_id},
            token=team.by_role(role).access_token,
        )
        allowed = RANK[role] >= RANK["ADMIN"]
        assert (response.errors == []) is allowed, (role, response.body)
        if not allowed:
            assert response.codes == ["FORBIDDEN"], response.body
