"""Projects: an agent on the web behind a publishable key, allowed origins and an access mode."""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from kindrobots.db.models import Project
from kindrobots.errors import BadUserInput
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.security.origins import MAX_ORIGINS, normalize_origin, normalize_origins
from tests.conftest import Account, Client, Response, RunningServer
from tests.org_helpers import owner_editor_viewer, quick_account
from tests.servers import Listener
from tests.test_agents import new_agent

PROJECT_FIELDS = """
  id name publishableKey allowedOrigins accessMode jwksUrl jwtIssuer jwtAudience createdAt
  agent { id name }
"""
CREATE_PROJECT = f"""
mutation Create($input: CreateProjectInput!) {{
  createProject(input: $input) {{ {PROJECT_FIELDS} }}
}}
"""
UPDATE_PROJECT = f"""
mutation Update($input: UpdateProjectInput!) {{
  updateProject(input: $input) {{ {PROJECT_FIELDS} }}
}}
"""
ROTATE_KEY = f"mutation Rotate($id: ID!) {{ rotateProjectKey(id: $id) {{ {PROJECT_FIELDS} }} }}"
DELETE_PROJECT = "mutation Delete($id: ID!) { deleteProject(id: $id) }"
PROJECT_NODE = (
    f"query Node($id: ID!) {{ node(id: $id) {{ ... on Project {{ {PROJECT_FIELDS} }} }} }}"
)
PROJECT_PAGE = """
query Projects($id: ID!, $first: Int, $after: String) {
  organization(id: $id) {
    projects(first: $first, after: $after) {
      edges { node { id name } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""
PUBLISHABLE_KEY = re.compile(r"^pk_[A-Za-z0-9_-]{32}$")
JWKS_URL = "https://login.example.com/.well-known/jwks.json"
AUTHENTICATED = {
    "accessMode": "AUTHENTICATED",
    "jwksUrl": JWKS_URL,
    "jwtIssuer": "https://login.example.com/",
    "jwtAudience": "kind-robots-widget",
}


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Host names these tests use, answered without a DNS server (the server runs in-process)."""
    names = {
        "login.example.com": "93.184.215.14",
        "intranet.example.com": "10.20.30.40",
        "loopback.example.com": "127.0.0.1",
    }
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real(names.get(host, host), port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


async def create_project(
    client: Client, account: Account, agent_id: str, **fields: Any
) -> Response:
    values = {"organizationId": account.organization_id, "name": "Website", "agentId": agent_id}
    return await client.execute(
        CREATE_PROJECT, {"input": {**values, **fields}}, token=account.access_token
    )


async def new_project(
    client: Client, account: Account, agent_id: str, **fields: Any
) -> dict[str, Any]:
    response = await create_project(client, account, agent_id, **fields)
    assert response.errors == [], response.errors
    project: dict[str, Any] = response.data["createProject"]
    return project


async def update_project(
    client: Client, account: Account, project_id: str, **fields: Any
) -> Response:
    return await client.execute(
        UPDATE_PROJECT, {"input": {"id": project_id, **fields}}, token=account.access_token
    )


async def read_project(client: Client, account: Account, project_id: str) -> Response:
    return await client.execute(PROJECT_NODE, {"id": project_id}, token=account.access_token)


async def stored_keys(server: RunningServer, account: Account) -> list[str]:
    organization_id = from_global_id(account.organization_id, "Organization")
    async with server.services.read() as session:
        keys = await session.scalars(
            select(Project.publishable_key).where(Project.organization_id == organization_id)
        )
        return list(keys.all())


def assert_bad_input(response: Response, field: str) -> None:
    assert response.codes == ["BAD_USER_INPUT"], response.body
    assert response.errors[0]["extensions"]["field"] == field
    assert response.data is None


# --- create, keys -----------------------------------------------------------------------


async def test_created_project_reads_back_with_a_fresh_publishable_key(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account, name="Concierge")
    project = await new_project(
        client, account, agent["id"], name="  Shop  ", allowedOrigins=["https://shop.example.com"]
    )
    assert project["name"] == "Shop"
    assert project["agent"] == {"id": agent["id"], "name": "Concierge"}
    assert PUBLISHABLE_KEY.match(project["publishableKey"]), project["publishableKey"]
    assert project["allowedOrigins"] == ["https://shop.example.com"]
    assert project["accessMode"] == "PUBLIC"
    assert (project["jwksUrl"], project["jwtIssuer"], project["jwtAudience"]) == (None,) * 3

    reread = await read_project(client, account, project["id"])
    assert reread.errors == []
    assert reread.data["node"] == project
    assert await stored_keys(server, account) == [project["publishableKey"]]


async def test_keys_are_unique_and_rotation_replaces_the_key(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account)
    projects = [await new_project(client, account, agent["id"], name=f"P{n}") for n in range(3)]
    keys = [project["publishableKey"] for project in projects]

    target = projects[0]
    for _ in range(3):
        rotated = await client.execute(ROTATE_KEY, {"id": target["id"]}, token=account.access_token)
        assert rotated.errors == [], rotated.errors
        after = rotated.data["rotateProjectKey"]
        assert PUBLISHABLE_KEY.match(after["publishableKey"])
        assert after["publishableKey"] not in keys
        assert {k: v for k, v in after.items() if k != "publishableKey"} == {
            k: v for k, v in target.items() if k != "publishableKey"
        }
        keys.append(after["publishableKey"])
    assert len(set(keys)) == len(keys)

    # Only the newest key is stored: the old ones are gone, not kept alongside.
    stored = await stored_keys(server, account)
    assert sorted(stored) == sorted([keys[-1], keys[1], keys[2]])
    reread = await read_project(client, account, target["id"])
    assert reread.data["node"]["publishableKey"] == keys[-1]


# --- allowed origins --------------------------------------------------------------------


async def test_allowed_origins_are_normalized(client: Client, server: RunningServer) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account)
    project = await new_project(
        client,
        account,
        agent["id"],
        allowedOrigins=[
            "https://Example.COM",
            "https://example.com:443",
            " http://localhost:3000 ",
            "http://shop.example.com:80",
            "https://*.example.org",
            "http://127.0.0.1:8080",
            "https://example.com:8443",
        ],
    )
    assert project["allowedOrigins"] == [
        "https://example.com",
        "http://localhost:3000",
        "http://shop.example.com",
        "https://*.example.org",
        "http://127.0.0.1:8080",
        "https://example.com:8443",
    ]
    # Outside production a bare * is accepted (local development).
    anywhere = await new_project(client, account, agent["id"], allowedOrigins=["*"])
    assert anywhere["allowedOrigins"] == ["*"]


