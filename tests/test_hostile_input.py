"""Hostile input (robustness item 7): each is BAD_USER_INPUT naming its field, changes
nothing, and is refused alike on SQLite and on PostgreSQL (which refuses NUL in text and
would answer 500)."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from kindrobots.db.models import Agent, Invitation, Manifest, Message, User
from kindrobots.db.models import Base as ModelBase
from tests.chat_helpers import deploy, widget_socket
from tests.conftest import Client, Response, RunningServer, unique_email
from tests.documents import openapi_document
from tests.org_helpers import INVITE, quick_account

NUL = "\u0000"

AGENTS = """
query Agents($id: ID!, $after: String, $search: String) {
  organization(id: $id) { agents(after: $after, search: $search) { edges { node { id } } } }
}
"""
CREATE_AGENT = """
mutation($input: CreateAgentInput!) { createAgent(input: $input) { id } }
"""
CREATE_MANIFEST = """
mutation($input: CreateManifestInput!) { createManifest(input: $input) { id } }
"""
SIGN_UP = """
mutation($input: SignUpInput!) { signUp(input: $input) { accessToken } }
"""
SIGN_IN = """
mutation($input: SignInInput!) { signIn(input: $input) { accessToken } }
"""
SEND = """
mutation($input: ChatInput!) { sendMessage(input: $input) { content } }
"""
CHAT = """
subscription($input: ChatInput!) { chat(input: $input) { __typename } }
"""


async def count(server: RunningServer, model: type[ModelBase]) -> int:
    async with server.services.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def assert_bad_input(response: Response, field: str) -> None:
    assert response.status < 500, response.body
    assert response.codes == ["BAD_USER_INPUT"], response.body
    assert response.errors[0]["extensions"]["field"] == field, response.body


# --- cursors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        "[" * 50_000,
        base64.urlsafe_b64encode(b"[" * 50_000).decode(),
        base64.urlsafe_b64encode(b"[" * 5_000).decode(),  # short enough to reach json.loads
    ],
    ids=["raw", "base64", "base64-short"],
)
async def test_a_deeply_nested_cursor_is_bad_user_input(
    server: RunningServer, client: Client, cursor: str
) -> None:
    account = await quick_account(server)
    response = await client.execute(
        AGENTS, {"id": account.organization_id, "after": cursor}, token=account.access_token
    )
    assert_bad_input(response, "after")


# --- OpenAPI documents -----------------------------------------------------------------------


def json_document(extra: dict[str, Any]) -> str:
    return json.dumps(openapi_document(extra=extra))


HUGE_INTEGER_JSON = json_document({"x-n": 0})[:-1] + ', "x-big": ' + "1" * 5_000 + "}"
HUGE_INTEGER_YAML = (
    "openapi: 3.0.3\ninfo: {title: T, version: '1'}\npaths: {}\nx-big: 0x" + "f" * 5_000 + "\n"
)


@pytest.mark.parametrize(
    "document",
    [
        HUGE_INTEGER_JSON,
        HUGE_INTEGER_YAML,
        json_document({"x-a": {"b": [{"c": f"nul{NUL}here"}]}}),
        json_document({"x-a": {"b": [{f"k{NUL}": "value"}]}}),
        json.dumps(
            openapi_document(
                {"/ping": {"get": {"operationId": "ping", "summary": f"s{NUL}", "responses": {}}}}
            )
        ),
        'openapi: 3.0.3\ninfo: {title: T, version: "1"}\npaths: {}\nx-a: "\\0"\n',
    ],
    ids=["int-json", "int-yaml-hex", "nul-value", "nul-key", "nul-summary", "nul-yaml"],
)
async def test_hostile_openapi_documents_are_bad_user_input(
    server: RunningServer, client: Client, document: str
) -> None:
    account = await quick_account(server)
    before = await count(server, Manifest)
    response = await client.execute(
        CREATE_MANIFEST,
        {"input": {"organizationId": account.organization_id, "name": "M", "openapi": document}},
        token=account.access_token,
    )
    assert_bad_input(response, "openapi")
    assert await count(server, Manifest) == before


# --- NUL bytes in text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"systemPrompt": f"Be kind{NUL}"}, "systemPrompt"), ({"name": f"A{NUL}"}, "name")],
)
async def test_nul_in_agent_text_is_bad_user_input(
    server: RunningServer, client: Client, changes: dict[str, str], field: str
) -> None:
    account = await quick_account(server)
    before = await count(server, Agent)
    agent = {"organizationId": account.organization_id, "name": "A", "model": "demo-model"}
    response = await client.execute(
        CREATE_AGENT, {"input": {**agent, **changes}}, token=account.access_token
    )
    assert_bad_input(response, field)
    assert await count(server, Agent) == before


async def test_nul_in_an_agent_search_is_bad_user_input(
    server: RunningServer, client: Client
) -> None:
    account = await quick_account(server)
    response = await client.execute(
        AGENTS, {"id": account.organization_id, "search": f"a{NUL}b"}, token=account.access_token
    )
    assert_bad_input(response, "search")


async def test_nul_in_a_sign_up_email_is_bad_user_input(
    server: RunningServer, client: Client
) -> None:
    before = await count(server, User)
    email = unique_email().replace("@", f"{NUL}@")
    response = await client.execute(
        SIGN_UP,
        {
            "input": {
                "email": email,
                "password": "correct horse battery",
                "displayName": "N",
                "organizationName": "N",
            }
        },
    )
    assert_bad_input(response, "email")
    assert await count(server, User) == before


async def test_nul_in_an_invitation_email_is_bad_user_input(
    server: RunningServer, client: Client
) -> None:
    account = await quick_account(server)
    before = await count(server, Invitation)
    response = await client.execute(
        INVITE,
        {
            "input": {
                "organizationId": account.organization_id,
                "email": f"a{NUL}@example.com",
                "role": "VIEWER",
            }
        },
        token=account.access_token,
    )
    assert_bad_input(response, "email")
    assert await count(server, Invitation) == before


async def test_nul_in_a_sign_in_email_is_just_a_failed_sign_in(
    server: RunningServer, client: Client
) -> None:
    """No account can have it: the same answer as an unknown email, not a 500."""
    response = await client.execute(
        SIGN_IN, {"input": {"email": f"a{NUL}@example.com", "password": "correct horse battery"}}
    )
    assert response.status < 500, response.body
    assert response.codes == ["UNAUTHENTICATED"], response.body


async def test_nul_in_a_chat_message_over_http_is_bad_user_input(
    server: RunningServer, client: Client
) -> None:
    account = await quick_account(server)
    deployed = await deploy(client, account)
    before = await count(server, Message)
    response = await client.execute(
        SEND,
        {"input": {"message": f"hello{NUL}"}},
        headers={"X-Project-Key": deployed.project_key},
    )
    assert_bad_input(response, "message")
    assert await count(server, Message) == before


async def test_nul_in_a_chat_message_over_websocket_is_bad_user_input(
    server: RunningServer, client: Client, http: aiohttp.ClientSession
) -> None:
    account = await quick_account(server)
    deployed = await deploy(client, account)
    before = await count(server, Message)
    async with widget_socket(http, server, deployed.project_key) as ws:
        await ws.send_json(
            {
                "type": "subscribe",
                "id": "1",
                "payload": {"query": CHAT, "variables": {"input": {"message": f"hi{NUL}"}}},
            }
        )
        frame = await ws.receive_json(timeout=10)
    errors = frame["payload"] if frame["type"] == "error" else frame["payload"].get("errors")
    assert errors, frame
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT", frame
    assert errors[0]["extensions"]["field"] == "message", frame
    assert await count(server, Message) == before
