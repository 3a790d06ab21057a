"""Request errors over real HTTP: JSON in the error shape with a 4xx status (API.md,
Errors), never text/plain; plus the headers every /graphql answer carries."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.engine import make_url

from kindrobots.server import create_app
from tests.conftest import Client, RunningServer, make_settings, sign_up
from tests.test_transport import production_settings

GRAPHQL_RESPONSE = "application/graphql-response+json"
AppClient = TestClient[web.Request, web.Application]


def url(server: RunningServer) -> str:
    return f"{server.base_url}/graphql"


async def read(response: aiohttp.ClientResponse) -> Any:
    """The body as JSON; a text/plain answer fails here, naming what it said."""
    text = await response.text()
    assert response.content_type in ("application/json", GRAPHQL_RESPONSE), (
        response.content_type,
        text,
    )
    return json.loads(text)


def assert_request_error(body: Any, code: str) -> str:
    """The shape of API.md's Errors: one error with a message and a code, no data."""
    assert isinstance(body, dict) and set(body) == {"errors"}, body
    (error,) = body["errors"]
    assert error["extensions"]["code"] == code, body
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


# --- item 11: every request error is JSON ----------------------------------------------------


async def test_unparseable_json_is_a_json_400(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        url(server), data=b'{"query": "{ plans', headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert_request_error(await read(response), "BAD_REQUEST")


@pytest.mark.parametrize("payload", [{}, {"variables": {}}, {"query": None}, {"query": 5}])
async def test_missing_or_wrong_query_is_a_json_400(
    server: RunningServer, http: aiohttp.ClientSession, payload: dict[str, Any]
) -> None:
    async with http.post(url(server), json=payload) as response:
        assert response.status == 400, payload
        assert_request_error(await read(response), "BAD_REQUEST")


async def test_a_get_without_a_query_is_a_json_400(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(url(server), headers={"Accept": "application/json"}) as response:
        assert response.status == 400
        assert_request_error(await read(response), "BAD_REQUEST")


async def test_unsupported_content_type_is_a_json_400(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        url(server), data="{ plans { tier } }", headers={"Content-Type": "application/graphql"}
    ) as response:
        assert response.status == 400
        assert_request_error(await read(response), "BAD_REQUEST")


async def test_csrf_refusal_is_a_json_403(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    cookies = "; ".join(f"{name}={value}" for name, value in account.cookies.items())
    async with http.post(
        url(server),
        data=json.dumps({"query": "{ me { user { id } } }"}),
        headers={"Content-Type": "text/plain", "Cookie": cookies},
    ) as response:
        assert response.status == 403
        assert_request_error(await read(response), "FORBIDDEN")


async def test_body_over_client_max_size_is_a_json_413(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    body = json.dumps({"query": "{ __typename }", "pad": "x" * server.settings.max_body_bytes})
    async with http.post(
        url(server), data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
        assert_request_error(await read(response), "BAD_REQUEST")
        assert "Server" not in response.headers


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_another_method_is_a_json_405(
    server: RunningServer, http: aiohttp.ClientSession, method: str
) -> None:
    async with http.request(method, url(server), json={"query": "{ __typename }"}) as response:
        assert response.status == 405
        assert_request_error(await read(response), "BAD_REQUEST")
        assert {part.strip() for part in response.headers["Allow"].split(",")} == {"GET", "POST"}


async def test_a_mutation_over_get_is_405_with_allow_post(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    query = 'mutation { createOrganization(input: {name: "x"}) { id } }'
    async with http.get(url(server), params={"query": query}) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert_request_error(await read(response), "BAD_REQUEST")


async def test_a_query_over_get_still_runs(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(url(server), params={"query": "{ __typename }"}) as response:
        assert response.status == 200
        assert await read(response) == {"data": {"__typename": "Query"}}


# --- item 7 (part): deeply nested JSON ---------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"query": "{ __typename }", "variables": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}",
    ],
    ids=["body", "variables"],
)
async def test_deeply_nested_json_is_a_json_400(
    server: RunningServer, http: aiohttp.ClientSession, body: str
) -> None:
    async with http.post(
        url(server), data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert_request_error(await read(response), "BAD_REQUEST")
    # And the server is fine afterwards.
    async with http.post(url(server), json={"query": "{ __typename }"}) as response:
        assert response.status == 200


async def test_deeply_nested_variables_over_get_are_a_json_400(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    # Past the JSON parser's recursion limit, within aiohttp's 8190-byte request line.
    params = {"query": "{ __typename }", "variables": "[" * 1250 + "]" * 1250}
    async with http.get(url(server), params=params) as response:
        assert response.status == 400
        assert_request_error(await read(response), "BAD_REQUEST")


# --- item 12: no `data` for documents that never executed ----------------------------------


@pytest.mark.parametrize("query", ["{ plans { tier ", "{ noSuchField }", "{ __typename @aa }"])
async def test_graphql_response_json_failures_have_no_data_key(
    server: RunningServer, http: aiohttp.ClientSession, query: str
) -> None:
    async with http.post(
        url(server), json={"query": query}, headers={"Accept": GRAPHQL_RESPONSE}
    ) as response:
        assert response.status == 400
        assert response.content_type == GRAPHQL_RESPONSE
        body = await read(response)
    assert "data" not in body, body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["GRAPHQL_VALIDATION_FAILED"]


async def test_graphql_response_json_field_errors_keep_data(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        url(server),
        json={"query": 'mutation { createOrganization(input: {name: "x"}) { id } }'},
        headers={"Accept": GRAPHQL_RESPONSE},
    ) as response:
        assert response.status == 200
        body = await read(response)
    assert "data" in body and body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]


# --- item 13: a repeated directive is one error ---------------------------------------------


@pytest.mark.parametrize(
    ("directive", "expected"),
    [
        ("@aa", "Unknown directive '@aa'."),
        ("@include(if: true)", "The directive '@include' can only be used once at this location."),
        ("@skip", None),  # not unique and missing `if`: each said once
    ],
)
async def test_a_repeated_directive_is_reported_once(
    server: RunningServer, http: aiohttp.ClientSession, directive: str, expected: str | None
) -> None:
    query = "{ __typename " + directive * 5 + " }"
    async with http.post(url(server), json={"query": query}) as response:
        body = await read(response)
    messages = [error["message"] for error in body["errors"]]
    assert len(messages) == len(set(messages)), messages
    if expected is not None:
        assert messages == [expected]
    else:
        assert len(messages) == 2, messages


async def test_repetitions_count_against_the_directive_limit(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    limit = server.settings.max_directives
    query = "{ __typename " + "@aa" * (limit + 1) + " }"
    async with http.post(url(server), json={"query": query}) as response:
        body = await read(response)
    messages = [error["message"] for error in body["errors"]]
    assert messages == [
        "Unknown directive '@aa'.",
        f"The operation uses {limit + 1} directives; the limit is {limit}.",
    ]


# --- item 16 (part): headers and the database file -------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("POST", "/graphql", {"query": "{ __typename }"}),
        ("POST", "/graphql", {"nope": 1}),
        ("GET", "/graphql", None),
        ("GET", "/healthz", None),
        ("GET", "/no-such-page", None),
        ("PUT", "/graphql", None),
    ],
)
async def test_no_server_header_on_any_response(
    server: RunningServer,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    payload: dict[str, Any] | None,
) -> None:
    async with http.request(method, server.base_url + path, json=payload) as response:
        await response.read()
        assert "Server" not in response.headers, response.headers.get("Server")


@pytest.mark.parametrize(
    ("method", "payload", "params"),
    [
        ("POST", {"query": "{ __typename }"}, None),
        ("POST", {"query": "{ noSuchField }"}, None),
        ("POST", {}, None),
        ("GET", None, {"query": "{ __typename }"}),
        ("PUT", None, None),
    ],
)
async def test_graphql_answers_are_never_cached(
    server: RunningServer,
    http: aiohttp.ClientSession,
    method: str,
    payload: dict[str, Any] | None,
    params: dict[str, str] | None,
) -> None:
    async with http.request(method, url(server), json=payload, params=params) as response:
        await response.read()
        assert response.headers.get("Cache-Control") == "no-store"


def database_modes(database: str) -> dict[str, int]:
    return {
        name: stat.S_IMODE(os.stat(name).st_mode)
        for name in (database, f"{database}-wal", f"{database}-shm")
        if os.path.exists(name)
    }


async def test_the_sqlite_database_is_private_to_its_owner(
    server: RunningServer, client: Client
) -> None:
    if server.backend != "sqlite":
        pytest.skip("a file only for SQLite")
    await sign_up(client)  # written to: in WAL mode the -wal and -shm files exist now
    database = make_url(server.settings.database_url).database
    assert database
    modes = database_modes(database)
    assert database in modes
    assert modes == dict.fromkeys(modes, 0o600), modes


async def test_answers_before_routing_name_no_versions(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """aiohttp refuses a request line over 8190 bytes before any route or hook runs."""
    async with http.get(url(server), params={"query": "x" * 9000}) as response:
        assert response.status >= 400
        assert response.headers.get("Server", "") == "kindrobots"


# --- item 14: GET CSRF prevention in production ------------------------------------------------


@pytest_asyncio.fixture
async def production(tmp_path: Path) -> AsyncIterator[AppClient]:
    async with TestClient(TestServer(create_app(production_settings(tmp_path)))) as client:
        yield client


SESSION = {"Cookie": "kr_access=anything"}
TYPENAME = {"query": "{ __typename }"}


async def test_production_refuses_a_simple_cookie_get(production: AppClient) -> None:
    for extra in ({}, {"Content-Type": "text/plain"}, {"Apollo-Require-Preflight": " "}):
        response = await production.get("/graphql", params=TYPENAME, headers={**SESSION, **extra})
        assert response.status == 403, extra
        message = assert_request_error(await read(response), "FORBIDDEN")
        assert "Apollo-Require-Preflight" in message


@pytest.mark.parametrize(
    "extra",
    [
        {"Apollo-Require-Preflight": "true"},
        {"X-Apollo-Operation-Name": "Typename"},
        {"Content-Type": "application/json"},
    ],
)
async def test_production_serves_a_cookie_get_that_needs_a_preflight(
    production: AppClient, extra: dict[str, str]
) -> None:
    response = await production.get("/graphql", params=TYPENAME, headers={**SESSION, **extra})
    assert response.status == 200, await response.text()
    assert await response.json() == {"data": {"__typename": "Query"}}


async def test_production_serves_a_get_without_session_cookies(production: AppClient) -> None:
    for headers in ({}, {"Cookie": "analytics=1"}):
        response = await production.get("/graphql", params=TYPENAME, headers=headers)
        assert response.status == 200, headers
        assert await response.json() == {"data": {"__typename": "Query"}}


async def test_development_keeps_cookie_gets(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, "sqlite"))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/graphql", params=TYPENAME, headers=SESSION)
        assert response.status == 200


# --- item 6: a subscription over plain HTTP -----------------------------------------------------

SUBSCRIPTION = 'subscription { chat(input: {message: "hi"}) { __typename } }'


@pytest.mark.parametrize(
    "accept", ["application/json", GRAPHQL_RESPONSE, "multipart/mixed;subscriptionSpec=1.0"]
)
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_subscription_over_http_is_a_request_error_naming_the_protocol(
    server: RunningServer, http: aiohttp.ClientSession, method: str, accept: str
) -> None:
    """Not `Cannot return null for non-nullable field Subscription.chat` (an internal error,
    the permission never run): subscriptions are served over WebSocket only, where they are
    counted, limited and closed on containment."""
    headers = {"Accept": accept, "X-Project-Key": "pk_nothing"}
    if method == "POST":
        request = http.post(url(server), json={"query": SUBSCRIPTION}, headers=headers)
    else:
        request = http.get(url(server), params={"query": SUBSCRIPTION}, headers=headers)
    async with request as response:
        assert response.status == 400
        message = assert_request_error(await read(response), "BAD_REQUEST")
    assert "graphql-transport-ws" in message
    assert "WebSocket" in message
