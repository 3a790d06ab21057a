"""Error masking (API.md, Errors): public codes pass, everything else is ``Unexpected error.``.

The acceptance point: a resolver that raises an exception whose text holds a
password and an ``sk-`` key. The client sees ``Unexpected error.`` with an
``errorId``; the captured log has the ``errorId`` and neither secret.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from typing import Any

import aiohttp
import pytest

from kindrobots.config import Settings
from kindrobots.ids import to_global_id
from kindrobots.resolvers import auth as auth_resolvers
from kindrobots.resolvers import organizations as organization_resolvers
from kindrobots.schema import build_schema
from tests.conftest import SIGN_UP, Client, Response, RunningServer, sign_up, unique_email

ORGANIZATION = "query Org($id: ID!) { organization(id: $id) { id name } }"
SIGN_IN = """
mutation SignIn($input: SignInInput!) {
  signIn(input: $input) { accessToken user { id } }
}
"""


def full_log(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the captured records would print, tracebacks included, two ways."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    formatted = "\n".join(formatter.format(record) for record in caplog.records)
    return caplog.text + "\n" + formatted


def assert_masked(response: Response) -> str:
    """The one shape an unexpected error may have; returns its errorId."""
    assert response.status == 200, response.body
    assert len(response.errors) == 1, response.errors
    (error,) = response.errors
    assert error["message"] == "Unexpected error."
    extensions = error["extensions"]
    assert set(extensions) == {"code", "errorId"}, extensions
    assert extensions["code"] == "INTERNAL_SERVER_ERROR"
    error_id = extensions["errorId"]
    assert isinstance(error_id, str) and len(error_id) >= 16
    return error_id


def assert_logged_without(caplog: pytest.LogCaptureFixture, error_id: str, *hidden: str) -> None:
    text = full_log(caplog)
    assert error_id in text, text
    # The traceback made it into the log (it is where secrets hide most often).
    assert "Traceback" in text and "RuntimeError" in text, text
    for secret in hidden:
        assert secret not in text, f"secret leaked into the log:\n{text}"


async def test_resolver_exception_with_password_and_key_is_masked_and_redacted(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    account = await sign_up(client)
    password = f"pw-{secrets.token_hex(8)}"
    api_key = f"sk-live-{secrets.token_hex(16)}"

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"db said password={password} and key {api_key}")

    monkeypatch.setattr(organization_resolvers, "get_organization", broken)
    caplog.set_level(logging.INFO)
    response = await client.execute(
        ORGANIZATION, {"id": account.organization_id}, token=account.access_token
    )

    error_id = assert_masked(response)
    assert response.data == {"organization": None}
    raw = json.dumps(response.body)
    assert password not in raw and api_key not in raw and "RuntimeError" not in raw
    assert_logged_without(caplog, error_id, password, api_key)


async def test_each_unexpected_error_gets_its_own_id(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    account = await sign_up(client)

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(organization_resolvers, "get_organization", broken)
    caplog.set_level(logging.INFO)
    ids = {
        assert_masked(
            await client.execute(
                ORGANIZATION, {"id": account.organization_id}, token=account.access_token
            )
        )
        for _ in range(2)
    }
    assert len(ids) == 2
    for error_id in ids:
        assert error_id in caplog.text


async def test_sign_in_password_without_a_label_is_redacted(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The request's own password is registered, so it is caught even with no ``password=``."""
    account = await sign_up(client)

    async def broken(stored_hash: str | None, candidate: str) -> bool:
        raise RuntimeError(f"hash backend choked on {candidate!r} for {stored_hash}")

    monkeypatch.setattr(auth_resolvers, "verify_password", broken)
    caplog.set_level(logging.INFO)
    response = await client.execute(
        SIGN_IN, {"input": {"email": account.email, "password": account.password}}
    )

    error_id = assert_masked(response)
    assert account.password not in json.dumps(response.body)
    assert_logged_without(caplog, error_id, account.password)


