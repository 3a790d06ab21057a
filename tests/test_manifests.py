"""Manifests: OpenAPI documents turned into the operations an agent may call.

Two real-world documents live in ``tests/data``: the Swagger Petstore (OpenAPI 3.0,
YAML) and a 3.1 JSON document whose schemas refer to themselves and to each other.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
import yaml
from aiohttp import web
from sqlalchemy import func, select

from kindrobots.db.models import Manifest, ManifestVersion
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import openapi
from tests.conftest import (
    Account,
    Client,
    Response,
    RunningServer,
    make_settings,
    start_server,
)
from tests.documents import openapi_document as document
from tests.org_helpers import quick_account
from tests.servers import Listener, serving

DATA = Path(__file__).parent / "data"

MANIFEST_FIELDS = """
  id name version sourceUrl createdAt
  operations { operationId method path summary parameters }
"""
CREATE_MANIFEST = f"""
mutation Create($input: CreateManifestInput!) {{
  createManifest(input: $input) {{ {MANIFEST_FIELDS} }}
}}
"""
IMPORT_MANIFEST = f"""
mutation Import($input: ImportManifestInput!) {{
  importManifest(input: $input) {{ {MANIFEST_FIELDS} }}
}}
"""
DELETE_MANIFEST = "mutation Delete($id: ID!) { deleteManifest(id: $id) }"
MANIFEST_NODE = (
    f"query Node($id: ID!) {{ node(id: $id) {{ ... on Manifest {{ {MANIFEST_FIELDS} }} }} }}"
)
MANIFEST_LIST = """
query Manifests($id: ID!) {
  organization(id: $id) { manifests(first: 100) { edges { node { id name version } } } }
}
"""
CREATE_AGENT = """
mutation CreateAgent($input: CreateAgentInput!) { createAgent(input: $input) { id } }
"""
AGENT_MANIFESTS = """
query Agent($id: ID!) {
  node(id: $id) {
    ... on Agent { manifests { id name version operations { operationId method path } } }
  }
}
"""


def data_file(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def many_operations(count: int) -> str:
    paths = {f"/items/{n}": {"get": {"operationId": f"item{n}"}} for n in range(count)}
    return json.dumps(document(paths))


def nested(depth: int) -> dict[str, Any]:
    """A value that, under a top-level key, makes the document ``depth`` levels deep."""
    inner: dict[str, Any] = {}
    for _ in range(depth - 2):
        inner = {"x": inner}
    return inner


async def create_manifest(client: Client, account: Account, name: str, text: str) -> Response:
    return await client.execute(
        CREATE_MANIFEST,
        {"input": {"organizationId": account.organization_id, "name": name, "openapi": text}},
        token=account.access_token,
    )


async def created(client: Client, account: Account, name: str, text: str) -> dict[str, Any]:
    response = await create_manifest(client, account, name, text)
    assert response.errors == [], response.errors
    manifest: dict[str, Any] = response.data["createManifest"]
    return manifest


async def stored_manifests(server: RunningServer, account: Account, name: str) -> int:
    """Manifest rows with ``name`` in the account's organization, read from the database."""
    organization_id = from_global_id(account.organization_id, "Organization")
    async with server.services.read() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Manifest)
            .where(Manifest.organization_id == organization_id, Manifest.name == name)
        )
    return int(count or 0)


async def stored_versions(server: RunningServer, manifest_id: str) -> list[ManifestVersion]:
    raw = from_global_id(manifest_id, "Manifest")
    async with server.services.read() as session:
        rows = await session.scalars(
            select(ManifestVersion)
            .where(ManifestVersion.manifest_id == raw)
            .order_by(ManifestVersion.version)
        )
        return list(rows.all())


