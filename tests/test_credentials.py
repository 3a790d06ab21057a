"""LLM credentials: sealed at rest, shown only as a hint, re-sealed by ``keys rotate``."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import insert, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from kindrobots.cli import rotate_keys
from kindrobots.config import Key, format_keys, generate_key
from kindrobots.db.models import Agent, LlmCredential
from kindrobots.ids import from_global_id
from kindrobots.resolvers.credentials import associated_data, open_api_key
from kindrobots.security.crypto import DecryptionError, KeyRing, Sealed
from kindrobots.server import create_services
from tests.conftest import (
    POSTGRES_URL,
    Account,
    Client,
    Response,
    RunningServer,
    make_settings,
    require_service,
    scratch_database,
    set_tier,
    sign_up,
    start_server,
)
from tests.processes import clean_env, run_cli

ADD = """
mutation Add($input: AddLlmCredentialInput!) {
  addLlmCredential(input: $input) { id provider label baseUrl keyHint createdAt }
}
"""
DELETE = "mutation Delete($id: ID!) { deleteLlmCredential(id: $id) }"
LIST = """
query List($id: ID!) {
  organization(id: $id) { llmCredentials { id provider label baseUrl keyHint createdAt } }
}
"""
NODE = """
query Node($id: ID!) {
  node(id: $id) { __typename id ... on LlmCredential { provider label keyHint } }
}
"""
CREATE_AGENT = """
mutation Agent($input: CreateAgentInput!) {
  createAgent(input: $input) { id llmCredential { id label keyHint } }
}
"""
AUDIT = """
query Audit($id: ID!) {
  organization(id: $id) {
    auditLog(first: 100) { edges { node { action targetType targetId metadata actor { id } } } }
  }
}
"""
INVITE = """
mutation Invite($input: InviteMemberInput!) { inviteMember(input: $input) { token } }
"""
ACCEPT = "mutation Accept($token: String!) { acceptInvitation(token: $token) { role } }"


def new_api_key() -> str:
    """A key with no recognisable shape, so only the product (not a log pattern) can hide it."""
    return "kr" + secrets.token_urlsafe(30)


def fragments(secret: str, width: int = 12) -> set[str]:
    """Every ``width``-character window: a key stored or shown in part is found too."""
    return {secret[i : i + width] for i in range(len(secret) - width + 1)}


def leaks(haystack: str, secret: str) -> list[str]:
    return sorted(part for part in fragments(secret) if part in haystack)


def credential_input(organization_id: str, api_key: str, **overrides: Any) -> dict[str, Any]:
    return {
        "organizationId": organization_id,
        "provider": "OPENAI",
        "apiKey": api_key,
        "label": "Production",
        **overrides,
    }


async def add_credential(
    client: Client, account: Account, api_key: str, organization_id: str | None = None
) -> dict[str, Any]:
    response = await client.execute(
        ADD,
        {"input": credential_input(organization_id or account.organization_id, api_key)},
        token=account.access_token,
    )
    assert response.errors == [], response.errors
    credential: dict[str, Any] = response.data["addLlmCredential"]
    return credential


async def add_member(client: Client, owner: Account, role: str) -> Account:
    """A new user who joins the owner's organization as ``role`` by invitation."""
    member = await sign_up(client, organization="Own")
    invited = await client.execute(
        INVITE,
        {"input": {"organizationId": owner.organization_id, "email": member.email, "role": role}},
        token=owner.access_token,
    )
    assert invited.errors == [], invited.errors
    accepted = await client.execute(
        ACCEPT, {"token": invited.data["inviteMember"]["token"]}, token=member.access_token
    )
    assert accepted.errors == [], accepted.errors
    return member


async def raw_rows(server: RunningServer) -> list[tuple[str, dict[str, Any]]]:
    """Every row of every table in the server's database, as stored."""
    async with server.services.read() as session:
        connection = await session.connection()
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        rows: list[tuple[str, dict[str, Any]]] = []
        for table in tables:
            result = await session.execute(text(f'SELECT * FROM "{table}"'))  # noqa: S608
            rows.extend((table, dict(row)) for row in result.mappings())
    return rows


