"""AUTHENTICATED projects: the widget's end-user JWT, checked against the customer's JWKS.

A real JWKS server on 127.0.0.1 publishes RSA and EC public keys; the Kind Robots
server (allowed to reach it through ``KR_OUTBOUND_ALLOW``) verifies tokens in
``connection_init``. Accepted tokens get an ack and a reply; refused ones a 4401
close before any ack, and one log line that says why without quoting the token.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from kindrobots.security import jwks as jwks_module
from tests.chat_helpers import ORIGIN, Deployed, deploy, widget_chat
from tests.conftest import (
    Client,
    RunningServer,
    backend_server,
    sign_up,
)
from tests.jwks_server import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    KeySet,
    SigningKey,
    claims,
    hmac_token,
    unsigned_token,
)
from tests.test_origins import Handshake, handshake


@pytest_asyncio.fixture(scope="module")
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgresql"])
async def auth_server(
    request: pytest.FixtureRequest, jwks: JwksServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    """A server that may fetch from the JWKS server (and, like production, nothing else local)."""
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"auth-{backend}")
    async with backend_server(tmp, backend, outbound_allow=jwks.host_port) as running:
        yield running


@pytest.fixture
def auth_client(auth_server: RunningServer, http: aiohttp.ClientSession) -> Client:
    return Client(http, auth_server.base_url)


@dataclass
class Site:
    """An AUTHENTICATED project and the key set its JWKS URL serves."""

    server: RunningServer
    http: aiohttp.ClientSession
    project: Deployed
    keys: KeySet

    async def connect(self, token: str | None, origin: str | None = ORIGIN) -> Handshake:
        payload: dict[str, object] = {"projectKey": self.project.project_key}
        if token is not None:
            payload["token"] = token
        return await handshake(self.http, self.server.ws_url, payload, origin)

    async def reply(self, token: str, message: str = "Is my parcel on its way?") -> str:
        events = await widget_chat(
            self.http, self.server, self.project.project_key, message, token=token
        )
        assert events[-1]["__typename"] == "ChatCompleted", events
        return "".join(event["text"] for event in events if event["__typename"] == "ChatDelta")


async def new_site(
    client: Client,
    server: RunningServer,
    http: aiohttp.ClientSession,
    jwks: JwksServer,
    keys: list[SigningKey],
    *,
    max_age: int = 300,
) -> Site:
    key_set = jwks.key_set(keys, max_age=max_age)
    account = await sign_up(client)
    project = await deploy(
        client,
        account,
        project={
            "accessMode": "AUTHENTICATED",
            "jwksUrl": key_set.url,
            "jwtIssuer": ISSUER,
            "jwtAudience": AUDIENCE,
        },
    )
    return Site(server, http, project, key_set)


RSA_KEY = SigningKey.rsa()
EC_KEY = SigningKey.ec()
STRANGER_KEY = SigningKey.rsa(kid=RSA_KEY.kid)  # same kid, another private key


@pytest_asyncio.fixture(scope="module")
async def site(auth_server: RunningServer, http: aiohttp.ClientSession, jwks: JwksServer) -> Site:
    """One project shared by the tests that leave its keys alone."""
    client = Client(http, auth_server.base_url)
    return await new_site(client, auth_server, http, jwks, [RSA_KEY, EC_KEY])


@pytest.mark.parametrize("key", [RSA_KEY, EC_KEY], ids=lambda key: key.algorithm)
async def test_a_valid_token_gets_an_ack_and_a_reply(site: Site, key: SigningKey) -> None:
    token = key.sign(claims())
    assert (await site.connect(token)).acknowledged
    assert await site.reply(token) == "You said: Is my parcel on its way?"


REFUSALS: dict[str, tuple[Callable[[], str | None], str]] = {
    "missing": (lambda: None, "end-user token missing"),
    "expired": (lambda: RSA_KEY.sign(claims(expires_in=-600)), "token expired"),
    "not yet valid": (
        lambda: RSA_KEY.sign(claims(not_before_in=600)),
        "token not yet valid",
    ),
    "no expiry": (
        lambda: RSA_KEY.sign({k: v for k, v in claims().items() if k != "exp"}),
        "bad signature or claims",
    ),
    "wrong aud": (lambda: RSA_KEY.sign(claims(audience="someone-else")), "wrong audience"),
    "wrong iss": (
        lambda: RSA_KEY.sign(claims(issuer="https://id.attacker.example")),
        "wrong issuer",
    ),
    "alg none": (lambda: unsigned_token(claims(), RSA_KEY.kid), "algorithm 'none' not allowed"),
    "HS256 keyed with the public key": (
        lambda: hmac_token(claims(), RSA_KEY.kid, RSA_KEY.public_pem()),
        "algorithm 'HS256' not allowed",
    ),
    "signed by another key": (lambda: STRANGER_KEY.sign(claims()), "bad signature"),
    "RS256 header on an EC key": (
        lambda: RSA_KEY.sign(claims(), kid=EC_KEY.kid),
        "algorithm does not match the key",
    ),
    "not a JWT": (lambda: "not-a-token", "malformed token"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_refused_token_is_closed_with_4401_and_logged_without_the_token(
    site: Site, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_token, reason = REFUSALS[case]
    token = make_token()
    caplog.set_level(logging.INFO, logger="kindrobots")
    result = await site.connect(token)
    assert result.frames == []
    assert result.close_code == 4401
    # The close reason names the check that failed (API.md), never the token.
    assert result.reason.startswith("end-user token"), result.reason
    assert reason in result.reason or len(result.reason.encode()) == 123, result.reason
    if token:
        assert token not in result.reason
        assert (token.rsplit(".", 1)[-1] or token) not in result.reason
    refusals = [
        record.getMessage() for record in caplog.records if "refused" in record.getMessage()
    ]
    assert any(reason in line for line in refusals), refusals
    if token:
        signature = token.rsplit(".", 1)[-1] or token
        for record in caplog.records:
            assert token not in record.getMessage()
            assert signature not in record.getMessage()


async def test_a_jwks_that_cannot_be_fetched_refuses_tokens_and_says_why(
    auth_client: Client,
    auth_server: RunningServer,
    http: aiohttp.ClientSession,
    jwks: JwksServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    site = await new_site(auth_client, auth_server, http, jwks, [RSA_KEY])
    jwks.forget(site.keys)  # the customer's identity provider now answers 404
    caplog.set_level(logging.INFO, logger="kindrobots")
    result = await site.connect(RSA_KEY.sign(claims()))
    assert (result.frames, result.close_code) == ([], 4401)
    assert any("JWKS answered status 404" in record.getMessage() for record in caplog.records)


async def test_a_valid_token_from_a_foreign_origin_is_refused_with_4403(site: Site) -> None:
    result = await site.connect(RSA_KEY.sign(claims()), origin="https://evil.example.net")
    assert (result.frames, result.close_code) == ([], 4403)
    assert result.reason == "origin not allowed for the project: 'https://evil.example.net'"


async def test_a_project_switched_to_authenticated_needs_a_token(
    auth_client: Client, auth_server: RunningServer, http: aiohttp.ClientSession, jwks: JwksServer
) -> None:
    account = await sign_up(auth_client)
    project = await deploy(auth_client, account)
    assert (
        await handshake(http, auth_server.ws_url, {"projectKey": project.project_key}, ORIGIN)
    ).acknowledged
    key_set = jwks.key_set([RSA_KEY])
    updated = await auth_client.execute(
        """mutation($input: UpdateProjectInput!) { updateProject(input: $input) { accessMode } }""",
        {
            "input": {
                "id": project.project_id,
                "accessMode": "AUTHENTICATED",
                "jwksUrl": key_set.url,
                "jwtIssuer": ISSUER,
                "jwtAudience": AUDIENCE,
            }
        },
        token=account.access_token,
    )
    assert updated.errors == [], updated.errors
    site = Site(auth_server, http, project, key_set)
    assert (await site.connect(None)).close_code == 4401
    assert (await site.connect(RSA_KEY.sign(claims()))).acknowledged


# --- key rotation --------------------------------------------------------------------------


class Clock:
    """The JWKS cache's clock, moved forward by hand (the rest of the process keeps real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(jwks_module, "time", fake)
    return fake