INVALID_ORIGINS = [
    "https://example.com/",
    "https://example.com/chat",
    "https://example.com?x=1",
    "https://example.com#top",
    "example.com",
    "//example.com",
    "ftp://example.com",
    "javascript://example.com",
    "https://user@example.com",
    "https://ex ample.com",
    "https://exa_mple.com",
    "https://-example.com",
    "https://example.com:0",
    "https://example.com:65536",
    "https://example.com:port",
    "http://*.example.com",
    "https://*.com",
    "https://*.*.example.com",
    "https://*example.com",
    "https://*.10.0.0.1",
    "https://" + "a" * 64 + ".com",
    "null",
    "",
    "**",
]


async def test_invalid_origins_are_refused_and_change_nothing(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account)
    for origin in INVALID_ORIGINS:
        response = await create_project(
            client, account, agent["id"], allowedOrigins=["https://ok.example.com", origin]
        )
        assert response.codes == ["BAD_USER_INPUT"], (origin, response.body)
        assert response.errors[0]["extensions"]["field"] == "allowedOrigins", origin
    too_many = [f"https://site{n}.example.com" for n in range(MAX_ORIGINS + 1)]
    assert_bad_input(
        await create_project(client, account, agent["id"], allowedOrigins=too_many),
        "allowedOrigins",
    )
    assert await stored_keys(server, account) == []

    project = await new_project(client, account, agent["id"], allowedOrigins=too_many[:MAX_ORIGINS])
    assert len(project["allowedOrigins"]) == MAX_ORIGINS
    refused = await update_project(
        client, account, project["id"], allowedOrigins=["https://example.com/path"], name="New"
    )
    assert_bad_input(refused, "allowedOrigins")
    assert (await read_project(client, account, project["id"])).data["node"] == project