def as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def columns_holding(rows: Iterable[tuple[str, dict[str, Any]]], secret: str) -> list[str]:
    return [
        f"{table}.{column}"
        for table, row in rows
        for column, value in row.items()
        if value is not None and leaks(as_text(value), secret)
    ]


async def credential_row(server: RunningServer, credential_id: str) -> LlmCredential:
    async with server.services.read() as session:
        row = await session.get(LlmCredential, from_global_id(credential_id, "LlmCredential"))
    assert row is not None
    return row


# --- the credential as a user meets it -----------------------------------------------------


async def test_admin_adds_lists_and_deletes_a_credential(client: Client) -> None:
    owner = await sign_up(client)
    api_key = new_api_key()
    added = await client.execute(
        ADD,
        {
            "input": credential_input(
                owner.organization_id,
                f"  {api_key}\n",
                provider="ANTHROPIC",
                label="  Claude  ",
            )
        },
        token=owner.access_token,
    )
    assert added.errors == [], added.errors
    credential = added.data["addLlmCredential"]
    assert credential["provider"] == "ANTHROPIC"
    assert credential["label"] == "Claude"
    assert credential["baseUrl"] is None
    assert credential["keyHint"] == f"…{api_key[-4:]}"
    assert from_global_id(credential["id"], "LlmCredential")

    listed = await client.execute(LIST, {"id": owner.organization_id}, token=owner.access_token)
    assert listed.errors == []
    assert listed.data["organization"]["llmCredentials"] == [credential]
    by_node = await client.execute(NODE, {"id": credential["id"]}, token=owner.access_token)
    assert by_node.data["node"] == {
        "__typename": "LlmCredential",
        "id": credential["id"],
        "provider": "ANTHROPIC",
        "label": "Claude",
        "keyHint": credential["keyHint"],
    }

    deleted = await client.execute(DELETE, {"id": credential["id"]}, token=owner.access_token)
    assert deleted.errors == [] and deleted.data == {"deleteLlmCredential": True}
    listed = await client.execute(LIST, {"id": owner.organization_id}, token=owner.access_token)
    assert listed.data["organization"]["llmCredentials"] == []
    again = await client.execute(DELETE, {"id": credential["id"]}, token=owner.access_token)
    assert again.codes == ["NOT_FOUND"]
    gone = await client.execute(NODE, {"id": credential["id"]}, token=owner.access_token)
    assert (gone.errors, gone.data) == ([], {"node": None})


async def test_the_stored_key_decrypts_only_on_its_own_row(
    client: Client, server: RunningServer
) -> None:
    owner = await sign_up(client)
    other = await sign_up(client, organization="Other")
    first_key, second_key, foreign_key = new_api_key(), new_api_key(), new_api_key()
    first = await add_credential(client, owner, first_key)
    second = await add_credential(client, owner, second_key)
    foreign = await add_credential(client, other, foreign_key)

    keyring = server.services.keyring
    first_row = await credential_row(server, first["id"])
    second_row = await credential_row(server, second["id"])
    assert first_row.key_id == second_row.key_id == keyring.active_key_id
    assert len(first_row.nonce) == len(second_row.nonce) == 12
    assert first_row.nonce != second_row.nonce  # a fresh nonce for every value
    assert first_row.key_hint == first_key[-4:]
    assert open_api_key(keyring, first_row) == first_key
    assert open_api_key(keyring, second_row) == second_key

    # The ciphertext of the first credential, copied onto another organization's row.
    async with server.services.write() as session:
        await session.execute(
            update(LlmCredential)
            .where(LlmCredential.id == from_global_id(foreign["id"], "LlmCredential"))
            .values(key_id=first_row.key_id, nonce=first_row.nonce, ciphertext=first_row.ciphertext)
        )
    moved = await credential_row(server, foreign["id"])
    assert moved.ciphertext == first_row.ciphertext
    with pytest.raises(DecryptionError) as refused:
        open_api_key(keyring, moved)
    assert not leaks(str(refused.value), first_key)
    # Onto another row of the same organization, and under a made-up organization: both fail.
    with pytest.raises(DecryptionError):
        keyring.open(_sealed(first_row), associated_data(first_row.organization_id, second_row.id))
    with pytest.raises(DecryptionError):
        keyring.open(_sealed(first_row), associated_data(uuid.uuid4(), first_row.id))
    # The original row still opens: the AAD, not the bytes, was what changed.
    assert open_api_key(keyring, first_row) == first_key


