"""createOrganization is limited (robustness item 10): a rate limit per caller and a cap on
the organizations one user owns, so per-organization limits cannot be multiplied with
throwaway organizations. The cap holds under concurrent calls, on both databases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from kindrobots.db.models import Membership, Organization
from tests.conftest import Client, Response, RunningServer, backend_server
from tests.org_helpers import CREATE_ORGANIZATION, quick_account, raw_id

CAP = 4


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgresql"])
async def limited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    backend = str(request.param)
    async with backend_server(
        tmp_path_factory.mktemp(f"orgs-{backend}"),
        backend,
        rate_limits=True,
        max_organizations_per_user=CAP,
    ) as running:
        yield running


async def owned(server: RunningServer, user_id: str) -> int:
    async with server.services.read() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Membership)
            .where(Membership.user_id == raw_id(user_id, "User"), Membership.role == "OWNER")
        )
    return int(count or 0)


async def organizations(server: RunningServer) -> int:
    async with server.services.read() as session:
        return int(await session.scalar(select(func.count()).select_from(Organization)) or 0)


async def create(client: Client, token: str) -> Response:
    return await client.execute(
        CREATE_ORGANIZATION, {"name": f"Org {uuid.uuid4().hex[:6]}"}, token=token
    )


async def test_a_user_owns_at_most_the_configured_number_of_organizations(
    limited: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, limited.base_url)
    account = await quick_account(limited)  # owns one already
    for _ in range(CAP - 1):
        response = await create(client, account.access_token)
        assert response.errors == [], response.errors
    before = await organizations(limited)

    refused = await create(client, account.access_token)

    assert refused.codes == ["FORBIDDEN"], refused.body
    assert f"{CAP} organizations" in refused.errors[0]["message"]
    assert await organizations(limited) == before
    assert await owned(limited, account.user_id) == CAP


async def test_concurrent_creations_cannot_pass_the_cap(
    limited: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, limited.base_url)
    account = await quick_account(limited)

    responses = await asyncio.gather(*(create(client, account.access_token) for _ in range(8)))

    created = [response for response in responses if response.errors == []]
    assert len(created) == CAP - 1, [response.body for response in responses]
    assert {code for response in responses for code in response.codes} == {"FORBIDDEN"}
    assert await owned(limited, account.user_id) == CAP


async def test_create_organization_is_rate_limited_per_caller(
    limited: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = Client(http, limited.base_url)
    account = await quick_account(limited)
    for _ in range(10):  # refusals past the cap count too: attempts are what is limited
        await create(client, account.access_token)

    limited_response = await create(client, account.access_token)

    assert limited_response.status == 429
    assert limited_response.codes == ["RATE_LIMITED"], limited_response.body
    assert int(limited_response.headers["Retry-After"]) > 0
    # Per caller: another user is not held by this one's count.
    other = await quick_account(limited)
    assert (await create(client, other.access_token)).errors == []