def test_production_refuses_a_bare_star_but_keeps_wildcards() -> None:
    with pytest.raises(BadUserInput) as refused:
        normalize_origin("*", production=True)
    assert refused.value.extensions == {"code": "BAD_USER_INPUT", "field": "allowedOrigins"}
    with pytest.raises(BadUserInput):
        normalize_origins(["https://example.com", " * "], production=True)
    assert normalize_origin("*", production=False) == "*"
    assert normalize_origin("https://*.Example.com", production=True) == "https://*.example.com"
    assert normalize_origins(
        ["https://example.com", "https://EXAMPLE.com:443"], production=True
    ) == ["https://example.com"]
    for origin in INVALID_ORIGINS:
        with pytest.raises(BadUserInput):
            normalize_origin(origin, production=True)


# --- access mode and JWKS ---------------------------------------------------------------


async def test_authenticated_projects_need_jwks_url_issuer_and_audience(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account)
    for missing, field in [
        ("jwksUrl", "jwksUrl"),
        ("jwtIssuer", "jwtIssuer"),
        ("jwtAudience", "jwtAudience"),
    ]:
        fields = {k: v for k, v in AUTHENTICATED.items() if k != missing}
        assert_bad_input(await create_project(client, account, agent["id"], **fields), field)
        blank = {**AUTHENTICATED, missing: "   "}
        response = await create_project(client, account, agent["id"], **blank)
        assert response.codes == ["BAD_USER_INPUT"], (missing, response.body)
    assert await stored_keys(server, account) == []

    project = await new_project(client, account, agent["id"], **AUTHENTICATED)
    assert project["accessMode"] == "AUTHENTICATED"
    assert project["jwksUrl"] == JWKS_URL
    assert project["jwtIssuer"] == "https://login.example.com/"
    assert project["jwtAudience"] == "kind-robots-widget"


async def test_switching_to_authenticated_needs_the_jwt_settings(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account)
    project = await new_project(client, account, agent["id"])
    refused = await update_project(client, account, project["id"], accessMode="AUTHENTICATED")
    assert_bad_input(refused, "jwksUrl")
    partial = await update_project(
        client, account, project["id"], accessMode="AUTHENTICATED", jwksUrl=JWKS_URL
    )
    assert_bad_input(partial, "jwtIssuer")
    assert (await read_project(client, account, project["id"])).data["node"] == project

    switched = await update_project(client, account, project["id"], **AUTHENTICATED)
    assert switched.errors == [], switched.errors
    assert switched.data["updateProject"]["accessMode"] == "AUTHENTICATED"
    back = await update_project(client, account, project["id"], accessMode="PUBLIC")
    assert back.data["updateProject"]["accessMode"] == "PUBLIC"


async def test_null_clears_the_jwt_settings_and_omitted_keeps_them(
    client: Client, server: RunningServer
) -> None:
    """One null rule for updates: an omitted field is unchanged, null clears a clearable one."""
    account = await quick_account(server)
    agent = await new_agent(client, account)
    project = await new_project(client, account, agent["id"], **AUTHENTICATED)
    renamed = await update_project(client, account, project["id"], name="Renamed")
    assert renamed.errors == [], renamed.errors
    assert renamed.data["updateProject"]["jwksUrl"] == JWKS_URL
    # An AUTHENTICATED project cannot lose its JWT settings; a public one can.
    refused = await update_project(client, account, project["id"], jwksUrl=None)
    assert_bad_input(refused, "jwksUrl")
    cleared = await update_project(
        client,
        account,
        project["id"],
        accessMode="PUBLIC",
        jwksUrl=None,
        jwtIssuer=None,
        jwtAudience=None,
    )
    assert cleared.errors == [], cleared.errors
    data = cleared.data["updateProject"]
    assert (data["jwksUrl"], data["jwtIssuer"], data["jwtAudience"]) == (None, None, None)
    assert data["name"] == "Renamed"
    kept = await update_project(client, account, project["id"], name=None)
    assert kept.errors == [] and kept.data["updateProject"]["name"] == "Renamed", kept.body