def _sealed(row: LlmCredential) -> Sealed:
    return Sealed(row.key_id, row.nonce, row.ciphertext)


async def test_the_key_never_leaves_in_rows_logs_or_responses(
    client: Client, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # SQL and its parameters too
    api_key = new_api_key()
    owner = await sign_up(client)
    outsider = await sign_up(client, organization="Outside")
    responses: list[Response] = []

    async def call(query: str, variables: dict[str, Any], token: str) -> Response:
        response = await client.execute(query, variables, token=token)
        responses.append(response)
        return response

    org = owner.organization_id
    added = await call(ADD, {"input": credential_input(org, api_key)}, owner.access_token)
    assert added.errors == [], added.errors
    credential_id = added.data["addLlmCredential"]["id"]
    refusals = [
        # Outsiders, inputs the resolver refuses, inputs GraphQL refuses before any resolver.
        (credential_input(org, api_key), outsider.access_token, "NOT_FOUND"),
        (credential_input(org, api_key, label="x" * 500), owner.access_token, "BAD_USER_INPUT"),
        (
            credential_input(
                org, api_key, provider="OPENAI_COMPATIBLE", baseUrl="http://127.0.0.1:9/v1"
            ),
            owner.access_token,
            "BAD_USER_INPUT",
        ),
        (
            credential_input(org, api_key, provider="OPENAI_COMPATIBLE"),
            owner.access_token,
            "BAD_USER_INPUT",
        ),
        (credential_input(org, api_key, provider="NOPE"), owner.access_token, None),
        (credential_input(org, api_key, extra="field"), owner.access_token, None),
        (credential_input(org, api_key, apiKey=[api_key]), owner.access_token, None),
        (
            {k: v for k, v in credential_input(org, api_key).items() if k != "label"},
            owner.access_token,
            None,
        ),
    ]
    for variables, token, code in refusals:
        refused = await call(ADD, {"input": variables}, token)
        assert refused.errors, refused.body
        if code is not None:
            assert refused.codes == [code], refused.body
    inline = await call(
        "mutation { addLlmCredential(input: {"
        f'organizationId: "{org}", provider: OPENAI, apiKey: ["{api_key}"], label: "Inline"'
        "}) { id } }",
        {},
        owner.access_token,
    )
    assert inline.codes == ["GRAPHQL_VALIDATION_FAILED"]

    agent = await call(
        CREATE_AGENT,
        {
            "input": {
                "organizationId": org,
                "name": "Support",
                "model": "gpt-4o",
                "llmCredentialId": credential_id,
            }
        },
        owner.access_token,
    )
    assert agent.errors == [], agent.errors
    assert agent.data["createAgent"]["llmCredential"]["keyHint"] == f"…{api_key[-4:]}"
    for query, variables in (
        (LIST, {"id": org}),
        (NODE, {"id": credential_id}),
        (AUDIT, {"id": org}),
    ):
        read = await call(query, variables, owner.access_token)
        assert read.errors == [], read.errors

    rows = await raw_rows(server)
    ours = [r for t, r in rows if t == "llm_credentials" and r["key_hint"] == api_key[-4:]]
    assert len(ours) == 1 and ours[0]["ciphertext"], "the sealed row is there to inspect"
    assert columns_holding(rows, api_key) == []

    deleted = await call(DELETE, {"id": credential_id}, owner.access_token)
    assert deleted.data == {"deleteLlmCredential": True}
    audit = await call(AUDIT, {"id": org}, owner.access_token)
    assert audit.errors == []
    assert columns_holding(await raw_rows(server), api_key) == []

    for response in responses:
        assert leaks(json.dumps(response.body), api_key) == [], response.body
    logged = caplog.text + "".join(record.exc_text or "" for record in caplog.records)
    assert "INSERT INTO llm_credentials" in logged  # the SQL log was on, parameters included
    assert leaks(logged, api_key) == []


async def test_every_credential_mutation_is_audited_without_the_secret(
    client: Client, server: RunningServer
) -> None:
    owner = await sign_up(client)
    api_key = new_api_key()
    credential = await add_credential(client, owner, api_key)
    refused = await client.execute(
        ADD,
        {"input": credential_input(owner.organization_id, api_key, label="")},
        token=owner.access_token,
    )
    assert refused.codes == ["BAD_USER_INPUT"]
    deleted = await client.execute(DELETE, {"id": credential["id"]}, token=owner.access_token)
    assert deleted.data == {"deleteLlmCredential": True}

    response = await client.execute(AUDIT, {"id": owner.organization_id}, token=owner.access_token)
    assert response.errors == []
    events = [
        edge["node"]
        for edge in response.data["organization"]["auditLog"]["edges"]
        if edge["node"]["action"].startswith("llm_credential.")
    ]
    assert [event["action"] for event in events] == [
        "llm_credential.add",
        "llm_credential.delete",
    ]
    for event in events:
        assert event["targetType"] == "LlmCredential"
        assert event["targetId"] == credential["id"]
        assert event["actor"] == {"id": owner.user_id}
        assert event["metadata"]["label"] == "Production"
        assert leaks(json.dumps(event), api_key) == []
    assert events[0]["metadata"]["provider"] == "OPENAI"


async def test_only_admins_and_owners_manage_credentials(
    client: Client, server: RunningServer
) -> None:
    owner = await sign_up(client)
    await set_tier(server, owner.organization_id, "ENTERPRISE")
    admin = await add_member(client, owner, "ADMIN")
    editor = await add_member(client, owner, "EDITOR")
    org = owner.organization_id

    by_admin = await add_credential(client, admin, new_api_key(), org)
    by_owner = await add_credential(client, owner, new_api_key())
    listed = await client.execute(LIST, {"id": org}, token=admin.access_token)
    assert [c["id"] for c in listed.data["organization"]["llmCredentials"]] == [
        by_admin["id"],
        by_owner["id"],
    ]

    add = await client.execute(
        ADD, {"input": credential_input(org, new_api_key())}, token=editor.access_token
    )
    assert add.codes == ["FORBIDDEN"] and add.data is None
    listing = await client.execute(LIST, {"id": org}, token=editor.access_token)
    assert listing.codes == ["FORBIDDEN"]
    delete = await client.execute(DELETE, {"id": by_owner["id"]}, token=editor.access_token)
    assert delete.codes == ["FORBIDDEN"]
    node = await client.execute(NODE, {"id": by_owner["id"]}, token=editor.access_token)
    assert node.codes == ["FORBIDDEN"]

    deleted = await client.execute(DELETE, {"id": by_owner["id"]}, token=admin.access_token)
    assert deleted.data == {"deleteLlmCredential": True}
    listed = await client.execute(LIST, {"id": org}, token=owner.access_token)
    assert [c["id"] for c in listed.data["organization"]["llmCredentials"]] == [by_admin["id"]]


async def test_input_is_checked(client: Client) -> None:
    owner = await sign_up(client)
    org = owner.organization_id
    cases = [
        (credential_input(org, "short"), "apiKey"),
        (credential_input(org, "k" * 1001), "apiKey"),
        (credential_input(org, new_api_key(), label="   "), "label"),
        (credential_input(org, new_api_key(), provider="OPENAI_COMPATIBLE"), "baseUrl"),
        (
            credential_input(
                org, new_api_key(), provider="OPENAI_COMPATIBLE", baseUrl="http://169.254.169.254/"
            ),
            "baseUrl",
        ),
    ]
    for variables, field in cases:
        response = await client.execute(ADD, {"input": variables}, token=owner.access_token)
        assert response.codes == ["BAD_USER_INPUT"], response.body
        assert response.errors[0]["extensions"]["field"] == field
    listed = await client.execute(LIST, {"id": org}, token=owner.access_token)
    assert listed.data["organization"]["llmCredentials"] == []


# --- kindrobots keys rotate -------------------------------------------------------------


@dataclass
class RotationSetup:
    settings_url: str
    data_dir: Path
    old: Key
    credentials: dict[uuid.UUID, str]  # raw credential ID -> API key
    audit_key: bytes  # the key the server sealed the audit heads with


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def rotation_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database of the test's own: ``keys rotate`` touches every row of it."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/rotate.db"
        return
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    async with scratch_database() as url:
        yield url


async def seeded(
    database_url: str, tmp_path: Path, http: aiohttp.ClientSession, count: int
) -> RotationSetup:
    """``count`` credentials in two organizations, sealed under ``old``, server stopped."""
    old = generate_key("old")
    backend = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    settings = make_settings(
        tmp_path, backend, database_url=database_url, encryption_keys=format_keys((old,))
    )
    runner, running = await start_server(settings)
    try:
        client = Client(http, running.base_url)
        owners = [await sign_up(client), await sign_up(client, organization="Second")]
        credentials: dict[uuid.UUID, str] = {}
        for index in range(count):
            api_key = new_api_key()
            added = await add_credential(client, owners[index % 2], api_key)
            credentials[from_global_id(added["id"], "LlmCredential")] = api_key
    finally:
        await runner.cleanup()
    return RotationSetup(database_url, tmp_path, old, credentials, settings.audit_key)


def rotate(
    setup: RotationSetup, *keys: Key, batch_size: int = 2
) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        KR_DATABASE_URL=setup.settings_url,
        KR_DATA_DIR=str(setup.data_dir),
        KR_ENCRYPTION_KEYS=format_keys(keys),
        KR_SIGNING_KEYS=format_keys((generate_key("sig"),)),
        KR_AUDIT_KEY=base64.b64encode(setup.audit_key).decode(),
    )
    return run_cli("keys", "rotate", "--batch-size", str(batch_size), env=env, cwd=setup.data_dir)