async def test_sign_up_password_without_a_label_is_redacted(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    password = f"Plain Words {secrets.token_hex(6)}"

    async def broken(value: str) -> str:
        raise RuntimeError(f"could not hash {value}")

    monkeypatch.setattr(auth_resolvers, "hash_password", broken)
    caplog.set_level(logging.INFO)
    response = await client.execute(
        SIGN_UP,
        {
            "input": {
                "email": unique_email(),
                "password": password,
                "displayName": "Someone",
                "organizationName": "Org",
            }
        },
    )

    error_id = assert_masked(response)
    assert password not in json.dumps(response.body)
    assert_logged_without(caplog, error_id, password)


async def test_refresh_token_in_exception_text_is_redacted(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    account = await sign_up(client)

    def broken(token: str) -> str:
        raise RuntimeError(f"cannot hash {token}")

    monkeypatch.setattr(auth_resolvers, "hash_token", broken)
    caplog.set_level(logging.INFO)
    response = await client.execute(
        "mutation R($t: String) { refreshSession(refreshToken: $t) { accessToken } }",
        {"t": account.refresh_token},
    )

    error_id = assert_masked(response)
    assert_logged_without(caplog, error_id, account.refresh_token)


async def test_access_token_in_exception_text_is_redacted(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The bearer token is a JWT: redacted by its shape in any request."""
    account = await sign_up(client)
    token = account.access_token

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"lookup failed for token {token} (bearer {token})")

    monkeypatch.setattr(organization_resolvers, "get_organization", broken)
    caplog.set_level(logging.INFO)
    response = await client.execute(ORGANIZATION, {"id": account.organization_id}, token=token)

    error_id = assert_masked(response)
    assert_logged_without(caplog, error_id, token)


async def test_not_found_keeps_its_code(client: Client) -> None:
    account = await sign_up(client)
    missing = to_global_id("Organization", uuid.uuid4())
    response = await client.execute(ORGANIZATION, {"id": missing}, token=account.access_token)
    assert response.data == {"organization": None}
    (error,) = response.errors
    assert error["extensions"] == {"code": "NOT_FOUND"}
    assert error["message"] == "Not found."
    assert error["path"] == ["organization"]


async def test_unauthenticated_keeps_its_code(client: Client) -> None:
    missing = to_global_id("Organization", uuid.uuid4())
    response = await client.execute(ORGANIZATION, {"id": missing})
    assert response.codes == ["UNAUTHENTICATED"]


async def test_bad_user_input_names_the_field(client: Client) -> None:
    response = await client.execute(
        SIGN_UP,
        {
            "input": {
                "email": unique_email(),
                "password": "short",
                "displayName": "Someone",
                "organizationName": "Org",
            }
        },
    )
    (error,) = response.errors
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "password"}
    assert "short" not in error["message"]


async def test_conflict_keeps_its_code(client: Client) -> None:
    account = await sign_up(client)
    response = await client.execute(
        SIGN_UP,
        {
            "input": {
                "email": account.email,
                "password": "another long password",
                "displayName": "Again",
                "organizationName": "Org",
            }
        },
    )
    assert response.codes == ["CONFLICT"]


@pytest.mark.parametrize(
    "document",
    [
        "{ me { user { id } }",  # syntax error
        "{ mee { user { id } } }",  # unknown field
        "{ me { user { password } } }",  # unknown nested field
        "query Q($id: ID!) { organization(id: $id) { id } }",  # missing variable
    ],
)
async def test_document_errors_are_validation_failures(client: Client, document: str) -> None:
    response = await client.execute(document)
    assert response.errors, response.body
    assert set(response.codes) == {"GRAPHQL_VALIDATION_FAILED"}, response.errors
    assert "errorId" not in json.dumps(response.body)


async def test_wrongly_typed_variable_is_a_validation_failure(client: Client) -> None:
    response = await client.execute(
        "query Q($id: ID!) { organization(id: $id) { id } }", {"id": {"not": "an id"}}
    )
    assert set(response.codes) == {"GRAPHQL_VALIDATION_FAILED"}, response.errors


async def _messages(production: bool, document: str) -> list[str]:
    settings = Settings.model_construct(env="production" if production else "development")
    result = await build_schema(settings).execute(document)
    assert result.errors
    for error in result.errors:
        assert (error.extensions or {}).get("code") == "GRAPHQL_VALIDATION_FAILED"
    return [error.message for error in result.errors]


async def test_development_suggests_field_names() -> None:
    messages = await _messages(False, "{ mee { user { id } } }")
    assert any("Did you mean" in message and "me" in message for message in messages), messages


async def test_production_hides_field_suggestions() -> None:
    messages = await _messages(True, "{ mee { user { id } } }")
    assert messages
    assert not any("Did you mean" in message for message in messages), messages
    nested = await _messages(True, "{ me { user { emial } } }")
    assert not any("Did you mean" in message for message in nested), nested


@pytest.mark.parametrize(
    "document",
    [
        'mutation { signIn(inptu: {email: "a@b.co", password: "x"}) { accessToken } }',
        'mutation { signIn(input: {emial: "a@b.co", password: "x"}) { accessToken } }',
        "query($r: Rol) { plans { tier } }",
        '{ organization(id: "x") { ... on Organizaton { id } } }',
    ],
)
async def test_production_hides_every_kind_of_suggestion(document: str) -> None:
    """Argument, input-field and type names are schema too; development still hints them."""
    assert any("Did you mean" in message for message in await _messages(False, document))
    hidden = await _messages(True, document)
    assert hidden and not any("Did you mean" in message for message in hidden), hidden


@pytest.mark.parametrize(
    ("protocol", "start", "result"),
    [("graphql-transport-ws", "subscribe", "next"), ("graphql-ws", "start", "data")],
)
async def test_unexpected_errors_are_masked_over_websockets(
    client: Client,
    server: RunningServer,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    start: str,
    result: str,
) -> None:
    account = await sign_up(client)
    api_key = f"sk-live-{secrets.token_hex(16)}"

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"upstream rejected key {api_key}")

    monkeypatch.setattr(organization_resolvers, "get_organization", broken)
    caplog.set_level(logging.INFO)
    async with http.ws_connect(server.ws_url, protocols=[protocol]) as ws:
        await ws.send_json(
            {
                "type": "connection_init",
                "payload": {"authorization": f"Bearer {account.access_token}"},
            }
        )
        assert (await ws.receive_json())["type"] == "connection_ack"
        await ws.send_json(
            {
                "type": start,
                "id": "1",
                "payload": {"query": ORGANIZATION, "variables": {"id": account.organization_id}},
            }
        )
        message = await ws.receive_json()
        while message["type"] == "ka":
            message = await ws.receive_json()
    assert message["type"] == result, message
    (error,) = message["payload"]["errors"]
    assert error["message"] == "Unexpected error."
    assert set(error["extensions"]) == {"code", "errorId"}
    assert api_key not in json.dumps(message)
    assert_logged_without(caplog, error["extensions"]["errorId"], api_key)