def unknown_kid_token() -> str:
    return RSA_KEY.sign(claims(), kid=f"junk-{uuid.uuid4().hex[:8]}")


async def burst(site: Site, tokens: list[str]) -> list[int | None]:
    results = await asyncio.gather(*(site.connect(token) for token in tokens))
    return [result.close_code for result in results]


async def test_rotated_keys_are_fetched_once_and_junk_kids_do_not_refetch(
    auth_client: Client,
    auth_server: RunningServer,
    http: aiohttp.ClientSession,
    jwks: JwksServer,
    clock: Clock,
) -> None:
    old_key, new_key, newest_key = SigningKey.rsa(), SigningKey.ec(), SigningKey.rsa()
    site = await new_site(auth_client, auth_server, http, jwks, [old_key])

    assert (await site.connect(old_key.sign(claims()))).acknowledged
    assert (await site.connect(old_key.sign(claims(subject="end-user-2")))).acknowledged
    assert site.keys.requests == 1  # cached for max-age

    # The customer rotates: the JWKS now publishes only the new key.
    site.keys.keys = [new_key]
    assert await site.reply(new_key.sign(claims())) == "You said: Is my parcel on its way?"
    assert site.keys.requests == 2  # one refetch for the unknown kid

    # A burst of unknown kids (and the retired key) within the minute: no further fetch.
    tokens = [unknown_kid_token() for _ in range(10)] + [old_key.sign(claims())]
    assert await burst(site, tokens) == [4401] * len(tokens)
    assert site.keys.requests == 2
    assert (await site.connect(new_key.sign(claims()))).acknowledged

    # A minute later an unknown kid may refetch again, once: the next rotation is picked up.
    clock.offset += 61
    site.keys.keys = [new_key, newest_key]
    assert (await site.connect(newest_key.sign(claims()))).acknowledged
    assert site.keys.requests == 3
    assert await burst(site, [unknown_kid_token() for _ in range(5)]) == [4401] * 5
    assert site.keys.requests == 3

    # Past max-age the set is fetched again even for known kids.
    clock.offset += 300
    assert (await site.connect(newest_key.sign(claims()))).acknowledged
    assert site.keys.requests == 4


