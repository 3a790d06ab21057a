"""Issue 12, item 1 (hot documents): each document parsed and validated once per process,
HTTP and WebSocket alike; automatic persisted queries; the trusted-documents mode."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from graphql import parse, validate

from kindrobots.config import ConfigError
from kindrobots.server import create_app
from tests.conftest import Client, RunningServer, backend_server, make_settings, sign_up
from tests.test_transport import production_settings

TRANSPORT_WS = ["graphql-transport-ws"]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def unique_query() -> str:
    """A document no other test sends: its own alias."""
    return f"{{ plans {{ tier }} n{secrets.token_hex(6)}: __typename }}"


def persisted(digest: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": digest}}


class Calls:
    """graphql-core's parse and validate calls, counted for one document's text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parses = 0
        self.validations = 0


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Calls]]:
    watched: list[Calls] = []

    def counting_parse(source: Any, *args: Any, **kwargs: Any) -> Any:
        for watch in watched:
            if source == watch.text:
                watch.parses += 1
        return parse(source, *args, **kwargs)

    def counting_validate(schema: Any, document: Any, *args: Any, **kwargs: Any) -> Any:
        body = document.loc.source.body if document.loc is not None else None
        for watch in watched:
            if body == watch.text:
                watch.validations += 1
        return validate(schema, document, *args, **kwargs)

    # The names Strawberry's schema module calls (graphql-core's own functions).
    monkeypatch.setattr("strawberry.schema.schema.parse", counting_parse)
    monkeypatch.setattr("strawberry.schema.schema.validate", counting_validate)
    yield watched


