"""Refusal and rotation security events: each kind written once with the fields an
operator needs, and repeated refusals never a row each."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import select, update

from kindrobots.cli import rotate_keys
from kindrobots.db.models import Project, SecurityEvent
from kindrobots.security.events import Refusals
from tests.chat_helpers import deploy
from tests.conftest import Client, RunningServer, backend_server, set_tier
from tests.fake_stripe import event
from tests.org_helpers import add_member, quick_account, raw_id

CREATE_AGENT = """
mutation($input: CreateAgentInput!) { createAgent(input: $input) { id } }
"""
IMPORT_MANIFEST = """
mutation($input: ImportManifestInput!) { importManifest(input: $input) { id } }
"""
ROTATE_KEY = "mutation($id: ID!) { rotateProjectKey(id: $id) { publishableKey } }"
SECRET_KEY = f"sk_test_{secrets.token_hex(16)}"
WEBHOOK_SECRET = f"whsec_{secrets.token_hex(16)}"


@pytest_asyncio.fixture
async def fresh(backend: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server of its own: its refusal throttle has seen nobody yet."""
    async with backend_server(
        tmp_path,
        backend,
        stripe_secret_key=SECRET_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_api_base="http://127.0.0.1:9",
    ) as running:
        yield running


async def rows(server: RunningServer, name: str) -> list[SecurityEvent]:
    assert server.services.refusals is not None
    await server.services.refusals.drain()
    async with server.services.read() as session:
        found = await session.scalars(select(SecurityEvent).where(SecurityEvent.event == name))
        return list(found)


async def refused_socket(
    http: aiohttp.ClientSession, server: RunningServer, key: str, origin: str
) -> int | None:
    async with http.ws_connect(
        server.ws_url, protocols=["graphql-transport-ws"], headers={"Origin": origin}
    ) as ws:
        await ws.send_json({"type": "connection_init", "payload": {"projectKey": key}})
        message = await ws.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.CLOSE
        return ws.close_code


async def test_permission_refusals_name_the_field_and_roles_once_per_window(
    fresh: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, fresh.base_url)
    owner = await quick_account(fresh)
    await set_tier(fresh, owner.organization_id, "ENTERPRISE")
    viewer = await add_member(client, fresh, owner, owner.organization_id, "VIEWER")
    agent = {
        "organizationId": owner.organization_id,
        "name": "No",
        "model": "demo-model",
        "systemPrompt": "-",
        "manifestIds": [],
    }
    for _ in range(5):
        response = await client.execute(CREATE_AGENT, {"input": agent}, token=viewer.access_token)
        assert response.codes == ["FORBIDDEN"]
    (row,) = await rows(fresh, "permission.denied")
    assert row.user_id == raw_id(viewer.user_id, "User")
    assert row.ip == "127.0.0.1"
    assert row.details == {
        "field": "Mutation.createAgent",
        "requiredRole": "EDITOR",
        "role": "VIEWER",
    }
    # An outsider gets NOT_FOUND, as for an unknown ID: no event names the organization.
    outsider = await quick_account(fresh)
    response = await client.execute(CREATE_AGENT, {"input": agent}, token=outsider.access_token)
    assert response.codes == ["NOT_FOUND"]
    assert len(await rows(fresh, "permission.denied")) == 1


async def test_ssrf_refusals_keep_the_category_never_the_url(
    fresh: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, fresh.base_url)
    owner = await quick_account(fresh)
    for url in ["http://127.0.0.1:9/api.json"] * 3 + ["http://admin:hunter2@example.com/a.json"]:
        response = await client.execute(
            IMPORT_MANIFEST,
            {"input": {"organizationId": owner.organization_id, "name": "x", "url": url}},
            token=owner.access_token,
        )
        assert response.codes == ["BAD_USER_INPUT"]
    found = await rows(fresh, "ssrf.refused")
    assert sorted(row.details["category"] for row in found) == ["credentials", "non_public_address"]
    for row in found:
        assert row.details["field"] == "url"
        assert "hunter2" not in str(row.details) and "127.0.0.1" not in str(row.details)