def refs_in(value: Any) -> Iterator[Any]:
    """Every ``$ref`` anywhere inside a JSON value."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "$ref":
                yield child
            yield from refs_in(child)
    elif isinstance(value, list):
        for child in value:
            yield from refs_in(child)


def by_id(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {operation["operationId"]: operation for operation in manifest["operations"]}


def assert_refused(response: Response, field: str = "openapi") -> None:
    assert response.codes == ["BAD_USER_INPUT"], response.body
    assert response.errors[0]["extensions"]["field"] == field
    assert response.data is None


# --- the two committed real-world documents ---------------------------------------------

CATEGORY = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "format": "int64", "example": 1},
        "name": {"type": "string", "example": "Dogs"},
    },
}
TAG = {
    "type": "object",
    "properties": {"id": {"type": "integer", "format": "int64"}, "name": {"type": "string"}},
}
PET = {
    "required": ["name", "photoUrls"],
    "type": "object",
    "properties": {
        "id": {"type": "integer", "format": "int64", "example": 10},
        "name": {"type": "string", "example": "doggie"},
        "category": CATEGORY,
        "photoUrls": {"type": "array", "items": {"type": "string"}},
        "tags": {"type": "array", "items": TAG},
        "status": {
            "type": "string",
            "description": "pet status in the store",
            "enum": ["available", "pending", "sold"],
        },
    },
}
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "format": "int64", "example": 10},
        "petId": {"type": "integer", "format": "int64", "example": 198772},
        "quantity": {"type": "integer", "format": "int32", "example": 7},
        # YAML would read this as a timestamp; JSON Schema only knows the text.
        "shipDate": {"type": "string", "format": "date-time", "example": "2024-05-01T10:00:00Z"},
        "status": {
            "type": "string",
            "description": "Order Status",
            "example": "approved",
            "enum": ["placed", "approved", "delivered"],
        },
        "complete": {"type": "boolean"},
    },
}
PETSTORE_OPERATIONS = [
    ("updatePet", "PUT", "/pet"),
    ("addPet", "POST", "/pet"),
    ("findPetsByStatus", "GET", "/pet/findByStatus"),
    ("findPetsByTags", "GET", "/pet/findByTags"),
    ("getPetById", "GET", "/pet/{petId}"),
    ("updatePetWithForm", "POST", "/pet/{petId}"),
    ("deletePet", "DELETE", "/pet/{petId}"),
    ("uploadFile", "POST", "/pet/{petId}/uploadImage"),
    ("getInventory", "GET", "/store/inventory"),
    ("placeOrder", "POST", "/store/order"),
    ("getOrderById", "GET", "/store/order/{orderId}"),
    ("deleteOrder", "DELETE", "/store/order/{orderId}"),
    ("createUser", "POST", "/user"),
    ("createUsersWithListInput", "POST", "/user/createWithList"),
    ("loginUser", "GET", "/user/login"),
    ("logoutUser", "GET", "/user/logout"),
    ("getUserByName", "GET", "/user/{username}"),
    ("updateUser", "PUT", "/user/{username}"),
    ("deleteUser", "DELETE", "/user/{username}"),
]


async def test_petstore_3_0_yaml_becomes_its_operations_with_resolved_schemas(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    manifest = await created(client, account, "Petstore", data_file("petstore-3.0.yaml"))

    assert manifest["name"] == "Petstore"
    assert manifest["version"] == 1
    assert manifest["sourceUrl"] is None
    assert [(op["operationId"], op["method"], op["path"]) for op in manifest["operations"]] == (
        PETSTORE_OPERATIONS
    )
    for operation in manifest["operations"]:
        assert list(refs_in(operation["parameters"])) == [], operation["operationId"]
        assert operation["parameters"]["type"] == "object"
    operations = by_id(manifest)
    assert operations["getPetById"]["summary"] == "Find pet by ID"

    # A path-level $ref'd parameter applies to every operation of the path ...
    assert operations["getPetById"]["parameters"] == {
        "type": "object",
        "properties": {"petId": {"type": "integer", "format": "int64", "description": "ID of pet"}},
        "required": ["petId"],
    }
    # ... and an operation-level parameter of the same name and location replaces it.
    assert operations["deletePet"]["parameters"] == {
        "type": "object",
        "properties": {
            "petId": {"type": "integer", "format": "int64", "description": "Pet id to delete"},
            "api_key": {"type": "string"},
        },
        "required": ["petId"],
    }
    assert operations["findPetsByStatus"]["parameters"] == {
        "type": "object",
        "properties": {
            "status": {
                "type": "string",
                "default": "available",
                "enum": ["available", "pending", "sold"],
                "description": "Status values that need to be considered for filter",
            }
        },
    }
    # A $ref'd request body (JSON chosen over XML), its schema's own $refs inlined.
    assert operations["addPet"]["parameters"] == {
        "type": "object",
        "properties": {"body": PET},
        "required": ["body"],
    }
    assert operations["updatePet"]["parameters"] == operations["addPet"]["parameters"]
    assert operations["placeOrder"]["parameters"] == {
        "type": "object",
        "properties": {"body": ORDER},
        "required": ["body"],
    }
    users = operations["createUsersWithListInput"]["parameters"]
    assert "required" not in users
    assert users["properties"]["body"]["type"] == "array"
    assert users["properties"]["body"]["items"]["properties"]["userStatus"] == {
        "type": "integer",
        "description": "User Status",
        "format": "int32",
        "example": 1,
    }
    # A non-JSON body is not an argument; the operation keeps its other parameters.
    assert operations["uploadFile"]["parameters"] == {
        "type": "object",
        "properties": {
            "petId": {"type": "integer", "format": "int64", "description": "ID of pet"},
            "additionalMetadata": {"type": "string", "description": "Additional Metadata"},
        },
        "required": ["petId"],
    }
    assert operations["getInventory"]["parameters"] == {"type": "object", "properties": {}}
    assert set(operations["getOrderById"]["parameters"]["properties"]) == {"orderId"}
    assert operations["updateUser"]["parameters"]["required"] == ["username"]

    (version,) = await stored_versions(server, manifest["id"])
    assert version.version == 1
    assert [op["operationId"] for op in version.operations] == [
        op_id for op_id, _, _ in PETSTORE_OPERATIONS
    ]
    assert version.servers == ["/api/v3"]


RECURSIVE_NODE = {"type": "object", "description": "Node (recursive; see above)"}
NODE = {
    "type": "object",
    "required": ["value"],
    "properties": {
        "value": {"type": "string"},
        "weight": {"type": ["number", "null"]},
        "children": {"type": "array", "items": RECURSIVE_NODE},
        "parent": RECURSIVE_NODE,
    },
}
TREE = {
    "type": "object",
    "required": ["name", "root"],
    "properties": {"name": {"type": "string", "examples": ["Oak"]}, "root": NODE},
}


async def test_openapi_3_1_json_resolves_refs_and_cuts_cycles(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    text = data_file("tree-3.1.json")
    manifest = await created(client, account, "Forest", text)

    assert [(op["operationId"], op["method"], op["path"]) for op in manifest["operations"]] == [
        ("listTrees", "GET", "/trees"),
        ("createTree", "POST", "/trees"),
        ("getTree", "GET", "/trees/{treeId}"),
        # No operationId in the document: derived from method and path.
        ("put__trees_treeId", "PUT", "/trees/{treeId}"),
        ("delete__trees_treeId", "DELETE", "/trees/{treeId}"),
        ("addChild", "POST", "/nodes/{nodeId}/children"),
        ("linkPair", "POST", "/pairs"),
    ]
    for operation in manifest["operations"]:
        assert list(refs_in(operation["parameters"])) == [], operation["operationId"]
    operations = by_id(manifest)
    # Without a summary the description stands in.
    assert operations["delete__trees_treeId"]["summary"] == "Fell a tree and all of its nodes."

    # A $ref'd parameter whose schema is itself a $ref, and a 3.1 type list.
    assert operations["listTrees"]["parameters"] == {
        "type": "object",
        "properties": {
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "default": 20,
                "description": "How many trees at most",
            },
            "species": {"type": ["string", "null"]},
        },
    }
    # Self-reference: Node is expanded once, then marked recursive.
    assert operations["createTree"]["parameters"] == {
        "type": "object",
        "properties": {"body": TREE},
        "required": ["body"],
    }
    assert operations["addChild"]["parameters"] == {
        "type": "object",
        "properties": {"nodeId": {"type": "string"}, "body": NODE},
        "required": ["nodeId", "body"],
    }
    assert operations["put__trees_treeId"]["parameters"] == {
        "type": "object",
        "properties": {"treeId": {"type": "string", "format": "uuid"}, "body": TREE},
        "required": ["treeId"],
    }
    # Mutual reference A -> B -> A.
    assert operations["linkPair"]["parameters"] == {
        "type": "object",
        "properties": {
            "body": {
                "type": "object",
                "properties": {
                    "label": {"const": "a"},
                    "b": {
                        "type": "object",
                        "properties": {
                            "label": {"const": "b"},
                            "a": {"type": "object", "description": "A (recursive; see above)"},
                        },
                    },
                },
            }
        },
    }

    # The same document spelled as YAML is the same manifest.
    as_yaml = yaml.safe_dump(json.loads(text), sort_keys=False)
    again = await created(client, account, "Forest as YAML", as_yaml)
    assert again["operations"] == manifest["operations"]


async def test_yaml_quirks_still_make_json_manifests(client: Client, server: RunningServer) -> None:
    """YAML reads 2024-01-01 as a date, 200 as a number and an empty value as null."""
    account = await quick_account(server)
    text = """
