"""Operation limits: depth, aliases, tokens, document length, directives, cost, introspection
and batching, over HTTP and WebSocket, and in production without suggestions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import graphql
import pytest
import pytest_asyncio

from kindrobots.config import ConfigError, Settings
from kindrobots.schema import Schema, build_schema
from kindrobots.security.operation_limits import MAX_DOCUMENT_CHARS, OperationAnalysis
from tests.conftest import (
    Client,
    RunningServer,
    make_settings,
    sign_up,
    start_server,
)
from tests.test_dashboard_page import PAGE as DASHBOARD_PAGE

GRAPHQL_RESPONSE = "application/graphql-response+json"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"

# Depth counts fields that have selections: exactly 20 here.
DEPTH_FIELDS = ["me", "memberships"] + ["organization", "members", "edges", "node"] * 4
DEPTH_FIELDS += ["organization", "members"]
DEPTH_20 = "{ " + " { ".join(DEPTH_FIELDS) + " { __typename" + " }" * len(DEPTH_FIELDS) + " }"
ALIASES_100 = "{ " + " ".join(f"a{i}: me {{ user {{ id }} }}" for i in range(100)) + " }"
# 200 KB: once as whitespace around a small query, once as real tokens.
PADDED_200_KB = "{ plans { tier } }" + " " * (200 * 1024)
TOKENS_200_KB = "{ " + "__typename " * (200 * 1024 // 11) + "}"
# More tokens than KR_MAX_TOKENS (5000), well below the 128 KiB length limit.
TOKENS_6000 = "{ " + "__typename " * 6000 + "}"
# 100 members, each with its organization's 100 members: 40,000 objects and more.
NESTED_LISTS = """
query ($id: ID!) {
  organization(id: $id) {
    members(first: 100) {
      edges { node { organization { members(first: 100) { edges { node { user { email } } } } } } }
    }
  }
}
"""
NESTED_BY_VARIABLE = """
query ($id: ID!, $first: Int) {
  organization(id: $id) {
    members(first: $first) {
      edges { node { organization { members(first: $first) { edges { node { role } } } } } }
    }
  }
}
"""
DIRECTIVES_21 = "{ " + " ".join(f"a{i}: __typename @include(if: true)" for i in range(21)) + " }"
# Each fragment spreads the next twice: 2^40 paths, walked once each fragment.
FRAGMENT_FAN_OUT = (
    "{ ...F0 }\n"
    + "".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}\n" for i in range(40))
    + "fragment F40 on Query { plans { tier } }"
)
MISSPELLED = ["{ mee { user { id } } }", "{ me { user { emial } } }"]

# Legitimate dashboard queries must keep working under the default limits.
MEMBERS = """
query ($id: ID!) {
  organization(id: $id) { members(first: 100) { edges { node { role user { email } } } } }
}
"""
AGENTS_PAGE = """
query ($id: ID!) {
  organization(id: $id) {
    agents(first: 100) {
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
# Every operation of every manifest of 100 agents: up to 100 x 20 x 200 objects.
AGENTS_WITH_ALL_OPERATIONS = """
query ($id: ID!) {
  organization(id: $id) {
    agents(first: 100) { edges { node { manifests { operations { operationId } } } } }
  }
}
"""
# The example: five agents with every operation (counted as 20,116 objects before).
FIVE_AGENTS_OPERATIONS = """
query ($id: ID!) {
  organization(id: $id) {
    agents(first: 5) { edges { node { manifests { operations { operationId } } } } }
  }
}
"""
# The same as AGENTS_WITH_ALL_OPERATIONS, through fragments.
ALL_OPERATIONS_BY_FRAGMENTS = """
query ($id: ID!) {
  organization(id: $id) { agents(first: 100) { edges { node { ...Tools } } } }
}
fragment Tools on Agent { manifests { ...Operations } }
fragment Operations on Manifest { operations { operationId } }
"""
DASHBOARD = """
query ($id: ID!) {
  me { user { id email displayName } memberships { role organization { id name tier } } }
  organization(id: $id) {
    id name slug tier createdAt
    members(first: 100) {
      edges { cursor node { role createdAt user { id email } } }
      pageInfo { hasNextPage endCursor }
    }
    invitations { id email role expiresAt }
    llmCredentials { id provider label keyHint }
    projects(first: 50) {
      edges { node { id name publishableKey allowedOrigins accessMode agent { id name } } }
    }
    manifests(first: 50) {
      edges { node { id name version operations { operationId method path } } }
    }
    conversations(first: 50) {
      edges { node { id createdAt messages(first: 50) { edges { node { id role content } } } } }
    }
    auditLog(first: 50) { edges { node { id action actor { id email } createdAt } } }
  }
  plans { tier name adminSeats chatMessagesPerMinute }
}
"""
INTROSPECTION = "{ __schema { queryType { name } } }"


def codes(body: dict[str, Any]) -> set[str]:
    return {error.get("extensions", {}).get("code") for error in body.get("errors") or []}


def messages(body: dict[str, Any]) -> str:
    return " ".join(error["message"] for error in body.get("errors") or [])


async def post(
    http: aiohttp.ClientSession,
    server: RunningServer,
    payload: Any,
    *,
    token: str | None = None,
    accept: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if accept:
        headers["Accept"] = accept
    async with http.post(f"{server.base_url}/graphql", json=payload, headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


def analyse(document: str, variables: dict[str, Any] | None = None) -> OperationAnalysis:
    ast = graphql.parse(document)
    (operation,) = [d for d in ast.definitions if isinstance(d, graphql.OperationDefinitionNode)]
    fragments = {
        d.name.value: d for d in ast.definitions if isinstance(d, graphql.FragmentDefinitionNode)
    }
    return OperationAnalysis(build_schema()._schema, fragments, operation, variables or {}, 100)


# --- the acceptance cases, over HTTP with the default limits ---------------------------------


def test_the_depth_query_is_twenty_deep_and_the_nested_lists_are_costly() -> None:
    assert analyse(DEPTH_20).totals.depth == 20
    assert analyse(ALIASES_100).totals.aliases == 100
    assert analyse(NESTED_LISTS).totals.cost > 20000
    assert analyse(MEMBERS).totals.cost <= 500
    assert analyse(NESTED_BY_VARIABLE, {"first": 100}).totals.cost > 20000
    assert analyse(NESTED_BY_VARIABLE, {"first": 10}).totals.cost < 1000
    # Not given: the argument's default (20) on both levels.
    assert (
        analyse(NESTED_BY_VARIABLE).totals.cost
        == analyse(NESTED_BY_VARIABLE, {"first": 20}).totals.cost
    )
    assert analyse(DIRECTIVES_21).totals.directives == 21


def test_an_agents_operations_count_by_its_tool_bound() -> None:
    # 100 agents x (edge, node, 20 manifests, 200 operations across them), and the page.
    assert analyse(AGENTS_WITH_ALL_OPERATIONS).totals.cost == 22301
    assert analyse(ALL_OPERATIONS_BY_FRAGMENTS).totals.cost == 22301
    assert analyse(FIVE_AGENTS_OPERATIONS).totals.cost == 1116
    assert analyse(DASHBOARD_PAGE).totals.cost <= 20000
    # Outside an agent a manifest still counts every operation it may hold.
    manifests = analyse(
        "query ($id: ID!) { organization(id: $id) { manifests(first: 50) "
        "{ edges { node { operations { operationId } } } } } }"
    )
    assert manifests.totals.cost == 1 + 50 + 50 * (1 + 1 + 200)


@pytest.mark.parametrize(
    ("document", "hint"),
    [
        (DEPTH_20, "nested deeper than the limit of 12"),
        (ALIASES_100, "100 aliases"),
        (PADDED_200_KB, "more than 131072"),
        (TOKENS_200_KB, "more than 131072"),
        (TOKENS_6000, "more than 5000 tokens"),
        (NESTED_LISTS, "objects; the limit is 20000"),
        (DIRECTIVES_21, "21 directives"),
        (FRAGMENT_FAN_OUT, "objects; the limit is 20000"),
        (AGENTS_WITH_ALL_OPERATIONS, "may return 22301 objects"),
        (ALL_OPERATIONS_BY_FRAGMENTS, "may return 22301 objects"),
    ],
    ids=[
        "depth-20",
        "aliases-100",
        "200KB-padded",
        "200KB-tokens",
        "tokens",
        "cost",
        "directives",
        "fan-out",
        "all-operations",
        "all-operations-by-fragments",
    ],
)
async def test_limits_refuse_with_validation_failed(
    server: RunningServer, http: aiohttp.ClientSession, document: str, hint: str
) -> None:
    variables = {"id": "T3JnYW5pemF0aW9uOjA="}
    # Too long a document is also a 413 (issue 2: a clear 4xx), whatever the client accepts.
    too_large = len(document) > MAX_DOCUMENT_CHARS
    async with asyncio.timeout(5):  # a limit that makes the server work for long is no limit
        status, body = await post(http, server, {"query": document, "variables": variables})
    assert status == (413 if too_large else 200), body
    assert body.get("data") is None, body
    assert codes(body) == {VALIDATION_FAILED}, body
    assert hint in messages(body), body
    # GraphQL over HTTP: with the new media type a request error is a 400.
    status, body = await post(
        http, server, {"query": document, "variables": variables}, accept=GRAPHQL_RESPONSE
    )
    assert status == (413 if too_large else 400), body
    assert codes(body) == {VALIDATION_FAILED}, body


async def test_cost_follows_the_variables(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    variables: dict[str, Any] = {"id": account.organization_id, "first": 100}
    status, body = await post(
        http,
        server,
        {"query": NESTED_BY_VARIABLE, "variables": variables},
        token=account.access_token,
    )
    assert codes(body) == {VALIDATION_FAILED}, body
    variables["first"] = 10
    status, body = await post(
        http,
        server,
        {"query": NESTED_BY_VARIABLE, "variables": variables},
        token=account.access_token,
    )
    assert status == 200 and "errors" not in body, body
    (edge,) = body["data"]["organization"]["members"]["edges"]
    assert edge["node"]["organization"]["members"]["edges"] == [{"node": {"role": "OWNER"}}]


@pytest.mark.parametrize(
    "document", [MEMBERS, AGENTS_PAGE, DASHBOARD, DASHBOARD_PAGE, FIVE_AGENTS_OPERATIONS]
)
async def test_dashboard_queries_pass(client: Client, document: str) -> None:
    account = await sign_up(client)
    response = await client.execute(
        document, {"id": account.organization_id}, token=account.access_token
    )
    assert response.errors == [], response.errors
    assert response.data["organization"] is not None


async def test_a_document_just_under_the_length_limit_is_fine(client: Client) -> None:
    padded = "{ plans { tier } }" + " " * (128 * 1024 - 100)
    response = await client.execute(padded)
    assert response.errors == [], response.errors
    assert response.data["plans"]


async def test_graphiql_introspection_passes_in_development(client: Client) -> None:
    response = await client.execute(graphql.get_introspection_query(descriptions=True))
    assert response.errors == [], response.errors
    assert response.data["__schema"]["queryType"]["name"] == "Query"


# --- production: the schema as production builds it, without suggestions --------------------


@pytest.fixture(scope="module")
def production_schema(tmp_path_factory: pytest.TempPathFactory) -> Schema:
    settings = make_settings(
        tmp_path_factory.mktemp("production"),
        "sqlite",
        env="production",
        metrics_port=9100,
        public_url="https://kindrobots.example",
        database_url="postgresql+asyncpg://kr@db.example/kindrobots",
    )
    assert settings.is_production and settings.introspection_mode == "authenticated"
    return build_schema(settings)


@pytest.mark.parametrize(
    "document",
    [DEPTH_20, ALIASES_100, PADDED_200_KB, TOKENS_200_KB, NESTED_LISTS, *MISSPELLED],
    ids=[
        "depth-20",
        "aliases-100",
        "200KB-padded",
        "200KB-tokens",
        "cost",
        "misspelled",
        "nested-misspelled",
    ],
)
async def test_production_refuses_without_suggestions(
    production_schema: Schema, document: str
) -> None:
    result = await production_schema.execute(document, variable_values={"id": "x"})
    assert result.data is None and result.errors
    for error in result.errors:
        assert (error.extensions or {}).get("code") == VALIDATION_FAILED, error
        assert "Did you mean" not in error.message, error.message


async def test_production_refuses_anonymous_introspection(production_schema: Schema) -> None:
    for document in (
        INTROSPECTION,
        '{ __type(name: "User") { fields { name } } }',
        "query { ...F } fragment F on Query { __schema { types { name } } }",
    ):
        result = await production_schema.execute(document)
        assert result.errors, document
        assert {(e.extensions or {}).get("code") for e in result.errors} == {VALIDATION_FAILED}
        assert "introspection has been disabled" in result.errors[0].message
    result = await production_schema.execute("{ __typename }")
    assert result.errors is None and result.data == {"__typename": "Query"}


# --- settings ---------------------------------------------------------------------------------


def test_introspection_setting(tmp_path: Path) -> None:
    assert make_settings(tmp_path, "sqlite").introspection_mode == "on"
    assert make_settings(tmp_path, "sqlite", introspection="off").introspection_mode == "off"
    production = make_settings(
        tmp_path,
        "sqlite",
        env="production",
        metrics_port=9100,
        public_url="https://kindrobots.example",
        database_url="postgresql+asyncpg://kr@db.example/kindrobots",
        introspection="on",
    )
    assert production.introspection_mode == "on"
    with pytest.raises(ConfigError, match="KR_INTROSPECTION"):
        make_settings(tmp_path, "sqlite", introspection="sometimes")
    with pytest.raises(ConfigError, match="KR_MAX_QUERY_DEPTH"):
        make_settings(tmp_path, "sqlite", max_query_depth=0)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KR_INTROSPECTION", "authenticated")
    monkeypatch.setenv("KR_MAX_QUERY_COST", "777")
    monkeypatch.setenv("KR_GRAPHQL_BATCHING", "true")
    settings = Settings()
    assert settings.introspection_mode == "authenticated"
    assert settings.max_query_cost == 777 and settings.graphql_batching
    defaults = Settings.model_construct()
    assert (defaults.max_query_depth, defaults.max_aliases, defaults.max_tokens) == (12, 30, 5000)
    assert (defaults.max_directives, defaults.graphql_batching) == (20, False)


def test_the_printed_schema_does_not_depend_on_settings(tmp_path: Path) -> None:
    strict = make_settings(tmp_path, "sqlite", introspection="off", graphql_batching=True)
    assert build_schema(strict).as_str() == build_schema().as_str()


# --- servers with other settings ----------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def strict(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    """Introspection for signed-in users only, batching on (3 at most), small cost limit."""
    settings = make_settings(
        tmp_path_factory.mktemp("strict"),
        "sqlite",
        introspection="authenticated",
        graphql_batching=True,
        graphql_max_batch=3,
        max_query_cost=50,
        max_query_depth=4,
    )
    runner, running = await start_server(settings)
    yield running
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module")
async def closed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    settings = make_settings(tmp_path_factory.mktemp("closed"), "sqlite", introspection="off")
    runner, running = await start_server(settings)
    yield running
    await runner.cleanup()


async def test_configured_limits_apply(strict: RunningServer, http: aiohttp.ClientSession) -> None:
    account = await sign_up(Client(http, strict.base_url))
    token = account.access_token
    query = "query ($id: ID!) { organization(id: $id) { members(first: %d) { edges { cursor } } } }"
    variables = {"id": account.organization_id}
    _, body = await post(http, strict, {"query": query % 10, "variables": variables}, token=token)
    assert "errors" not in body, body
    _, body = await post(http, strict, {"query": query % 30, "variables": variables}, token=token)
    assert codes(body) == {VALIDATION_FAILED} and "the limit is 50" in messages(body), body
    deep = "{ me { memberships { organization { members { edges { cursor } } } } } }"
    _, body = await post(http, strict, {"query": deep}, token=token)
    assert "nested deeper than the limit of 4" in messages(body), body


async def test_introspection_on_allows_anyone(client: Client) -> None:
    response = await client.execute(INTROSPECTION)
    assert response.errors == [] and response.data["__schema"]["queryType"]["name"] == "Query"


async def test_introspection_authenticated(
    strict: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, strict.base_url)
    account = await sign_up(client)
    for document in (
        INTROSPECTION,
        '{ __type(name: "User") { name } }',
        "query { ...F } fragment F on Query { __schema { queryType { name } } }",
    ):
        refused = await client.execute(document)
        assert set(refused.codes) == {VALIDATION_FAILED}, refused.body
        assert refused.data is None
        allowed = await client.execute(document, token=account.access_token)
        assert allowed.errors == [], allowed.body
    typename = await client.execute("{ __typename }")
    assert typename.errors == [] and typename.data == {"__typename": "Query"}
    # A token that does not verify is nobody.
    forged = await client.execute(INTROSPECTION, token=account.access_token[:-4] + "AAAA")
    assert VALIDATION_FAILED in forged.codes


async def test_introspection_off(closed: RunningServer, http: aiohttp.ClientSession) -> None:
    client = Client(http, closed.base_url)
    account = await sign_up(client)
    for token in (None, account.access_token):
        response = await client.execute(INTROSPECTION, token=token)
        assert set(response.codes) == {VALIDATION_FAILED}, response.body
        assert "introspection has been disabled" in response.errors[0]["message"]
    typename = await client.execute("{ __typename }", token=account.access_token)
    assert typename.errors == [] and typename.data == {"__typename": "Query"}


# --- batching -------------------------------------------------------------------------------------


async def test_batches_are_refused_by_default(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    batch = [{"query": "{ plans { tier } }"}, {"query": "{ __typename }"}]
    status, body = await post(http, server, batch)
    assert status == 400, body
    # A request error: JSON in the error shape, never text/plain (API.md, Errors).
    assert body == {
        "errors": [{"message": "Batching is not enabled", "extensions": {"code": "BAD_REQUEST"}}]
    }


async def test_batches_when_enabled(strict: RunningServer, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, strict, [{"query": "{ __typename }"}, {"query": ALIASES_100}])
    assert status == 200, body
    first, second = body
    assert first == {"data": {"__typename": "Query"}}
    # Every operation of a batch meets the limits on its own.
    assert codes(second) == {VALIDATION_FAILED}, second
    status, body = await post(http, strict, [{"query": "{ __typename }"}] * 4)
    assert status == 400, body


# --- WebSocket ----------------------------------------------------------------------------------


async def ws_run(
    http: aiohttp.ClientSession, server: RunningServer, query: str, token: str | None = None
) -> dict[str, Any]:
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        payload = {"authorization": f"Bearer {token}"} if token else {}
        await ws.send_json({"type": "connection_init", "payload": payload})
        assert (await ws.receive_json())["type"] == "connection_ack"
        await ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": query}})
        message = await ws.receive_json()
        while message["type"] == "ka":
            message = await ws.receive_json()
        return dict(message)


@pytest.mark.parametrize(
    "document",
    [DEPTH_20, ALIASES_100, PADDED_200_KB, TOKENS_6000, DIRECTIVES_21, FRAGMENT_FAN_OUT],
    ids=["depth-20", "aliases-100", "200KB-padded", "tokens", "directives", "fan-out"],
)
async def test_limits_hold_over_websocket(
    server: RunningServer, http: aiohttp.ClientSession, document: str
) -> None:
    message = await ws_run(http, server, document)
    assert message["type"] == "error", message
    assert {error["extensions"]["code"] for error in message["payload"]} == {VALIDATION_FAILED}


async def test_subscriptions_are_limited_too(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    subscription = (
        'subscription { conversationEvents(projectId: "x") { '
        + " ".join(f"a{i}: conversationId" for i in range(31))
        + " } }"
    )
    message = await ws_run(http, server, subscription)
    assert message["type"] == "error", message
    assert "31 aliases" in message["payload"][0]["message"]


async def test_introspection_over_websocket(
    strict: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(Client(http, strict.base_url))
    refused = await ws_run(http, strict, INTROSPECTION)
    assert refused["type"] == "error", refused
    assert refused["payload"][0]["extensions"]["code"] == VALIDATION_FAILED
    allowed = await ws_run(http, strict, INTROSPECTION, token=account.access_token)
    assert allowed["type"] == "next", allowed
    assert allowed["payload"] == {"data": {"__schema": {"queryType": {"name": "Query"}}}}