async def test_origin_and_end_user_token_refusals_are_recorded_once_per_address(
    fresh: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, fresh.base_url)
    site = await deploy(client, await quick_account(fresh))
    for _ in range(20):
        assert await refused_socket(http, fresh, site.project_key, "https://evil.example") == 4403
    (origin,) = await rows(fresh, "widget.origin_refused")
    assert origin.details == {"transport": "websocket"}
    assert origin.ip == "127.0.0.1"
    async with fresh.services.write() as session:
        await session.execute(
            update(Project)
            .where(Project.id == raw_id(site.project_id, "Project"))
            .values(
                access_mode="AUTHENTICATED",
                jwks_url="https://idp.example.com/jwks.json",
                jwt_issuer="https://idp.example.com",
                jwt_audience="shop",
            )
        )
    for _ in range(3):
        code = await refused_socket(http, fresh, site.project_key, "https://shop.example.com")
        assert code == 4401
    (token,) = await rows(fresh, "widget.token_refused")
    assert token.details == {"check": "end-user token missing", "transport": "websocket"}


async def test_webhook_signature_failures_are_recorded_and_counted(
    fresh: RunningServer, http: aiohttp.ClientSession
) -> None:
    payload = event("customer.subscription.updated", {"id": "sub_1"})
    for signature in ["t=1,v1=bad", "", "t=2,v1=" + "0" * 64]:
        async with http.post(
            f"{fresh.base_url}/webhooks/stripe",
            data=payload,
            headers={"Stripe-Signature": signature},
        ) as response:
            assert response.status == 400
    (row,) = await rows(fresh, "stripe_webhook.signature_failed")
    assert row.ip == "127.0.0.1" and row.details == {}
    counted = fresh.services.metrics.webhooks.labels("bad_signature")._value.get()
    assert counted == 3


async def test_key_rotations_are_security_events(
    fresh: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, fresh.base_url)
    owner = await quick_account(fresh)
    site = await deploy(client, owner)
    rotated = await client.execute(ROTATE_KEY, {"id": site.project_id}, token=owner.access_token)
    assert rotated.errors == []
    (project,) = await rows(fresh, "project_key.rotated")
    assert project.organization_id == raw_id(owner.organization_id, "Organization")
    assert project.user_id == raw_id(owner.user_id, "User")
    assert project.details == {"projectId": str(raw_id(site.project_id, "Project"))}
    assert site.project_key not in str(project.details)
    report = await rotate_keys(fresh.services, 100)
    (keys,) = await rows(fresh, "keys.rotated")
    assert keys.details == {
        "activeKey": fresh.services.keyring.active_key_id,
        "rotated": report.rotated,
        "failed": 0,
    }


# --- the throttle itself, on a driven clock ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_throttle_writes_the_first_of_each_source_and_counts_the_rest() -> None:
    written: list[tuple[str, str | None, dict[str, Any]]] = []
    observed: list[str] = []

    async def store(
        name: str, ip: str | None, _user: uuid.UUID | None, details: dict[str, Any]
    ) -> None:
        written.append((name, ip, details))

    clock = Clock()
    refusals = Refusals(
        store, lambda name, _org: observed.append(name), window=60, rows_per_window=3, clock=clock
    )
    for _ in range(50):
        refusals.refused("widget.origin_refused", source="1.2.3.4", ip="1.2.3.4", details={})
    await refusals.drain()
    assert written == [("widget.origin_refused", "1.2.3.4", {})]
    assert len(observed) == 49  # the other 49 were counted, not written
    # Many sources at once: at most rows_per_window rows of one kind per window.
    for number in range(100):
        refusals.refused("widget.origin_refused", source=f"10.0.0.{number}", ip=None, details={})
    await refusals.drain()
    assert len(written) == 3
    # After the window the source writes again, saying how many it was not written for.
    clock.now += 61
    refusals.refused("widget.origin_refused", source="1.2.3.4", ip="1.2.3.4", details={})
    await refusals.drain()
    assert written[-1] == ("widget.origin_refused", "1.2.3.4", {"repeated": 49})


async def test_a_failing_store_loses_the_row_but_not_the_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observed: list[str] = []

    async def store(*_args: object) -> None:
        await asyncio.sleep(0)
        raise ConnectionError("database down")

    refusals = Refusals(
        store, lambda name, _org: observed.append(name), window=60, rows_per_window=3
    )
    refusals.refused("ssrf.refused", source="scheme:url", ip=None, details={"category": "scheme"})
    await refusals.drain()
    assert observed == ["ssrf.refused"]
    assert any(getattr(r, "event", None) == "ssrf.refused" for r in caplog.records)