async def stored(setup: RotationSetup, keyring: KeyRing) -> dict[uuid.UUID, LlmCredential]:
    backend = "postgresql" if setup.settings_url.startswith("postgresql") else "sqlite"
    services = create_services(
        make_settings(
            setup.data_dir,
            backend,
            database_url=setup.settings_url,
            encryption_keys=format_keys((generate_key("unused"),)),
        )
    )
    services.keyring = keyring
    try:
        async with services.read() as session:
            rows = (await session.scalars(select(LlmCredential))).all()
    finally:
        await services.engine.dispose()
    return {row.id: row for row in rows}


async def reseal(setup: RotationSetup, credential_id: uuid.UUID, keyring: KeyRing) -> None:
    """Seal one row under ``keyring``'s first key, as an earlier (interrupted) run would have."""
    row = (await stored(setup, keyring))[credential_id]
    sealed = keyring.seal(
        setup.credentials[credential_id], associated_data(row.organization_id, row.id)
    )
    engine = create_async_engine(setup.settings_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(LlmCredential)
                .where(LlmCredential.id == credential_id)
                .values(key_id=sealed.key_id, nonce=sealed.nonce, ciphertext=sealed.ciphertext)
            )
    finally:
        await engine.dispose()


def assert_quiet(
    result: subprocess.CompletedProcess[str], setup: RotationSetup, *keys: Key
) -> None:
    output = result.stdout + result.stderr
    for api_key in setup.credentials.values():
        assert leaks(output, api_key) == []
    for key in keys:
        assert format_keys((key,)).split(":", 1)[1] not in output