async def test_internal_jwks_urls_are_refused_without_a_connection(
    client: Client, server: RunningServer, listener: Listener
) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account)
    internal = [
        "http://169.254.169.254/jwks",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        f"http://127.0.0.1:{listener.port}/jwks.json",
        f"http://localhost:{listener.port}/jwks.json",
        f"http://loopback.example.com:{listener.port}/jwks.json",
        "https://intranet.example.com/jwks.json",
        "http://[::1]/jwks",
        "http://[::ffff:169.254.169.254]/jwks",
        "http://10.0.0.7/jwks",
        "http://metadata.google.internal/computeMetadata/v1/",
        "file:///etc/passwd",
        "gopher://login.example.com/",
        "https://user:pw@login.example.com/jwks.json",
        "not a url",
        "/relative/jwks.json",
    ]
    for url in internal:
        for fields in ({**AUTHENTICATED, "jwksUrl": url}, {"jwksUrl": url}):
            response = await create_project(client, account, agent["id"], **fields)
            assert response.codes == ["BAD_USER_INPUT"], (url, response.body)
            assert response.errors[0]["extensions"]["field"] == "jwksUrl", url
    assert await stored_keys(server, account) == []

    project = await new_project(client, account, agent["id"], **AUTHENTICATED)
    moved = await update_project(
        client, account, project["id"], jwksUrl="http://169.254.169.254/jwks"
    )
    assert_bad_input(moved, "jwksUrl")
    assert (await read_project(client, account, project["id"])).data["node"] == project
    await asyncio.sleep(0.05)
    assert listener.connections == []


# --- update, delete, scoping ------------------------------------------------------------


async def test_update_changes_only_what_is_given(client: Client, server: RunningServer) -> None:
    account = await quick_account(server)
    first = await new_agent(client, account, name="First")
    second = await new_agent(client, account, name="Second")
    project = await new_project(
        client, account, first["id"], allowedOrigins=["https://a.example.com"]
    )

    renamed = await update_project(client, account, project["id"], name="Renamed")
    assert renamed.errors == []
    after = renamed.data["updateProject"]
    assert after == {**project, "name": "Renamed"}

    moved = await update_project(
        client,
        account,
        project["id"],
        agentId=second["id"],
        allowedOrigins=["https://B.example.com", "https://*.example.net"],
    )
    assert moved.errors == [], moved.errors
    result = moved.data["updateProject"]
    assert result["agent"] == {"id": second["id"], "name": "Second"}
    assert result["allowedOrigins"] == ["https://b.example.com", "https://*.example.net"]
    assert result["publishableKey"] == project["publishableKey"]
    assert result["name"] == "Renamed"

    cleared = await update_project(client, account, project["id"], allowedOrigins=[])
    assert cleared.data["updateProject"]["allowedOrigins"] == []
    reread = await read_project(client, account, project["id"])
    assert reread.data["node"] == cleared.data["updateProject"]

    for name in ("", "  ", "x" * 101):
        assert_bad_input(await update_project(client, account, project["id"], name=name), "name")


