"""The HTTP and WebSocket surface: request hygiene, CSRF, media types, health, shutdown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from kindrobots.db.models import Membership, User
from kindrobots.ids import from_global_id
from tests.conftest import (
    PASSWORD,
    REDIS_URL,
    Account,
    Client,
    RunningServer,
    make_settings,
    require_service,
    sign_up,
    start_server,
    unique_email,
)

GRAPHQL_RESPONSE = "application/graphql-response+json"
CREATE_ORGANIZATION = 'mutation { createOrganization(input: {name: "Sneaky"}) { id } }'
ME = "{ me { user { email } } }"


def graphql_url(server: RunningServer) -> str:
    return f"{server.base_url}/graphql"


def cookie_header(account: Account) -> str:
    return "; ".join(f"{name}={value}" for name, value in account.cookies.items())


async def organization_count(server: RunningServer, account: Account) -> int:
    user_id = from_global_id(account.user_id, "User")
    async with server.services.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(Membership).where(Membership.user_id == user_id)
        )
    return int(count or 0)


async def user_exists(server: RunningServer, email: str) -> bool:
    async with server.services.read() as session:
        return (await session.scalar(select(User.id).where(User.email == email))) is not None


# --- malformed and refused requests ---------------------------------------------------------


async def test_malformed_json_body_is_a_400(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        graphql_url(server),
        data=b'{"query": "{ plans { tier } }"',
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        assert "data" not in await response.text()


async def test_missing_query_is_a_400(server: RunningServer, http: aiohttp.ClientSession) -> None:
    payloads: list[dict[str, Any]] = [{"variables": {}}, {"query": None}, {}]
    for payload in payloads:
        async with http.post(graphql_url(server), json=payload) as response:
            assert response.status == 400, payload


async def test_body_over_the_limit_is_refused_with_413(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    query = "{ plans { tier } }" + " " * (server.settings.max_body_bytes + 1)
    async with http.post(graphql_url(server), json={"query": query}) as response:
        assert response.status == 413
    # The server is still fine afterwards.
    async with http.post(graphql_url(server), json={"query": "{ plans { tier } }"}) as response:
        assert response.status == 200


async def test_a_one_megabyte_mutation_is_a_4xx_and_runs_nothing(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    email = unique_email("big")
    query = (
        "mutation { signUp(input: {"
        f'email: "{email}", password: "{PASSWORD}", '
        'displayName: "Big", organizationName: "Big Co"'
        "}) { accessToken } }" + " " * (1024 * 1024)
    )
    for accept in ("application/json", "application/graphql-response+json"):
        async with http.post(
            graphql_url(server), json={"query": query}, headers={"Accept": accept}
        ) as response:
            assert response.status == 413, accept
            body = await response.json(content_type=None)
        assert [e["extensions"]["code"] for e in body["errors"]] == ["GRAPHQL_VALIDATION_FAILED"]
    assert not await user_exists(server, email)


async def test_a_json_body_that_is_not_an_object_is_a_400(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    for body in ("null", "123", '"{ plans { tier } }"', "true"):
        async with http.post(
            graphql_url(server), data=body, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400, body


async def test_mutation_via_get_is_refused_and_runs_nothing(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    email = unique_email("get")
    query = (
        "mutation { signUp(input: {"
        f'email: "{email}", password: "{PASSWORD}", '
        'displayName: "Get", organizationName: "Get Co"'
        "}) { accessToken } }"
    )
    async with http.get(graphql_url(server), params={"query": query}) as response:
        assert 400 <= response.status < 500
        assert "Set-Cookie" not in response.headers
    assert not await user_exists(server, email)
    # The same document over POST is fine, which proves the GET refusal was about the method.
    async with http.post(graphql_url(server), json={"query": query}) as response:
        assert response.status == 200
        assert (await response.json())["data"]["signUp"]["accessToken"]
    assert await user_exists(server, email)


async def test_cookie_post_as_text_plain_is_refused_and_changes_nothing(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    before = await organization_count(server, account)
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        async with http.post(
            graphql_url(server),
            data=json.dumps({"query": CREATE_ORGANIZATION}),
            headers={"Content-Type": content_type, "Cookie": cookie_header(account)},
        ) as response:
            assert response.status == 403, content_type
            assert "Set-Cookie" not in response.headers
    assert await organization_count(server, account) == before
    # The same cookies on a JSON POST are accepted (that is how the dashboard calls).
    response_json = await client.execute(CREATE_ORGANIZATION, cookies=account.cookies)
    assert response_json.errors == []
    assert await organization_count(server, account) == before + 1


async def test_csrf_header_lifts_the_cookie_rule_but_only_json_is_executed(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """API.md: with X-Requested-With / Apollo-Require-Preflight the CSRF rule does not refuse.

    The endpoint accepts application/json only, so such a request is still refused,
    as an unsupported content type (400), not as CSRF (403), and runs nothing.
    """
    account = await sign_up(client)
    before = await organization_count(server, account)
    for header in ("X-Requested-With", "Apollo-Require-Preflight"):
        async with http.post(
            graphql_url(server),
            data=json.dumps({"query": CREATE_ORGANIZATION}),
            headers={
                "Content-Type": "text/plain",
                "Cookie": cookie_header(account),
                header: "x",
            },
        ) as response:
            assert response.status != 403, header
            assert 400 <= response.status < 500
            assert "Cookie-authenticated" not in await response.text()
    assert await organization_count(server, account) == before


# --- GraphQL over HTTP media types ------------------------------------------------------------


async def test_graphql_response_media_type_is_honoured(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    headers = {"Accept": GRAPHQL_RESPONSE}
    async with http.post(
        graphql_url(server), json={"query": "{ plans { tier } }"}, headers=headers
    ) as response:
        assert response.status == 200
        assert response.content_type == GRAPHQL_RESPONSE
        body = await response.json(content_type=None)
        assert {"tier": "STARTER"} in body["data"]["plans"]
    for query in ("{ noSuchField }", "{ plans { tier "):
        async with http.post(
            graphql_url(server), json={"query": query}, headers=headers
        ) as response:
            assert response.status == 400, query
            assert response.content_type == GRAPHQL_RESPONSE
            body = await response.json(content_type=None)
            assert [error["extensions"]["code"] for error in body["errors"]] == [
                "GRAPHQL_VALIDATION_FAILED"
            ]


async def test_plain_json_keeps_validation_failures_at_200(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        graphql_url(server),
        json={"query": "{ noSuchField }"},
        headers={"Accept": "application/json"},
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["data"] is None
    assert [error["extensions"]["code"] for error in body["errors"]] == [
        "GRAPHQL_VALIDATION_FAILED"
    ]


async def test_field_errors_stay_200_with_the_graphql_response_media_type(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """Only request errors become 4xx; an executed operation with errors is a 200."""
    async with http.post(
        graphql_url(server),
        json={"query": 'mutation { createOrganization(input: {name: "x"}) { id } }'},
        headers={"Accept": GRAPHQL_RESPONSE},
    ) as response:
        assert response.status == 200
        body = await response.json(content_type=None)
    assert [error["extensions"]["code"] for error in body["errors"]] == ["UNAUTHENTICATED"]


async def test_query_via_get(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{graphql_url(server)}?query={{plans{{tier}}}}") as response:
        assert response.status == 200
        body = await response.json()
    assert [plan["tier"] for plan in body["data"]["plans"]] == [
        "STARTER",
        "PROFESSIONAL",
        "ENTERPRISE",
    ]


async def test_graphiql_in_development(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(graphql_url(server), headers={"Accept": "text/html"}) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "graphiql" in (await response.text()).lower()


# --- WebSockets ---------------------------------------------------------------------------------


async def receive_skipping_keepalive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = await ws.receive_json()
        if message.get("type") != "ka":
            return message


async def test_graphql_transport_ws_runs_me_with_the_token_from_connection_init(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        assert ws.protocol == "graphql-transport-ws"
        await ws.send_json(
            {
                "type": "connection_init",
                "payload": {"authorization": f"Bearer {account.access_token}"},
            }
        )
        assert (await ws.receive_json())["type"] == "connection_ack"
        await ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": ME}})
        assert await ws.receive_json() == {
            "id": "1",
            "type": "next",
            "payload": {"data": {"me": {"user": {"email": account.email}}}},
        }
        assert await ws.receive_json() == {"id": "1", "type": "complete"}


@pytest.mark.parametrize("name", ["Authorization", "authorization"])
async def test_hasura_apollo_style_headers_in_connection_init_authenticate(
    client: Client, server: RunningServer, http: aiohttp.ClientSession, name: str
) -> None:
    """API.md: `{"headers": {"Authorization": "Bearer …"}}` in connection_init."""
    account = await sign_up(client)
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        await ws.send_json(
            {
                "type": "connection_init",
                "payload": {"headers": {name: f"Bearer {account.access_token}"}},
            }
        )
        assert (await ws.receive_json())["type"] == "connection_ack"
        await ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": ME}})
        assert (await ws.receive_json())["payload"] == {
            "data": {"me": {"user": {"email": account.email}}}
        }


async def test_a_bad_token_in_connection_init_headers_closes_with_4403(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        await ws.send_json(
            {
                "type": "connection_init",
                "payload": {"headers": {"Authorization": "Bearer not-a-jwt"}},
            }
        )
        message = await ws.receive()
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4403


async def test_graphql_transport_ws_without_a_token_is_signed_out(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        await ws.send_json({"type": "connection_init", "payload": {}})
        assert (await ws.receive_json())["type"] == "connection_ack"
        await ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": ME}})
        assert (await ws.receive_json())["payload"] == {"data": {"me": None}}


async def test_legacy_graphql_ws_runs_me_with_the_token_from_connection_init(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    async with http.ws_connect(server.ws_url, protocols=["graphql-ws"]) as ws:
        assert ws.protocol == "graphql-ws"
        await ws.send_json(
            {
                "type": "connection_init",
                "payload": {"authorization": f"Bearer {account.access_token}"},
            }
        )
        assert (await receive_skipping_keepalive(ws))["type"] == "connection_ack"
        await ws.send_json({"type": "start", "id": "1", "payload": {"query": ME}})
        assert await receive_skipping_keepalive(ws) == {
            "id": "1",
            "type": "data",
            "payload": {"data": {"me": {"user": {"email": account.email}}}},
        }
        assert await receive_skipping_keepalive(ws) == {"id": "1", "type": "complete"}


async def test_bad_or_signed_out_token_in_connection_init_closes_with_4403(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    header, claims, signature = account.access_token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = f"{header}.{claims}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    signed_out = await sign_up(client)
    response = await client.execute("mutation { signOutEverywhere }", token=signed_out.access_token)
    assert response.data == {"signOutEverywhere": True}
    for token in ("not-a-jwt", tampered, signed_out.access_token):
        async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
            await ws.send_json(
                {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
            )
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4403


# --- health -------------------------------------------------------------------------------------


async def test_healthz(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.base_url}/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_readyz_with_the_database(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.base_url}/readyz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"


async def readyz_with_redis(tmp_path: Path, http: aiohttp.ClientSession, url: str) -> Any:
    runner, running = await start_server(make_settings(tmp_path, "sqlite", redis_url=url))
    try:
        async with http.get(f"{running.base_url}/readyz") as response:
            return response.status, await response.json()
    finally:
        await runner.cleanup()


async def test_readyz_reports_redis_ok(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    require_service("Redis", REDIS_URL, 6379)
    status, body = await readyz_with_redis(tmp_path, http, REDIS_URL)
    assert status == 200
    assert body["checks"] == {"database": "ok", "migrations": "ok", "redis": "ok"}


async def test_readyz_is_503_when_redis_is_unreachable(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    status, body = await readyz_with_redis(tmp_path, http, "redis://127.0.0.1:1/0")
    assert status == 503
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] != "ok"


# --- graceful shutdown --------------------------------------------------------------------------


async def test_shutdown_closes_open_websockets_with_going_away(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    runner, running = await start_server(make_settings(tmp_path, "sqlite"))
    cleaned = False
    try:
        async with http.ws_connect(running.ws_url, protocols=["graphql-transport-ws"]) as ws:
            await ws.send_json({"type": "connection_init", "payload": {}})
            assert (await ws.receive_json())["type"] == "connection_ack"
            # A generous guard, not a timing claim: a hang must fail rather than stall the run.
            cleanup = asyncio.ensure_future(runner.cleanup())
            message = await asyncio.wait_for(ws.receive(), 30)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
            await asyncio.wait_for(cleanup, 30)
            cleaned = True
        # The listener is gone afterwards.
        try:
            async with http.get(f"{running.base_url}/healthz") as response:
                status: int | None = response.status
        except aiohttp.ClientConnectionError:
            status = None
        assert status is None
    finally:
        if not cleaned:
            await runner.cleanup()
