"""Fixtures of the chat tests that talk to a fake LLM provider (tests/fake_llm.py).

Registered for every test module by ``pytest_plugins`` in tests/conftest.py. Each
module that asks for them gets its own fake provider and, once per database
backend, its own Kind Robots server that may call it, with one organization.
A module whose server must reach more local servers overrides ``llm_allow``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import Account, Client, RunningServer, backend_server, sign_up
from tests.fake_llm import FakeLLM


@pytest_asyncio.fixture(scope="module")
async def fake() -> AsyncIterator[FakeLLM]:
    fake = await FakeLLM.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def llm_allow() -> list[str]:
    """More host:port pairs the server's SSRF allow-list admits, besides the fake."""
    return []


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgresql"])
async def llm_server(
    request: pytest.FixtureRequest,
    fake: FakeLLM,
    llm_allow: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningServer]:
    backend = str(request.param)
    allow = ",".join([fake.host_port, *llm_allow])
    tmp = tmp_path_factory.mktemp(backend)
    async with backend_server(tmp, backend, outbound_allow=allow) as server:
        yield server


@pytest_asyncio.fixture(scope="module")
async def account(llm_server: RunningServer, http: aiohttp.ClientSession) -> Account:
    """One organization per server: each test deploys its own credential, agent and project."""
    return await sign_up(Client(http, llm_server.base_url))