openapi: 3.0.3
info: {title: Calendar, version: 2024-01-01}
paths:
  /events:
    get:
      operationId: listEvents
      parameters:
        - name: since
          in: query
          schema: {type: string, format: date, example: 2024-01-01, default: 2023-12-31}
        - name: at
          in: query
          schema: {type: string, format: date-time, enum: [2024-01-01T10:00:00Z]}
      responses:
        200: {description: ok}
    delete:
      operationId: clearEvents
      parameters:
      responses:
        204: {description: gone}
"""
    manifest = await created(client, account, "Calendar", text)
    operations = by_id(manifest)
    assert operations["listEvents"]["parameters"]["properties"] == {
        "since": {
            "type": "string",
            "format": "date",
            "example": "2024-01-01",
            "default": "2023-12-31",
        },
        "at": {"type": "string", "format": "date-time", "enum": ["2024-01-01T10:00:00Z"]},
    }
    assert operations["clearEvents"]["parameters"] == {"type": "object", "properties": {}}


# --- documents that are refused ---------------------------------------------------------

BILLION_LAUGHS = """
openapi: 3.0.3
info: {title: lol, version: '1'}
paths: {}
x-a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
x-b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
x-c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
x-d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
x-e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
x-f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
x-g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
x-h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
x-i: [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _fan_out(levels: int, width: int) -> dict[str, Any]:
    """Schemas whose $refs fan out: small to write, exponential to expand."""
    schemas: dict[str, Any] = {f"S{levels}": {"type": "string"}}
    for level in range(levels):
        schemas[f"S{level}"] = {
            "type": "object",
            "properties": {
                f"p{n}": {"$ref": f"#/components/schemas/S{level + 1}"} for n in range(width)
            },
        }
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/S0"}}}}
    return document(
        {"/boom": {"post": {"operationId": "boom", "requestBody": body}}},
        extra={"components": {"schemas": schemas}},
    )


BAD_DOCUMENTS: dict[str, str] = {
    "broken syntax": "{ this is: [not valid",
    "plain text": "Hello, I am not an API description.",
    "a JSON list": "[1, 2, 3]",
    "empty": "",
    "YAML aliases": BILLION_LAUGHS,
    "YAML python tag": "openapi: 3.0.3\ninfo: !!python/object/apply:os.getpid []\npaths: {}\n",
    "YAML binary value": (
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n"
        "paths: {/a: {get: {parameters: [{name: q, in: query, "
        "schema: {type: string, example: !!binary aGVsbG8=}}]}}}\n"
    ),
    "not-a-number default": (
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n"
        "paths: {/a: {get: {parameters: [{name: q, in: query, "
        "schema: {type: number, default: .nan}}]}}}\n"
    ),
    "swagger 2.0": json.dumps({"swagger": "2.0", "info": {"title": "t"}, "paths": {}}),
    "openapi 2.0": json.dumps(document(extra={"openapi": "2.0"})),
    "openapi 4.0.0": json.dumps(document(extra={"openapi": "4.0.0"})),
    "openapi number": "openapi: 3.0\ninfo: {title: t, version: '1'}\npaths: {}\n",
    "no info title": json.dumps({**document(), "info": {"version": "1"}}),
    "missing paths": json.dumps({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}}),
    "paths is a list": json.dumps(document([])),  # type: ignore[arg-type]
    "path without slash": json.dumps(document({"pets": {"get": {}}})),
    "operation is a string": json.dumps(document({"/a": {"get": "nope"}})),
    "parameter without in": json.dumps(
        document({"/a": {"get": {"parameters": [{"name": "q", "schema": {}}]}}})
    ),
    "parameters is an object": json.dumps(
        document({"/a": {"get": {"parameters": {"name": "q", "in": "query"}}}})
    ),
    "dangling $ref": json.dumps(
        document({"/a": {"get": {"parameters": [{"$ref": "#/components/parameters/Nope"}]}}})
    ),
    "$ref chain loop": json.dumps(
        document(
            {"/a": {"get": {"parameters": [{"$ref": "#/components/parameters/P"}]}}},
            extra={"components": {"parameters": {"P": {"$ref": "#/components/parameters/P"}}}},
        )
    ),
    "remote $ref to a file": json.dumps(
        document({"/a": {"get": {"parameters": [{"$ref": "other.yaml#/Limit"}]}}})
    ),
    "exponential $ref fan-out": json.dumps(_fan_out(levels=12, width=4)),
    "201 operations": many_operations(201),
    "65 levels deep": json.dumps(document(extra={"x-deep": nested(65)})),
    "100000 levels deep JSON": (
        json.dumps(document())[:-1] + ', "x-deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    ),
    "100000 levels deep YAML": (
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths: {}\nx-deep: "
        + "[" * 100_000
        + "]" * 100_000
    ),
}


async def test_bad_documents_are_refused_and_nothing_is_stored(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    for number, (case, text) in enumerate(BAD_DOCUMENTS.items()):
        name = f"Bad {number}"
        response = await create_manifest(client, account, name, text)
        assert response.codes == ["BAD_USER_INPUT"], (case, response.body)
        assert response.errors[0]["extensions"]["field"] == "openapi", case
        assert response.errors[0]["message"] != "Unexpected error.", case
        assert response.data is None, case
        assert await stored_manifests(server, account, name) == 0, case


async def test_limits_are_exact(client: Client, server: RunningServer) -> None:
    """200 operations and 64 levels pass; one more of either is refused."""
    account = await quick_account(server)
    manifest = await created(client, account, "Two hundred", many_operations(200))
    assert len(manifest["operations"]) == 200
    assert manifest["operations"][-1]["operationId"] == "item199"

    deep = await created(
        client, account, "Deep", json.dumps(document(extra={"x-deep": nested(64)}))
    )
    assert [op["operationId"] for op in deep["operations"]] == ["ping"]
    refused = await create_manifest(
        client, account, "Too deep", json.dumps(document(extra={"x-deep": nested(65)}))
    )
    assert_refused(refused)
    assert "64" in refused.errors[0]["message"]


def padded(size: int) -> str:
    """A valid JSON document of exactly ``size`` bytes (UTF-8)."""
    skeleton = json.dumps(document(extra={"x-padding": ""}))
    return skeleton.replace(
        '"x-padding": ""', '"x-padding": "' + "a" * (size - len(skeleton)) + '"'
    )


async def test_a_document_of_one_megabyte_passes_and_one_byte_more_is_refused(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    limit = openapi.MAX_DOCUMENT_BYTES
    assert len(padded(limit).encode()) == limit
    manifest = await created(client, account, "Big", padded(limit))
    assert [op["operationId"] for op in manifest["operations"]] == ["ping"]

    response = await create_manifest(client, account, "Too big", padded(limit + 1))
    assert_refused(response)
    assert await stored_manifests(server, account, "Too big") == 0
    # Size is counted in bytes: half a million two-byte characters are over the limit too.
    wide = json.dumps(document(extra={"x-padding": "é" * (limit // 2)}), ensure_ascii=False)
    assert len(wide) < limit < len(wide.encode())
    # Sent as a browser would (JSON.stringify keeps UTF-8 rather than \\u escapes).
    payload = {
        "query": CREATE_MANIFEST,
        "variables": {
            "input": {
                "organizationId": account.organization_id,
                "name": "Too wide",
                "openapi": wide,
            }
        },
    }
    async with client.http.post(
        f"{server.base_url}/graphql",
        data=json.dumps(payload, ensure_ascii=False).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {account.access_token}",
        },
    ) as raw:
        body = await raw.json()
    assert body["data"] is None
    assert [error["extensions"] for error in body["errors"]] == [
        {"code": "BAD_USER_INPUT", "field": "openapi"}
    ]
    assert await stored_manifests(server, account, "Too wide") == 0


async def test_remote_refs_are_refused_without_fetching(
    client: Client, server: RunningServer, listener: Listener
) -> None:
    account = await quick_account(server)
    remote = f"http://127.0.0.1:{listener.port}/schemas.json"
    for number, ref in enumerate(
        [f"{remote}#/Pet", f"{remote}", "https://example.com/pet.json#/Pet", "//example.com/x"]
    ):
        body = {"content": {"application/json": {"schema": {"$ref": ref}}}}
        text = json.dumps(
            document({"/pets": {"post": {"operationId": "add", "requestBody": body}}})
        )
        response = await create_manifest(client, account, f"Remote {number}", text)
        assert_refused(response)
        assert "local" in response.errors[0]["message"]
        assert await stored_manifests(server, account, f"Remote {number}") == 0
    await asyncio.sleep(0.05)
    assert listener.connections == []


async def test_names_are_validated(client: Client, server: RunningServer) -> None:
    account = await quick_account(server)
    for name in ["", "   ", "x" * 101, "line\nbreak"]:
        response = await create_manifest(client, account, name, json.dumps(document()))
        assert_refused(response, "name")


# --- versions ---------------------------------------------------------------------------


async def test_same_name_makes_a_new_version_that_agents_follow(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    first = await created(client, account, "Shop", json.dumps(document()))
    assert first["version"] == 1
    agent = await client.execute(
        CREATE_AGENT,
        {
            "input": {
                "organizationId": account.organization_id,
                "name": "Clerk",
                "model": "gpt-4o",
                "manifestIds": [first["id"]],
            }
        },
        token=account.access_token,
    )
    assert agent.errors == [], agent.errors
    agent_id = agent.data["createAgent"]["id"]

    second = await created(client, account, "Shop", data_file("petstore-3.0.yaml"))
    assert second["id"] == first["id"]
    assert second["version"] == 2
    assert [op["operationId"] for op in second["operations"]][:2] == ["updatePet", "addPet"]

    seen = await client.execute(AGENT_MANIFESTS, {"id": agent_id}, token=account.access_token)
    assert seen.errors == []
    (manifest,) = seen.data["node"]["manifests"]
    assert manifest["id"] == first["id"]
    assert manifest["version"] == 2
    assert [(op["operationId"], op["method"], op["path"]) for op in manifest["operations"]] == (
        PETSTORE_OPERATIONS
    )

    # One manifest in the list; both versions kept in the database.
    listed = await client.execute(
        MANIFEST_LIST, {"id": account.organization_id}, token=account.access_token
    )
    names = [edge["node"] for edge in listed.data["organization"]["manifests"]["edges"]]
    assert names == [{"id": first["id"], "name": "Shop", "version": 2}]
    versions = await stored_versions(server, first["id"])
    assert [v.version for v in versions] == [1, 2]
    assert [op["operationId"] for op in versions[0].operations] == ["ping"]

    # A refused re-upload leaves the current version alone.
    assert_refused(await create_manifest(client, account, "Shop", "swagger: '2.0'"))
    node = await client.execute(MANIFEST_NODE, {"id": first["id"]}, token=account.access_token)
    assert node.data["node"]["version"] == 2
    assert len(await stored_versions(server, first["id"])) == 2


async def test_simultaneous_uploads_under_one_name_become_consecutive_versions(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    responses = await asyncio.gather(
        *(create_manifest(client, account, "Busy", many_operations(n + 1)) for n in range(4))
    )
    for response in responses:
        assert response.errors == [], response.errors
    manifests = [response.data["createManifest"] for response in responses]
    assert {manifest["id"] for manifest in manifests} == {manifests[0]["id"]}
    assert sorted(manifest["version"] for manifest in manifests) == [1, 2, 3, 4]
    versions = await stored_versions(server, manifests[0]["id"])
    assert [version.version for version in versions] == [1, 2, 3, 4]
    # Every upload was kept: the four documents had 1, 2, 3 and 4 operations.
    assert sorted(len(version.operations) for version in versions) == [1, 2, 3, 4]


async def test_same_name_in_another_organization_is_another_manifest(
    client: Client, server: RunningServer
) -> None:
    one = await quick_account(server)
    two = await quick_account(server)
    a = await created(client, one, "Shared name", json.dumps(document()))
    b = await created(client, two, "Shared name", json.dumps(document()))
    assert a["id"] != b["id"]
    assert (a["version"], b["version"]) == (1, 1)
    # Neither organization can see the other's manifest.
    response = await client.execute(MANIFEST_NODE, {"id": a["id"]}, token=two.access_token)
    missing = await client.execute(
        MANIFEST_NODE, {"id": to_global_id("Manifest", uuid.uuid4())}, token=two.access_token
    )
    assert (response.errors, response.data) == ([], {"node": None})
    assert response.body == missing.body


async def test_deleting_a_manifest_detaches_it_from_agents(
    client: Client, server: RunningServer
) -> None:
    account = await quick_account(server)
    outsider = await quick_account(server)
    manifest = await created(client, account, "Temporary", json.dumps(document()))
    agent = await client.execute(
        CREATE_AGENT,
        {
            "input": {
                "organizationId": account.organization_id,
                "name": "Uses it",
                "model": "gpt-4o",
                "manifestIds": [manifest["id"]],
            }
        },
        token=account.access_token,
    )
    agent_id = agent.data["createAgent"]["id"]

    foreign = await client.execute(
        DELETE_MANIFEST, {"id": manifest["id"]}, token=outsider.access_token
    )
    assert foreign.codes == ["NOT_FOUND"]
    assert await stored_manifests(server, account, "Temporary") == 1

    deleted = await client.execute(
        DELETE_MANIFEST, {"id": manifest["id"]}, token=account.access_token
    )
    assert deleted.errors == []
    assert deleted.data == {"deleteManifest": True}
    assert await stored_manifests(server, account, "Temporary") == 0
    assert await stored_versions(server, manifest["id"]) == []
    gone = await client.execute(MANIFEST_NODE, {"id": manifest["id"]}, token=account.access_token)
    assert (gone.errors, gone.data) == ([], {"node": None})
    seen = await client.execute(AGENT_MANIFESTS, {"id": agent_id}, token=account.access_token)
    assert seen.data["node"]["manifests"] == []
    again = await client.execute(
        DELETE_MANIFEST, {"id": manifest["id"]}, token=account.access_token
    )
    assert again.codes == ["NOT_FOUND"]


# --- importManifest ---------------------------------------------------------------------


@dataclass
class DocumentServer:
    """A local web server that serves OpenAPI documents and counts the requests."""

    port: int = 0
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest_asyncio.fixture
async def documents() -> AsyncIterator[DocumentServer]:
    record = DocumentServer()
    pages = {
        "/petstore.yaml": data_file("petstore-3.0.yaml"),
        "/tree.json": data_file("tree-3.1.json"),
        "/swagger.json": json.dumps({"swagger": "2.0", "info": {"title": "t"}, "paths": {}}),
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        record.requests.append(request.path)
        if request.path == "/moved":
            raise web.HTTPFound("/tree.json")
        if request.path not in pages:
            raise web.HTTPNotFound()
        return web.Response(text=pages[request.path], content_type="application/yaml")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    async with serving(app) as record.port:
        yield record


async def import_manifest(client: Client, account: Account, name: str, url: str) -> Response:
    return await client.execute(
        IMPORT_MANIFEST,
        {"input": {"organizationId": account.organization_id, "name": name, "url": url}},
        token=account.access_token,
    )


async def test_import_from_an_allowed_server_stores_a_versioned_manifest(
    tmp_path: Path,
    server: RunningServer,
    http: aiohttp.ClientSession,
    documents: DocumentServer,
) -> None:
    # A second instance on the same database, whose allow-list admits the document server.
    settings = make_settings(
        tmp_path,
        server.backend,
        database_url=server.settings.database_url,
        outbound_allow=f"127.0.0.1:{documents.port}",
    )
    runner, running = await start_server(settings)
    try:
        client = Client(http, running.base_url)
        account = await quick_account(running)
        url = documents.url("/petstore.yaml")
        response = await import_manifest(client, account, "Imported", url)
        assert response.errors == [], response.errors
        manifest = response.data["importManifest"]
        assert manifest["version"] == 1
        assert manifest["sourceUrl"] == url
        assert [(op["operationId"], op["method"], op["path"]) for op in manifest["operations"]] == (
            PETSTORE_OPERATIONS
        )
        (version,) = await stored_versions(running, manifest["id"])
        # The document's relative server is relative to where it was fetched from.
        assert version.servers == [documents.url("/api/v3")]
        assert version.source_url == url

        # Importing again (here through a redirect) is the next version of the same manifest.
        again = await import_manifest(client, account, "Imported", documents.url("/moved"))
        assert again.errors == [], again.errors
        assert again.data["importManifest"]["id"] == manifest["id"]
        assert again.data["importManifest"]["version"] == 2
        assert again.data["importManifest"]["sourceUrl"] == documents.url("/tree.json")
        assert by_id(again.data["importManifest"]).keys() >= {"createTree", "linkPair"}

        # An invalid document fetched from the URL is refused like an uploaded one.
        bad = await import_manifest(client, account, "Swagger", documents.url("/swagger.json"))
        assert_refused(bad)
        missing = await import_manifest(client, account, "Missing", documents.url("/nope"))
        assert_refused(missing, "url")
        assert "404" in missing.errors[0]["message"]
        for name in ("Swagger", "Missing"):
            assert await stored_manifests(running, account, name) == 0
        assert documents.requests == [
            "/petstore.yaml",
            "/moved",
            "/tree.json",
            "/swagger.json",
            "/nope",
        ]
    finally:
        await runner.cleanup()


async def test_import_from_loopback_without_allow_entry_is_refused_without_a_connection(
    client: Client, server: RunningServer, listener: Listener
) -> None:
    account = await quick_account(server)
    for number, url in enumerate(
        [
            f"http://127.0.0.1:{listener.port}/openapi.json",
            f"http://localhost:{listener.port}/openapi.json",
            f"http://[::1]:{listener.port}/openapi.json",
            f"http://2130706433:{listener.port}/openapi.json",
            "http://169.254.169.254/latest/meta-data/",
            f"file:///{DATA / 'petstore-3.0.yaml'}",
        ]
    ):
        response = await import_manifest(client, account, f"Internal {number}", url)
        assert_refused(response, "url")
        assert await stored_manifests(server, account, f"Internal {number}") == 0
    await asyncio.sleep(0.05)
    assert listener.connections == []


async def test_outsiders_and_signed_out_callers_cannot_add_manifests(
    client: Client, server: RunningServer
) -> None:
    owner = await quick_account(server)
    outsider = await quick_account(server)
    text = json.dumps(document())
    create = {"organizationId": owner.organization_id, "name": "Foreign", "openapi": text}
    imported = {
        "organizationId": owner.organization_id,
        "name": "Foreign",
        "url": "https://example.com/openapi.json",
    }
    for query, variables in ((CREATE_MANIFEST, create), (IMPORT_MANIFEST, imported)):
        foreign = await client.execute(query, {"input": variables}, token=outsider.access_token)
        assert foreign.codes == ["NOT_FOUND"], foreign.body
        signed_out = await client.execute(query, {"input": variables})
        assert signed_out.codes == ["UNAUTHENTICATED"], signed_out.body
    assert await stored_manifests(server, owner, "Foreign") == 0