async def test_agents_of_other_organizations_cannot_be_deployed(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    other = await quick_account(server)
    own = await new_agent(client, account)
    foreign = await new_agent(client, other)
    for agent_id in (foreign["id"], to_global_id("Agent", uuid.uuid4()), "garbage"):
        response = await create_project(client, account, agent_id)
        assert response.codes == ["NOT_FOUND"], response.body
    assert await stored_keys(server, account) == []

    project = await new_project(client, account, own["id"])
    moved = await update_project(client, account, project["id"], agentId=foreign["id"])
    assert moved.codes == ["NOT_FOUND"]
    assert (await read_project(client, account, project["id"])).data["node"] == project


async def test_other_organizations_projects_are_not_found(
    client: Client, server: RunningServer
) -> None:
    owner = await quick_account(server)
    outsider = await quick_account(server)
    agent = await new_agent(client, owner)
    project = await new_project(client, owner, agent["id"])
    missing = to_global_id("Project", uuid.uuid4())
    for project_id in (project["id"], missing):
        # API.md: node(id) is null, without an error, for foreign and unknown IDs alike.
        read = await read_project(client, outsider, project_id)
        assert (read.errors, read.data) == ([], {"node": None}), read.body
        for response in [
            await update_project(client, outsider, project_id, name="Mine"),
            await client.execute(ROTATE_KEY, {"id": project_id}, token=outsider.access_token),
            await client.execute(DELETE_PROJECT, {"id": project_id}, token=outsider.access_token),
        ]:
            assert response.codes == ["NOT_FOUND"], response.body
    assert (await read_project(client, owner, project["id"])).data["node"] == project
    listing = await client.execute(
        PROJECT_PAGE, {"id": owner.organization_id, "first": 10}, token=outsider.access_token
    )
    assert listing.codes == ["NOT_FOUND"]


async def test_delete_removes_the_project_and_its_key(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account)
    kept = await new_project(client, account, agent["id"], name="Kept")
    doomed = await new_project(client, account, agent["id"], name="Doomed")
    deleted = await client.execute(DELETE_PROJECT, {"id": doomed["id"]}, token=account.access_token)
    assert deleted.errors == []
    assert deleted.data == {"deleteProject": True}
    gone = await read_project(client, account, doomed["id"])
    assert (gone.errors, gone.data) == ([], {"node": None})
    assert await stored_keys(server, account) == [kept["publishableKey"]]
    again = await client.execute(DELETE_PROJECT, {"id": doomed["id"]}, token=account.access_token)
    assert again.codes == ["NOT_FOUND"]
    rotate = await client.execute(ROTATE_KEY, {"id": doomed["id"]}, token=account.access_token)
    assert rotate.codes == ["NOT_FOUND"]


async def test_editors_manage_projects_and_viewers_only_read(
    client: Client, server: RunningServer
) -> None:
    owner, as_editor, as_viewer = await owner_editor_viewer(client, server)
    editor, viewer = as_editor, as_viewer  # the same users and tokens
    agent = await new_agent(client, owner)

    project = await new_project(client, as_editor, agent["id"])
    assert (await update_project(client, as_editor, project["id"], name="Ed")).errors == []
    rotated = await client.execute(ROTATE_KEY, {"id": project["id"]}, token=editor.access_token)
    assert rotated.errors == []

    assert (await create_project(client, as_viewer, agent["id"])).codes == ["FORBIDDEN"]
    assert (await update_project(client, as_viewer, project["id"], name="V")).codes == ["FORBIDDEN"]
    for mutation in (ROTATE_KEY, DELETE_PROJECT):
        response = await client.execute(mutation, {"id": project["id"]}, token=viewer.access_token)
        assert response.codes == ["FORBIDDEN"], response.body
    seen = await read_project(client, as_viewer, project["id"])
    assert seen.data["node"]["name"] == "Ed"
    assert seen.data["node"]["publishableKey"] == rotated.data["rotateProjectKey"]["publishableKey"]

    gone = await client.execute(DELETE_PROJECT, {"id": project["id"]}, token=editor.access_token)
    assert gone.data == {"deleteProject": True}


async def test_projects_page_like_other_lists(client: Client, server: RunningServer) -> None:
    account = await quick_account(server)
    agent = await new_agent(client, account)
    names = [f"Site {n}" for n in range(7)]
    for name in names:
        await new_project(client, account, agent["id"], name=name)
    seen: list[str] = []
    after: str | None = None
    while True:
        response = await client.execute(
            PROJECT_PAGE,
            {"id": account.organization_id, "first": 3, "after": after},
            token=account.access_token,
        )
        assert response.errors == [], response.errors
        connection = response.data["organization"]["projects"]
        seen += [edge["node"]["name"] for edge in connection["edges"]]
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert seen == names
    too_many = await client.execute(
        PROJECT_PAGE, {"id": account.organization_id, "first": 101}, token=account.access_token
    )
    assert too_many.codes == ["BAD_USER_INPUT"]
    assert too_many.errors[0]["extensions"]["field"] == "first"
