"""``/metrics``: what a scripted run moves, by exactly how much, and who may read it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from kindrobots.config import ConfigError
from tests.chat_helpers import deploy, widget_chat
from tests.conftest import (
    PASSWORD,
    Client,
    RunningServer,
    backend_server,
    make_settings,
    set_tier,
)
from tests.org_helpers import add_member, quick_account
from tests.processes import free_port

SIGN_IN = """
mutation SignIn($input: SignInInput!) { signIn(input: $input) { accessToken } }
"""
CREATE_AGENT = """
mutation CreateAgent($input: CreateAgentInput!) { createAgent(input: $input) { id } }
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(http: aiohttp.ClientSession, server: RunningServer) -> Samples:
    async with http.get(f"{server.base_url}/metrics") as response:
        assert response.status == 200
        return parse(await response.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest_asyncio.fixture
async def limited(backend: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server of its own with rate limits on: the run below counts on a fresh limit."""
    async with backend_server(tmp_path, backend, rate_limits=True) as running:
        yield running


async def test_a_scripted_run_moves_each_counter_by_the_expected_amount(
    limited: RunningServer, http: aiohttp.ClientSession
) -> None:
    server = limited
    client = Client(http, server.base_url)
    owner = await quick_account(server)
    await set_tier(server, owner.organization_id, "ENTERPRISE")
    viewer = await add_member(client, server, owner, owner.organization_id, "VIEWER")
    site = await deploy(client, owner)
    before = await scrape(http, server)

    # Sign-ins from one address: 2 good, 3 wrong passwords, 5 unknown emails, then the
    # signIn limit (10 a minute per address) refuses the 11th.
    for password in [PASSWORD, PASSWORD, "wrong-1", "wrong-2", "wrong-3"]:
        await client.execute(SIGN_IN, {"input": {"email": owner.email, "password": password}})
    for number in range(6):
        response = await client.execute(
            SIGN_IN, {"input": {"email": f"nobody{number}@example.com", "password": "x" * 12}}
        )
    assert response.codes == ["RATE_LIMITED"]
    # Two widget chats on the demo provider.
    usage = {"inputTokens": 0, "outputTokens": 0}
    for message in ("hello there", "where is my parcel"):
        events = await widget_chat(http, server, site.project_key, message)
        completed = events[-1]
        assert completed["__typename"] == "ChatCompleted"
        for direction in usage:
            usage[direction] += completed["usage"][direction]
    # Two permission refusals: a viewer may not create agents.
    for _ in range(2):
        refused = await client.execute(
            CREATE_AGENT,
            {
                "input": {
                    "organizationId": owner.organization_id,
                    "name": "No",
                    "model": "demo-model",
                    "systemPrompt": "-",
                    "manifestIds": [],
                }
            },
            token=viewer.access_token,
        )
        assert refused.codes == ["FORBIDDEN"]
    assert server.services.refusals is not None
    await server.services.refusals.drain()
    after = await scrape(http, server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    signin = {"operation": "SignIn", "type": "mutation"}
    assert moved("kindrobots_graphql_operations_total", **signin) == 11
    assert moved("kindrobots_graphql_operation_seconds_count", **signin) == 11
    assert (
        moved("kindrobots_graphql_operations_total", operation="CreateAgent", type="mutation") == 2
    )
    assert (
        moved("kindrobots_graphql_operations_total", operation="anonymous", type="subscription")
        == 2
    )
    assert moved("kindrobots_graphql_errors_total", code="UNAUTHENTICATED") == 8
    assert moved("kindrobots_graphql_errors_total", code="RATE_LIMITED") == 1
    assert moved("kindrobots_graphql_errors_total", code="FORBIDDEN") == 2
    assert moved("kindrobots_rate_limited_total", field="Mutation.signIn", key="ip") == 1
    assert moved("kindrobots_security_events_total", event="signin.failed") == 8
    assert moved("kindrobots_security_events_total", event="permission.denied") == 2
    assert moved("kindrobots_chat_messages_total", provider="demo") == 2
    assert moved("kindrobots_llm_request_seconds_count", provider="demo") == 2
    assert moved("kindrobots_llm_errors_total", provider="demo") == 0
    assert (
        moved("kindrobots_llm_tokens_total", provider="demo", direction="input")
        == (usage["inputTokens"])
    )
    assert (
        moved("kindrobots_llm_tokens_total", provider="demo", direction="output")
        == (usage["outputTokens"])
    )
    # The two sockets (upgraded: 101) and their subscriptions are closed again.
    assert value(after, "kindrobots_websocket_connections", kind="widget") == 0
    assert value(after, "kindrobots_active_subscriptions", kind="chat") == 0
    assert (
        moved("kindrobots_http_requests_total", route="/graphql", method="GET", status="1xx") == 2
    )
    assert (
        moved("kindrobots_http_requests_total", route="/graphql", method="POST", status="2xx") == 12
    )
    assert (
        moved("kindrobots_http_requests_total", route="/graphql", method="POST", status="4xx") == 1
    )
    # The pool, as of the scrape: nothing is checked out between requests.
    assert ("kindrobots_db_pool_checked_out", frozenset()) in after
    assert value(after, "kindrobots_db_pool_checked_out") == 0
    # No ID, email or key in any label.
    labels = " ".join(value for _name, pairs in after for _key, value in pairs)
    for secret in (owner.email, site.project_key, owner.organization_id, viewer.user_id):
        assert secret not in labels


async def test_open_sockets_and_subscriptions_are_gauged_while_they_run(
    limited: RunningServer, http: aiohttp.ClientSession
) -> None:
    from tests.chat_helpers import widget_socket

    client = Client(http, limited.base_url)
    site = await deploy(client, await quick_account(limited))
    async with widget_socket(http, limited, site.project_key):
        during = await scrape(http, limited)
    assert value(during, "kindrobots_websocket_connections", kind="widget") == 1
    assert (
        value(await scrape(http, limited), "kindrobots_websocket_connections", kind="widget") == 0
    )


async def test_operation_names_cannot_blow_up_the_label_set(
    limited: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, limited.base_url)
    names = limited.services.metrics.operation_names
    for number in range(250):
        await client.execute(f"query Probe{number} {{ plans {{ tier }} }}")
    await client.execute("query Bad-Name { plans { tier } }")
    samples = await scrape(http, limited)
    labelled = {
        dict(pairs)["operation"]
        for name, pairs in samples
        if name == "kindrobots_graphql_operations_total"
    }
    assert len(labelled) <= 200 + 3  # the cap, plus anonymous, invalid and other
    assert (
        value(samples, "kindrobots_graphql_operations_total", operation="other", type="query") > 0
    )
    assert names.label("x" * 65) == "invalid"
    assert names.label(None) == "anonymous"


# --- who may read /metrics ---------------------------------------------------------------


async def test_with_a_token_metrics_need_it(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with backend_server(tmp_path, "sqlite", metrics_token="m-token-123") as server:
        url = f"{server.base_url}/metrics"
        async with http.get(url) as response:
            assert response.status == 401
            assert "m-token-123" not in await response.text()
        async with http.get(url, headers={"Authorization": "Bearer m-token-12"}) as response:
            assert response.status == 401
        async with http.get(url, headers={"Authorization": "Bearer m-token-123"}) as response:
            assert response.status == 200
            assert "kindrobots_http_requests_total" in await response.text()


async def test_a_metrics_port_serves_them_there_only(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    async with backend_server(tmp_path, "sqlite", metrics_port=port) as server:
        async with http.get(f"{server.base_url}/metrics") as response:
            assert response.status == 404
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert "kindrobots_graphql_operations_total" in await response.text()
        async with http.get(f"http://127.0.0.1:{port}/graphql") as response:
            assert response.status == 404


def test_production_needs_a_metrics_token_or_port(tmp_path: Path) -> None:
    production = {
        "env": "production",
        "public_url": "https://api.example.com",
        "database_url": "postgresql+asyncpg://kr@db.example.com/kr",
    }
    with pytest.raises(ConfigError, match="KR_METRICS_TOKEN or KR_METRICS_PORT"):
        make_settings(tmp_path, "postgresql", **production)
    make_settings(tmp_path, "postgresql", metrics_token="t" * 32, **production)
    make_settings(tmp_path, "postgresql", metrics_port=9100, **production)