async def test_a_no_cache_jwks_is_not_fetched_for_every_token(
    auth_client: Client,
    auth_server: RunningServer,
    http: aiohttp.ClientSession,
    jwks: JwksServer,
    clock: Clock,
) -> None:
    """``max-age=0`` must not turn each connection attempt into a fetch of the customer's JWKS."""
    key = SigningKey.rsa()
    site = await new_site(auth_client, auth_server, http, jwks, [key], max_age=0)
    assert (await site.connect(key.sign(claims()))).acknowledged
    forged = [STRANGER_KEY.sign(claims(), kid=key.kid) for _ in range(5)]
    junk = [unknown_kid_token() for _ in range(5)]
    assert await burst(site, forged + junk) == [4401] * 10
    assert (await site.connect(key.sign(claims()))).acknowledged
    assert site.keys.requests <= 2


SEND = "mutation($input: ChatInput!) { sendMessage(input: $input) { content conversationId } }"


async def test_the_external_api_checks_the_end_user_token_too(
    site: Site, http: aiohttp.ClientSession
) -> None:
    """sendMessage over HTTP: the same JWT rules as the widget, Authorization: Bearer."""
    url = f"{site.server.base_url}/graphql"

    async def send(token: str | None) -> dict[str, Any]:
        headers = {"X-Project-Key": site.project.project_key}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        payload = {"query": SEND, "variables": {"input": {"message": "Where is it?"}}}
        async with http.post(url, json=payload, headers=headers) as response:
            body: dict[str, Any] = await response.json(content_type=None)
            return body

    accepted = await send(RSA_KEY.sign(claims()))
    assert accepted.get("errors") is None, accepted
    assert accepted["data"]["sendMessage"]["content"] == "You said: Where is it?"
    for token in (
        None,
        RSA_KEY.sign(claims(expires_in=-600)),
        RSA_KEY.sign(claims(audience="someone-else")),
        unsigned_token(claims(), RSA_KEY.kid),
        hmac_token(claims(), RSA_KEY.kid, RSA_KEY.public_pem()),
    ):
        refused = await send(token)
        assert refused["data"] is None
        assert [e["extensions"]["code"] for e in refused["errors"]] == ["UNAUTHENTICATED"]