async def post(
    http: aiohttp.ClientSession, server: RunningServer, payload: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{server.base_url}/graphql", json=payload) as response:
        return response.status, await response.json(content_type=None)


async def get(
    http: aiohttp.ClientSession, server: RunningServer, params: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    query = {
        key: json.dumps(value) if key == "extensions" else value for key, value in params.items()
    }
    async with http.get(f"{server.base_url}/graphql", params=query) as response:
        return response.status, await response.json(content_type=None)


async def over_websocket(
    http: aiohttp.ClientSession, server: RunningServer, query: str, times: int
) -> list[dict[str, Any]]:
    """``query`` run ``times`` over one graphql-transport-ws connection; the payloads."""
    payloads = []
    async with http.ws_connect(server.ws_url, protocols=TRANSPORT_WS) as ws:
        await ws.send_json({"type": "connection_init"})
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
        for number in range(times):
            await ws.send_json(
                {"id": f"op-{number}", "type": "subscribe", "payload": {"query": query}}
            )
            message = await ws.receive_json(timeout=10)
            assert message["type"] in ("next", "error"), message
            payload = message["payload"]
            payloads.append(payload if message["type"] == "next" else {"errors": payload})
            if message["type"] == "next":
                assert (await ws.receive_json(timeout=10))["type"] == "complete"
    return payloads


async def test_a_document_is_parsed_and_validated_once_over_http_and_websocket(
    server: RunningServer, http: aiohttp.ClientSession, calls: list[Calls]
) -> None:
    query = unique_query()
    watch = Calls(query)
    calls.append(watch)
    for _ in range(5):
        status, body = await post(http, server, {"query": query})
        assert status == 200 and body["data"]["plans"], body
    status, body = await get(http, server, {"query": query})
    assert status == 200 and "errors" not in body, body
    payloads = await over_websocket(http, server, query, 5)
    assert all(payload["data"]["plans"] for payload in payloads), payloads
    assert (watch.parses, watch.validations) == (1, 1)


async def test_a_document_over_the_limits_is_refused_every_time_from_the_cache(
    server: RunningServer, http: aiohttp.ClientSession, calls: list[Calls]
) -> None:
    limit = server.settings.max_aliases
    query = (
        "{ " + " ".join(f"a{n}{secrets.token_hex(3)}: __typename" for n in range(limit + 1)) + " }"
    )
    watch = Calls(query)
    calls.append(watch)
    answers = [await post(http, server, {"query": query}) for _ in range(4)]
    answers += [(200, payload) for payload in await over_websocket(http, server, query, 2)]
    first = answers[0][1]
    assert first["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", first
    assert f"the limit is {limit}" in first["errors"][0]["message"]
    for _status, body in answers:
        assert body["errors"] == first["errors"], body
    assert (watch.parses, watch.validations) == (1, 1)


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_automatic_persisted_query_round_trip(
    server: RunningServer, http: aiohttp.ClientSession, calls: list[Calls], method: str
) -> None:
    query = unique_query()
    digest = sha256(query)
    watch = Calls(query)
    calls.append(watch)
    send = post if method == "POST" else get

    status, body = await send(http, server, {"extensions": persisted(digest)})
    assert status == 200, body
    assert body["errors"] == [
        {"message": "PersistedQueryNotFound", "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}
    ], body

    status, body = await send(http, server, {"query": query, "extensions": persisted(digest)})
    assert status == 200 and body["data"]["plans"], body

    for _ in range(3):
        status, body = await send(http, server, {"extensions": persisted(digest)})
        assert status == 200 and body["data"]["plans"], body
    assert (watch.parses, watch.validations) == (1, 1)


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_hash_that_is_not_the_documents_is_a_400(
    server: RunningServer, http: aiohttp.ClientSession, method: str
) -> None:
    query = unique_query()
    send = post if method == "POST" else get
    status, body = await send(http, server, {"query": query, "extensions": persisted("0" * 64)})
    assert status == 400, body
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST", body
    assert "sha256Hash" in body["errors"][0]["message"]
    # Nothing was registered under the wrong hash (nor the right one).
    status, body = await send(http, server, {"extensions": persisted("0" * 64)})
    assert body["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND", body


async def test_a_malformed_persisted_query_is_a_400(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    for extension in ({"version": 2, "sha256Hash": "0" * 64}, {"version": 1, "sha256Hash": "x"}):
        status, body = await post(http, server, {"extensions": {"persistedQuery": extension}})
        assert status == 400 and body["errors"][0]["extensions"]["code"] == "BAD_REQUEST", body


async def test_a_persisted_mutation_over_get_is_still_405(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    mutation = f"mutation M{secrets.token_hex(4)} {{ signOut }}"
    digest = sha256(mutation)
    status, _body = await post(http, server, {"query": mutation, "extensions": persisted(digest)})
    status, body = await get(http, server, {"extensions": persisted(digest)})
    assert status == 405, body


async def test_a_persisted_get_obeys_the_csrf_rule_in_production(tmp_path: Path) -> None:
    async with TestClient(TestServer(create_app(production_settings(tmp_path)))) as client:
        response = await client.get(
            "/graphql",
            params={"extensions": json.dumps(persisted("0" * 64))},
            headers={"Cookie": "kr_access=x"},
        )
        assert response.status == 403, await response.text()


def write_manifest(path: Path, documents: list[str], form: str) -> None:
    if form == "apollo":
        content: Any = {
            "format": "apollo-persisted-query-manifest",
            "version": 1,
            "operations": [
                {"id": sha256(body), "body": body, "name": f"Op{n}", "type": "query"}
                for n, body in enumerate(documents)
            ],
        }
    elif form == "map":
        content = {sha256(body): body for body in documents}
    else:
        content = documents
    path.write_text(json.dumps(content))


@pytest.mark.parametrize("form", ["apollo", "map", "list"])
async def test_trusted_documents_mode_runs_only_listed_documents(
    tmp_path: Path, backend: str, http: aiohttp.ClientSession, form: str
) -> None:
    listed = "query Plans { plans { tier } }"
    unlisted = "{ plans { tier } __typename }"
    manifest = tmp_path / "trusted.json"
    write_manifest(manifest, [listed], form)
    async with backend_server(tmp_path, backend, trusted_documents=str(manifest)) as server:
        status, body = await post(http, server, {"query": listed})
        assert status == 200 and body["data"]["plans"], body
        status, body = await post(http, server, {"extensions": persisted(sha256(listed))})
        assert status == 200 and body["data"]["plans"], body
        status, body = await get(http, server, {"extensions": persisted(sha256(listed))})
        assert status == 200 and body["data"]["plans"], body

        status, body = await post(http, server, {"query": unlisted})
        assert status == 400, body
        assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
        assert "trusted documents" in body["errors"][0]["message"]
        # Not even as a persisted query: the list is the whole of what runs.
        status, body = await post(
            http, server, {"query": unlisted, "extensions": persisted(sha256(unlisted))}
        )
        assert status == 400, body
        status, body = await post(http, server, {"extensions": persisted(sha256(unlisted))})
        assert body["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND", body
        # Over WebSocket too.
        refused, ran = await over_websocket(http, server, unlisted, 1) + await over_websocket(
            http, server, listed, 1
        )
        assert refused["errors"][0]["extensions"]["code"] == "BAD_REQUEST", refused
        assert "trusted documents" in refused["errors"][0]["message"]
        assert ran["data"]["plans"], ran


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"0" * 64: "{ __typename }"}),  # a hash that is not the document's
        json.dumps({"format": "apollo-persisted-query-manifest", "version": 2, "operations": []}),
        json.dumps([]),
        json.dumps([1]),
    ],
    ids=["not-json", "wrong-hash", "manifest-version", "empty", "not-a-document"],
)
def test_a_bad_trusted_documents_file_is_one_config_error(tmp_path: Path, content: str) -> None:
    manifest = tmp_path / "trusted.json"
    manifest.write_text(content)
    with pytest.raises(ConfigError) as raised:
        make_settings(tmp_path, "sqlite", trusted_documents=str(manifest))
    assert "KR_TRUSTED_DOCUMENTS" in str(raised.value)
    with pytest.raises(ConfigError, match="KR_TRUSTED_DOCUMENTS"):
        make_settings(tmp_path, "sqlite", trusted_documents=str(tmp_path / "missing.json"))


async def test_introspection_is_decided_per_caller_with_the_document_cached(
    tmp_path: Path, backend: str, http: aiohttp.ClientSession, calls: list[Calls]
) -> None:
    query = f"query I{secrets.token_hex(4)} {{ __schema {{ queryType {{ name }} }} }}"
    watch = Calls(query)
    calls.append(watch)
    async with backend_server(tmp_path, backend, introspection="authenticated") as server:
        client = Client(http, server.base_url)
        account = await sign_up(client)
        for _ in range(2):
            anonymous = await client.execute(query)
            assert set(anonymous.codes) == {"GRAPHQL_VALIDATION_FAILED"}, anonymous.body
            assert "introspection" in anonymous.errors[0]["message"]
            signed_in = await client.execute(query, token=account.access_token)
            assert signed_in.data == {"__schema": {"queryType": {"name": "Query"}}}, signed_in.body
    # One parse; one validation for each kind of caller.
    assert (watch.parses, watch.validations) == (1, 2)
