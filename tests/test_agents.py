"""Agents: create, update, delete, search and page through them as the dashboard does."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

from sqlalchemy import func, select

from kindrobots.db.models import Agent, AgentManifest
from kindrobots.ids import from_global_id, to_global_id
from tests.conftest import Account, Client, Response, RunningServer
from tests.documents import one_operation
from tests.org_helpers import owner_editor_viewer, quick_account

AGENT_FIELDS = """
  id name systemPrompt model temperature createdAt updatedAt
  llmCredential { id label keyHint }
  manifests { id name version }
"""
CREATE_AGENT = f"""
mutation Create($input: CreateAgentInput!) {{ createAgent(input: $input) {{ {AGENT_FIELDS} }} }}
"""
UPDATE_AGENT = f"""
mutation Update($input: UpdateAgentInput!) {{ updateAgent(input: $input) {{ {AGENT_FIELDS} }} }}
"""
DELETE_AGENT = "mutation Delete($id: ID!) { deleteAgent(id: $id) }"
AGENT_NODE = f"query Node($id: ID!) {{ node(id: $id) {{ ... on Agent {{ {AGENT_FIELDS} }} }} }}"
AGENT_PAGE = """
query Agents($id: ID!, $first: Int, $after: String, $search: String) {
  organization(id: $id) {
    agents(first: $first, after: $after, search: $search) {
      edges { cursor node { id name } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}
"""
ADD_CREDENTIAL = """
mutation Add($input: AddLlmCredentialInput!) { addLlmCredential(input: $input) { id label } }
"""
CREATE_MANIFEST = """
mutation Create($input: CreateManifestInput!) { createManifest(input: $input) { id name } }
"""
CREATE_PROJECT = """
mutation Create($input: CreateProjectInput!) { createProject(input: $input) { id } }
"""
DELETE_PROJECT = "mutation Delete($id: ID!) { deleteProject(id: $id) }"


async def create_agent(client: Client, account: Account, **fields: Any) -> Response:
    values = {"organizationId": account.organization_id, "name": "Helper", "model": "gpt-4o"}
    return await client.execute(
        CREATE_AGENT, {"input": {**values, **fields}}, token=account.access_token
    )


async def new_agent(client: Client, account: Account, **fields: Any) -> dict[str, Any]:
    response = await create_agent(client, account, **fields)
    assert response.errors == [], response.errors
    agent: dict[str, Any] = response.data["createAgent"]
    return agent


async def update_agent(client: Client, account: Account, agent_id: str, **fields: Any) -> Response:
    return await client.execute(
        UPDATE_AGENT, {"input": {"id": agent_id, **fields}}, token=account.access_token
    )


async def new_credential(client: Client, account: Account, label: str = "Demo key") -> str:
    response = await client.execute(
        ADD_CREDENTIAL,
        {
            "input": {
                "organizationId": account.organization_id,
                "provider": "DEMO",
                "apiKey": "demo-key-0000wxyz",
                "label": label,
            }
        },
        token=account.access_token,
    )
    assert response.errors == [], response.errors
    return str(response.data["addLlmCredential"]["id"])


async def new_manifest(client: Client, account: Account, name: str) -> str:
    response = await client.execute(
        CREATE_MANIFEST,
        {
            "input": {
                "organizationId": account.organization_id,
                "name": name,
                "openapi": one_operation(name.replace(" ", "")),
            }
        },
        token=account.access_token,
    )
    assert response.errors == [], response.errors
    return str(response.data["createManifest"]["id"])


async def agent_page(
    client: Client,
    account: Account,
    first: int | None = None,
    after: str | None = None,
    search: str | None = None,
) -> Response:
    return await client.execute(
        AGENT_PAGE,
        {"id": account.organization_id, "first": first, "after": after, "search": search},
        token=account.access_token,
    )


async def agent_names(client: Client, account: Account, search: str | None = None) -> list[str]:
    response = await agent_page(client, account, first=100, search=search)
    assert response.errors == [], response.errors
    return [edge["node"]["name"] for edge in response.data["organization"]["agents"]["edges"]]


async def stored_agents(server: RunningServer, account: Account) -> int:
    organization_id = from_global_id(account.organization_id, "Organization")
    async with server.services.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(Agent).where(Agent.organization_id == organization_id)
        )
    return int(count or 0)


def assert_bad_input(response: Response, field: str) -> None:
    assert response.codes == ["BAD_USER_INPUT"], response.body
    assert response.errors[0]["extensions"]["field"] == field


# --- create -----------------------------------------------------------------------------


async def test_created_agent_reads_back_with_credential_and_manifests_in_order(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    credential = await new_credential(client, account)
    orders = await new_manifest(client, account, "Orders")
    catalog = await new_manifest(client, account, "Catalog")

    agent = await new_agent(
        client,
        account,
        name="  Support  ",
        systemPrompt="You answer questions about orders.",
        model="claude-sonnet-4",
        temperature=0.2,
        llmCredentialId=credential,
        manifestIds=[catalog, orders, catalog],
    )
    assert agent["name"] == "Support"
    assert agent["systemPrompt"] == "You answer questions about orders."
    assert agent["model"] == "claude-sonnet-4"
    assert agent["temperature"] == 0.2
    assert agent["llmCredential"] == {"id": credential, "label": "Demo key", "keyHint": "…wxyz"}
    # Given order kept, duplicates dropped.
    assert agent["manifests"] == [
        {"id": catalog, "name": "Catalog", "version": 1},
        {"id": orders, "name": "Orders", "version": 1},
    ]
    assert agent["createdAt"] == agent["updatedAt"]

    again = await client.execute(AGENT_NODE, {"id": agent["id"]}, token=account.access_token)
    assert again.errors == []
    assert again.data["node"] == agent

    async with server.services.read() as session:
        links = await session.scalars(
            select(AgentManifest.manifest_id)
            .where(AgentManifest.agent_id == from_global_id(agent["id"], "Agent"))
            .order_by(AgentManifest.position)
        )
        assert list(links.all()) == [
            from_global_id(catalog, "Manifest"),
            from_global_id(orders, "Manifest"),
        ]


async def test_agent_defaults(client: Client, server: RunningServer) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account, name="Bare", model="gpt-4o-mini")
    assert agent["systemPrompt"] == ""
    assert agent["temperature"] == 0.7
    assert agent["llmCredential"] is None
    assert agent["manifests"] == []


INVALID_AGENT_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "n" * 101}, "name"),
    ({"name": "tab\there"}, "name"),
    ({"model": ""}, "model"),
    ({"model": "gpt 4o"}, "model"),
    ({"model": "-gpt-4o"}, "model"),
    ({"model": "m" * 101}, "model"),
    ({"model": "gpt\n4o"}, "model"),
    ({"temperature": -0.01}, "temperature"),
    ({"temperature": 2.01}, "temperature"),
    ({"temperature": 1e308}, "temperature"),
    ({"systemPrompt": "p" * 20_001}, "systemPrompt"),
    ({"manifestIds": [to_global_id("Manifest", uuid.uuid4()) for _ in range(21)]}, "manifestIds"),
]


async def test_invalid_fields_are_refused_by_name_and_store_nothing(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    for fields, field in INVALID_AGENT_FIELDS:
        response = await create_agent(client, account, **fields)
        assert response.codes == ["BAD_USER_INPUT"], (fields, response.body)
        assert response.errors[0]["extensions"]["field"] == field, fields
    assert await stored_agents(server, account) == 0


async def test_boundary_values_are_accepted(client: Client, server: RunningServer) -> None:
    account = await quick_account(server)
    accepted: list[dict[str, Any]] = [
        {"temperature": 0.0},
        {"temperature": 2.0},
        {"systemPrompt": "p" * 20_000},
        {"model": "accounts/fireworks/models/llama-v3p1-8b-instruct"},
        {"model": "ft:gpt-4o-mini:acme:support@2024"},
        {"model": "m" * 100},
        {"name": "n" * 100},
    ]
    for fields in accepted:
        agent = await new_agent(client, account, **fields)
        for key, value in fields.items():
            assert agent[key] == value, key


async def test_credential_and_manifests_must_belong_to_the_organization(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    other = await quick_account(server)
    own_manifest = await new_manifest(client, account, "Own")
    foreign_credential = await new_credential(client, other, "Theirs")
    foreign_manifest = await new_manifest(client, other, "Theirs")
    missing_credential = to_global_id("LlmCredential", uuid.uuid4())
    missing_manifest = to_global_id("Manifest", uuid.uuid4())

    refused: list[dict[str, Any]] = [
        {"llmCredentialId": foreign_credential},
        {"llmCredentialId": missing_credential},
        {"llmCredentialId": own_manifest},  # an ID of the wrong type
        {"llmCredentialId": "not an id"},
        {"manifestIds": [foreign_manifest]},
        {"manifestIds": [own_manifest, foreign_manifest]},
        {"manifestIds": [missing_manifest]},
    ]
    for fields in refused:
        response = await create_agent(client, account, **fields)
        assert response.codes == ["NOT_FOUND"], (fields, response.body)
        assert response.data is None
    assert await stored_agents(server, account) == 0

    agent = await new_agent(client, account, manifestIds=[own_manifest])
    for fields in refused[:1] + refused[4:5]:
        response = await update_agent(client, account, agent["id"], **fields)
        assert response.codes == ["NOT_FOUND"], (fields, response.body)
    unchanged = await client.execute(AGENT_NODE, {"id": agent["id"]}, token=account.access_token)
    assert unchanged.data["node"] == agent


# --- update -----------------------------------------------------------------------------


async def test_update_changes_only_what_is_given(client: Client, server: RunningServer) -> None:
    account = await quick_account(server)
    credential = await new_credential(client, account)
    first = await new_manifest(client, account, "First")
    second = await new_manifest(client, account, "Second")
    agent = await new_agent(
        client,
        account,
        name="Before",
        systemPrompt="Be brief.",
        temperature=1.0,
        llmCredentialId=credential,
        manifestIds=[first],
    )

    renamed = await update_agent(client, account, agent["id"], name="After")
    assert renamed.errors == []
    after = renamed.data["updateAgent"]
    assert after["name"] == "After"
    assert {k: v for k, v in after.items() if k not in ("name", "updatedAt")} == {
        k: v for k, v in agent.items() if k not in ("name", "updatedAt")
    }
    assert after["updatedAt"] > agent["updatedAt"]

    # null for a plain field means "unchanged"; for the credential it detaches it.
    changed = await update_agent(
        client,
        account,
        agent["id"],
        name=None,
        model="gpt-4.1",
        temperature=0.0,
        systemPrompt="",
        llmCredentialId=None,
        manifestIds=[second, first],
    )
    assert changed.errors == [], changed.errors
    result = changed.data["updateAgent"]
    assert result["name"] == "After"
    assert result["model"] == "gpt-4.1"
    assert result["temperature"] == 0.0
    assert result["systemPrompt"] == ""
    assert result["llmCredential"] is None
    assert [m["id"] for m in result["manifests"]] == [second, first]

    cleared = await update_agent(
        client, account, agent["id"], manifestIds=[], llmCredentialId=credential
    )
    assert cleared.data["updateAgent"]["manifests"] == []
    assert cleared.data["updateAgent"]["llmCredential"]["id"] == credential

    reread = await client.execute(AGENT_NODE, {"id": agent["id"]}, token=account.access_token)
    assert reread.data["node"] == cleared.data["updateAgent"]


async def test_invalid_update_changes_nothing(client: Client, server: RunningServer) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account, name="Stable", temperature=0.5)
    invalid: list[tuple[dict[str, Any], str]] = [
        ({"temperature": 2.5, "name": "Changed"}, "temperature"),
        ({"name": "", "model": "gpt-4.1"}, "name"),
        ({"model": "has space", "name": "Changed"}, "model"),
        ({"systemPrompt": "x" * 20_001}, "systemPrompt"),
    ]
    for fields, field in invalid:
        assert_bad_input(await update_agent(client, account, agent["id"], **fields), field)
    reread = await client.execute(AGENT_NODE, {"id": agent["id"]}, token=account.access_token)
    assert reread.data["node"] == agent


async def test_other_organizations_agents_are_not_found(
    client: Client, server: RunningServer
) -> None:
    owner = await quick_account(server)
    outsider = await quick_account(server)
    agent = await new_agent(client, owner, name="Private")
    missing = to_global_id("Agent", uuid.uuid4())
    for agent_id in (agent["id"], missing):
        # API.md: node(id) is null, without an error, for foreign and unknown IDs alike.
        read = await client.execute(AGENT_NODE, {"id": agent_id}, token=outsider.access_token)
        assert (read.errors, read.data) == ([], {"node": None}), read.body
        for response in [
            await update_agent(client, outsider, agent_id, name="Mine now"),
            await client.execute(DELETE_AGENT, {"id": agent_id}, token=outsider.access_token),
        ]:
            assert response.codes == ["NOT_FOUND"], response.body
    reread = await client.execute(AGENT_NODE, {"id": agent["id"]}, token=owner.access_token)
    assert reread.data["node"]["name"] == "Private"
    # Listing another organization's agents is NOT_FOUND too.
    foreign = await client.execute(
        AGENT_PAGE, {"id": owner.organization_id, "first": 10}, token=outsider.access_token
    )
    assert foreign.codes == ["NOT_FOUND"]


async def test_editors_manage_agents_and_viewers_only_read(
    client: Client, server: RunningServer
) -> None:
    _owner, as_editor, as_viewer = await owner_editor_viewer(client, server)
    editor, viewer = as_editor, as_viewer  # the same users and tokens

    agent = await new_agent(client, as_editor, name="By editor")
    updated = await update_agent(client, as_editor, agent["id"], name="Edited")
    assert updated.errors == []

    assert (await create_agent(client, as_viewer, name="By viewer")).codes == ["FORBIDDEN"]
    assert (await update_agent(client, as_viewer, agent["id"], name="No")).codes == ["FORBIDDEN"]
    refused = await client.execute(DELETE_AGENT, {"id": agent["id"]}, token=viewer.access_token)
    assert refused.codes == ["FORBIDDEN"]
    assert await agent_names(client, as_viewer) == ["Edited"]

    deleted = await client.execute(DELETE_AGENT, {"id": agent["id"]}, token=editor.access_token)
    assert deleted.data == {"deleteAgent": True}
    assert await agent_names(client, as_viewer) == []


# --- delete -----------------------------------------------------------------------------


async def test_an_agent_used_by_a_project_cannot_be_deleted(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account, name="Deployed")
    project = await client.execute(
        CREATE_PROJECT,
        {
            "input": {
                "organizationId": account.organization_id,
                "name": "Site",
                "agentId": agent["id"],
            }
        },
        token=account.access_token,
    )
    assert project.errors == [], project.errors

    refused = await client.execute(DELETE_AGENT, {"id": agent["id"]}, token=account.access_token)
    assert refused.codes == ["CONFLICT"], refused.body
    assert refused.data is None
    still = await client.execute(AGENT_NODE, {"id": agent["id"]}, token=account.access_token)
    assert still.data["node"]["name"] == "Deployed"
    assert await stored_agents(server, account) == 1

    removed = await client.execute(
        DELETE_PROJECT, {"id": project.data["createProject"]["id"]}, token=account.access_token
    )
    assert removed.data == {"deleteProject": True}
    deleted = await client.execute(DELETE_AGENT, {"id": agent["id"]}, token=account.access_token)
    assert deleted.errors == []
    assert deleted.data == {"deleteAgent": True}
    assert await stored_agents(server, account) == 0
    gone = await client.execute(AGENT_NODE, {"id": agent["id"]}, token=account.access_token)
    assert (gone.errors, gone.data) == ([], {"node": None})
    again = await client.execute(DELETE_AGENT, {"id": agent["id"]}, token=account.access_token)
    assert again.codes == ["NOT_FOUND"]


async def test_deleting_an_agent_keeps_its_manifests_and_credential(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    credential = await new_credential(client, account)
    manifest = await new_manifest(client, account, "Kept")
    agent = await new_agent(client, account, llmCredentialId=credential, manifestIds=[manifest])
    deleted = await client.execute(DELETE_AGENT, {"id": agent["id"]}, token=account.access_token)
    assert deleted.data == {"deleteAgent": True}
    for node_id in (manifest, credential):
        response = await client.execute(
            "query($id: ID!) { node(id: $id) { id } }", {"id": node_id}, token=account.access_token
        )
        assert response.data == {"node": {"id": node_id}}
    async with server.services.read() as session:
        links = await session.scalar(
            select(func.count())
            .select_from(AgentManifest)
            .where(AgentManifest.agent_id == from_global_id(agent["id"], "Agent"))
        )
    assert links == 0


# --- search and pagination --------------------------------------------------------------


async def test_search_matches_names_literally_and_case_insensitively(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    names = ["Support Bot", "sales bot", "50% off", "5000 offers", "under_score", "underXscore"]
    for name in [*names, "Back\\slash"]:
        await new_agent(client, account, name=name)

    assert await agent_names(client, account, "BOT") == ["Support Bot", "sales bot"]
    assert await agent_names(client, account, "  bot  ") == ["Support Bot", "sales bot"]
    assert await agent_names(client, account, "%") == ["50% off"]
    assert await agent_names(client, account, "0% o") == ["50% off"]
    assert await agent_names(client, account, "_") == ["under_score"]
    assert await agent_names(client, account, "\\") == ["Back\\slash"]
    assert await agent_names(client, account, "nothing like it") == []
    assert len(await agent_names(client, account, "")) == 7
    assert len(await agent_names(client, account, None)) == 7
    assert_bad_input(await agent_page(client, account, first=10, search="x" * 101), "search")


async def page_through(
    client: Client, account: Account, first: int, after: str | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Every agent name after ``after``, ``first`` at a time, and each page's pageInfo."""
    names: list[str] = []
    infos: list[dict[str, Any]] = []
    while True:
        response = await agent_page(client, account, first=first, after=after)
        assert response.errors == [], response.errors
        connection = response.data["organization"]["agents"]
        names += [edge["node"]["name"] for edge in connection["edges"]]
        infos.append(connection["pageInfo"])
        if connection["edges"]:
            assert connection["pageInfo"]["startCursor"] == connection["edges"][0]["cursor"]
            assert connection["pageInfo"]["endCursor"] == connection["edges"][-1]["cursor"]
        if not connection["pageInfo"]["hasNextPage"]:
            return names, infos
        after = connection["pageInfo"]["endCursor"]


async def test_paging_sees_every_agent_once_and_cursors_outlive_changes(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    created = [f"Agent {n:02d}" for n in range(23)]
    ids = [(await new_agent(client, account, name=name))["id"] for name in created]

    for size in (1, 5, 10, 23, 100):
        names, infos = await page_through(client, account, size)
        assert names == created, size
        assert infos[0]["hasPreviousPage"] is False
        assert all(info["hasPreviousPage"] for info in infos[1:])

    first_page = await agent_page(client, account, first=10)
    cursor = first_page.data["organization"]["agents"]["pageInfo"]["endCursor"]
    # New agents arrive and the last agent of the page is deleted: the cursor still works.
    later = [f"Agent {n:02d}" for n in range(23, 26)]
    for name in later:
        await new_agent(client, account, name=name)
    deleted = await client.execute(DELETE_AGENT, {"id": ids[9]}, token=account.access_token)
    assert deleted.data == {"deleteAgent": True}
    rest, _ = await page_through(client, account, 4, after=cursor)
    assert rest == created[10:] + later

    # The default page is 20; 100 is the most a page may hold.
    default = await agent_page(client, account)
    assert len(default.data["organization"]["agents"]["edges"]) == 20
    everything = await agent_page(client, account, first=100)
    assert len(everything.data["organization"]["agents"]["edges"]) == 25
    empty = await agent_page(client, account, first=0)
    assert empty.data["organization"]["agents"]["edges"] == []
    for first in (101, 1000, -1):
        assert_bad_input(await agent_page(client, account, first=first), "first")


async def test_garbage_cursors_are_bad_input(client: Client, server: RunningServer) -> None:
    account = await quick_account(server)
    await new_agent(client, account)

    def forged(*parts: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")

    for cursor in [
        "garbage",
        "!!!",
        forged("yesterday", str(uuid.uuid4())),
        forged("2024-01-01T00:00:00+00:00", "not-a-uuid"),
        forged("2024-01-01T00:00:00+00:00"),
        forged(1, 2),
        forged("2024-01-01T00:00:00+00:00", 5),
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        forged("2024-01-01T00:00:00", str(uuid.uuid4())),  # no time zone
    ]:
        response = await agent_page(client, account, first=5, after=cursor)
        assert_bad_input(response, "after")


# --- races ------------------------------------------------------------------------------


async def test_deleting_an_agent_while_it_is_deployed_never_half_succeeds(
    client: Client, server: RunningServer
) -> None:
    """Either the project wins (delete is CONFLICT) or the delete wins (project NOT_FOUND)."""
    account = await quick_account(server)
    for _ in range(8):
        agent = await new_agent(client, account)
        deleted, project = await asyncio.gather(
            client.execute(DELETE_AGENT, {"id": agent["id"]}, token=account.access_token),
            client.execute(
                CREATE_PROJECT,
                {
                    "input": {
                        "organizationId": account.organization_id,
                        "name": "Racing",
                        "agentId": agent["id"],
                    }
                },
                token=account.access_token,
            ),
        )
        outcome = (",".join(deleted.codes) or "deleted", ",".join(project.codes) or "created")
        assert outcome in {("CONFLICT", "created"), ("deleted", "NOT_FOUND")}, outcome
        still_there = await client.execute(
            AGENT_NODE, {"id": agent["id"]}, token=account.access_token
        )
        assert still_there.errors == [], still_there.body
        assert (still_there.data["node"] is not None) == (outcome == ("CONFLICT", "created"))
        if project.data:
            removed = await client.execute(
                DELETE_PROJECT,
                {"id": project.data["createProject"]["id"]},
                token=account.access_token,
            )
            assert removed.data == {"deleteProject": True}


async def test_deleting_a_manifest_while_an_agent_takes_it_never_fails_unexpectedly(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    for number in range(8):
        manifest = await new_manifest(client, account, f"Racing {number}")
        deleted, agent = await asyncio.gather(
            client.execute(
                "mutation($id: ID!) { deleteManifest(id: $id) }",
                {"id": manifest},
                token=account.access_token,
            ),
            create_agent(client, account, name=f"Racer {number}", manifestIds=[manifest]),
        )
        assert deleted.errors == [], deleted.errors
        assert agent.codes in ([], ["NOT_FOUND"]), agent.body
        if not agent.errors:
            reread = await client.execute(
                AGENT_NODE, {"id": agent.data["createAgent"]["id"]}, token=account.access_token
            )
            assert reread.data["node"]["manifests"] == []


async def test_deleting_a_credential_while_an_agent_takes_it_never_fails_unexpectedly(
    client: Client,
    server: RunningServer,
) -> None:
    account = await quick_account(server)
    for number in range(8):
        credential = await new_credential(client, account)
        deleted, agent = await asyncio.gather(
            client.execute(
                "mutation($id: ID!) { deleteLlmCredential(id: $id) }",
                {"id": credential},
                token=account.access_token,
            ),
            create_agent(client, account, name=f"Racer {number}", llmCredentialId=credential),
        )
        assert deleted.errors == [], deleted.errors
        assert agent.codes in ([], ["NOT_FOUND"]), agent.body
        if not agent.errors:
            # Created first: the deletion then detached the credential.
            reread = await client.execute(
                AGENT_NODE, {"id": agent.data["createAgent"]["id"]}, token=account.access_token
            )
            assert reread.data["node"]["llmCredential"] is None