async def test_keys_rotate_reseals_every_secret_under_the_new_first_key(
    rotation_database: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    setup = await seeded(rotation_database, tmp_path, http, count=5)
    new = generate_key("new")
    old_ring, new_ring = KeyRing((setup.old,)), KeyRing((new,))
    before = await stored(setup, old_ring)
    assert {row.key_id for row in before.values()} == {setup.old.kid}
    # An earlier run stopped after one row: that row is already under the new key.
    first = sorted(setup.credentials)[0]
    await reseal(setup, first, new_ring)

    result = rotate(setup, new, setup.old, batch_size=2)
    assert result.returncode == 0, result.stderr
    assert f"re-encrypted 4, already under {new.kid} 1, failed 0" in result.stdout
    assert_quiet(result, setup, new, setup.old)

    # Only the new key is needed now: every secret opens with a ring that lacks the old one.
    after = await stored(setup, new_ring)
    assert set(after) == set(setup.credentials)
    assert {row.key_id for row in after.values()} == {new.kid}
    for credential_id, api_key in setup.credentials.items():
        assert open_api_key(new_ring, after[credential_id]) == api_key
        assert after[credential_id].key_hint == before[credential_id].key_hint
        assert after[credential_id].nonce != before[credential_id].nonce
        with pytest.raises(DecryptionError):
            open_api_key(old_ring, after[credential_id])

    again = rotate(setup, new, setup.old)
    assert again.returncode == 0, again.stderr
    assert f"re-encrypted 0, already under {new.kid} 5, failed 0" in again.stdout


async def test_keys_rotate_reports_a_secret_it_cannot_open_and_finishes_the_rest(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    setup = await seeded(f"sqlite+aiosqlite:///{tmp_path}/rotate.db", tmp_path, http, count=3)
    lost = generate_key("lost")
    stray = sorted(setup.credentials)[1]
    await reseal(setup, stray, KeyRing((lost,)))  # sealed under a key nobody has any more
    new = generate_key("new")

    result = rotate(setup, new, setup.old, batch_size=1)
    assert result.returncode == 1
    assert f"re-encrypted 2, already under {new.kid} 0, failed 1" in result.stdout
    assert_quiet(result, setup, new, setup.old, lost)
    rows = await stored(setup, KeyRing((new,)))
    assert rows[stray].key_id == lost.kid
    for credential_id, api_key in setup.credentials.items():
        if credential_id != stray:
            assert rows[credential_id].key_id == new.kid
            assert open_api_key(KeyRing((new,)), rows[credential_id]) == api_key


@pytest.mark.parametrize("rotation_database", ["postgresql"], indirect=True)
async def test_keys_rotate_waits_for_a_credential_in_use_instead_of_skipping_it(
    rotation_database: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """An agent being saved with a credential holds a lock on its row for a moment; the
    rotation finishes that row too rather than leave it under the old key and say "done".
    PostgreSQL only: SQLite has no row locks to skip."""
    setup = await seeded(rotation_database, tmp_path, http, count=3)
    new = generate_key("new")
    busy = sorted(setup.credentials)[0]
    services = create_services(
        make_settings(
            tmp_path,
            "postgresql",
            database_url=rotation_database,
            encryption_keys=format_keys((new, setup.old)),
            audit_key=setup.audit_key,
        )
    )
    holder = create_async_engine(rotation_database)
    try:
        async with holder.connect() as connection, holder.connect() as observer:
            transaction = await connection.begin()
            organization_id = (await stored(setup, KeyRing((setup.old,))))[busy].organization_id
            # The foreign key makes PostgreSQL lock the credential row (FOR KEY SHARE).
            await connection.execute(
                insert(Agent).values(
                    id=uuid.uuid4(),
                    organization_id=organization_id,
                    name="Saving",
                    system_prompt="",
                    model="gpt-4o",
                    temperature=0.5,
                    llm_credential_id=busy,
                )
            )
            rotation = asyncio.ensure_future(rotate_keys(services, batch_size=10))
            try:
                for _ in range(3000):  # a bound against hanging, not a time limit under test
                    if rotation.done() or await waiting_on_a_lock(observer):
                        break
                    await asyncio.sleep(0.02)
            finally:
                await transaction.commit()
            report = await asyncio.wait_for(rotation, 60)
    finally:
        await holder.dispose()
        await services.engine.dispose()
    assert (report.rotated, report.current, report.failed) == (3, 0, 0)
    rows = await stored(setup, KeyRing((new,)))
    assert {row.key_id for row in rows.values()} == {new.kid}
    assert open_api_key(KeyRing((new,)), rows[busy]) == setup.credentials[busy]


async def waiting_on_a_lock(observer: AsyncConnection) -> bool:
    """Whether a session of this database is blocked on a lock. Each look is its own
    transaction: PostgreSQL keeps one snapshot of pg_stat_activity per transaction."""
    async with observer.begin():
        waiting = await observer.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)
