"""Data rights: export, organization deletion, end-user erasure, retention (issue 11 item 7)."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from kindrobots.db.models import (
    AuditEvent,
    BillingAccount,
    Conversation,
    Invitation,
    LlmCredential,
    Message,
    Organization,
    RefreshToken,
    User,
)
from kindrobots.ids import from_global_id, to_global_id
from kindrobots.resolvers import data_rights
from tests.conftest import Client, RunningServer, backend_server, count_statements
from tests.data_rights_helpers import (
    API_KEY,
    Seeded,
    add_conversation,
    cli_env,
    rows_naming,
    seed,
)
from tests.org_helpers import audit_events, only_error, raw_id
from tests.processes import ROOT, audit_verify, run_cli

EXPORT = """
mutation($id: ID!) {
  exportOrganization(organizationId: $id) { organizationId exportedAt document }
}
"""
DELETE = """
mutation($input: DeleteOrganizationInput!) { deleteOrganization(input: $input) }
"""
DELETE_END_USER = """
mutation($input: DeleteEndUserDataInput!) {
  deleteEndUserData(input: $input) { conversations messages }
}
"""
UPDATE = """
mutation($input: UpdateOrganizationInput!) {
  updateOrganization(input: $input) { id conversationRetentionDays }
}
"""
RETENTION = "query($id: ID!) { organization(id: $id) { conversationRetentionDays } }"


@pytest_asyncio.fixture(scope="module")
async def server(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    """This module's own database: ``audit verify`` must see only these tests' chains
    (other modules break theirs on purpose)."""
    async with backend_server(
        tmp_path_factory.mktemp(f"data-rights-{backend}"), backend
    ) as running:
        yield running


async def export(client: Client, token: str, organization_id: str) -> Any:
    response = await client.execute(EXPORT, {"id": organization_id}, token=token)
    assert response.errors == [], response.errors
    return response.data["exportOrganization"]


async def secrets_of(server: RunningServer, seeded: Seeded) -> list[str]:
    """Everything that must never leave in an archive, as text it could appear as."""
    found = [API_KEY, seeded.invitation_token, seeded.project_key, seeded.owner.refresh_token]
    async with server.services.read() as session:
        for nonce, ciphertext in await session.execute(
            select(LlmCredential.nonce, LlmCredential.ciphertext).where(
                LlmCredential.organization_id == seeded.raw
            )
        ):
            for blob in (nonce, ciphertext):
                found += [base64.b64encode(blob).decode(), blob.hex()]
        found += list(
            await session.scalars(
                select(User.password_hash).where(
                    User.id.in_(
                        [
                            from_global_id(a.user_id, "User")
                            for a in (seeded.owner, seeded.admin, seeded.viewer)
                        ]
                    )
                )
            )
        )
        found += list(
            await session.scalars(
                select(Invitation.token_hash).where(Invitation.organization_id == seeded.raw)
            )
        )
        found += list(await session.scalars(select(RefreshToken.token_hash)))
    return [secret for secret in found if secret]


async def test_export_holds_every_object_and_no_secret(
    client: Client, server: RunningServer
) -> None:
    seeded = await seed(client, server)
    result = await export(client, seeded.owner.access_token, seeded.organization_id)
    document = result["document"]
    archive = json.dumps(document)
    for object_id in seeded.all_ids():
        assert object_id in archive, object_id
    for secret in await secrets_of(server, seeded):
        assert secret not in archive
    assert document["format"] == data_rights.EXPORT_FORMAT
    assert document["organization"]["slug"] == seeded.slug
    assert {m["role"] for m in document["members"]} == {"OWNER", "ADMIN", "VIEWER"}
    credentials = {c["id"]: c for c in document["llmCredentials"]}
    assert credentials[seeded.credential_ids[1]]["keyHint"].endswith(API_KEY[-4:])
    assert set(credentials[seeded.credential_ids[1]]) == {
        "id",
        "provider",
        "label",
        "baseUrl",
        "keyHint",
        "createdAt",
    }
    (project,) = document["projects"]
    assert project["publishableKeyHint"] == f"…{seeded.project_key[-4:]}"
    (agent,) = document["agents"]
    assert agent["manifestIds"] == [seeded.manifest_id]
    (manifest,) = document["manifests"]
    assert manifest["versions"][0]["operations"]
    alice = [c for c in document["conversations"] if c["endUser"] == "alice"]
    assert len(alice) == 2 and all(len(c["messages"]) == 2 for c in alice)
    assert document["billing"]["status"] == "active"
    pending = {i["email"].split("-")[0]: i["acceptedAt"] for i in document["invitations"]}
    assert pending["pending"] is None and len(document["invitations"]) == 3
    # The archive's own audit trail: the export is recorded, before the data left.
    exported = await audit_events(
        client, seeded.owner.access_token, seeded.organization_id, data_rights.ORGANIZATION_EXPORTED
    )
    assert len(exported) == 1 and exported[0]["actor"]["id"] == seeded.owner.user_id


async def test_export_statements_do_not_grow_with_the_organization(
    client: Client, server: RunningServer
) -> None:
    seeded = await seed(client, server)
    project = raw_id(seeded.project_id, "Project")

    async def statements() -> int:
        with count_statements(server) as counter:
            await export(client, seeded.owner.access_token, seeded.organization_id)
        return counter.count

    before = await statements()
    for subject in ("carol", "dave", "erin"):
        await add_conversation(server, seeded.raw, project, subject, messages=3)
    assert await statements() == before


@pytest.mark.parametrize("role", ["ADMIN", "VIEWER"])
async def test_only_an_owner_exports_or_deletes(
    client: Client, server: RunningServer, role: str
) -> None:
    seeded = await seed(client, server)
    member = seeded.admin if role == "ADMIN" else seeded.viewer
    refused = await client.execute(
        EXPORT, {"id": seeded.organization_id}, token=member.access_token
    )
    assert only_error(refused)["extensions"]["code"] == "FORBIDDEN"
    deleting = await client.execute(
        DELETE,
        {"input": {"organizationId": seeded.organization_id, "confirmation": seeded.slug}},
        token=member.access_token,
    )
    assert only_error(deleting)["extensions"]["code"] == "FORBIDDEN"
    assert await rows_naming(server, seeded.raw)


async def test_a_wrong_confirmation_changes_nothing(client: Client, server: RunningServer) -> None:
    seeded = await seed(client, server)
    before = await rows_naming(server, seeded.raw)
    for confirmation in ["", "   ", seeded.slug.upper(), seeded.slug + "x", "Data Org 2"]:
        response = await client.execute(
            DELETE,
            {"input": {"organizationId": seeded.organization_id, "confirmation": confirmation}},
            token=seeded.owner.access_token,
        )
        error = only_error(response)
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "confirmation"}
    assert await rows_naming(server, seeded.raw) == before


async def test_a_live_subscription_blocks_the_deletion(
    client: Client, server: RunningServer
) -> None:
    seeded = await seed(client, server)
    async with server.services.write() as session:
        billing = await session.get(BillingAccount, seeded.raw)
        assert billing is not None
        billing.stripe_subscription_id = "sub_live"
    before = await rows_naming(server, seeded.raw)
    arguments = {"organizationId": seeded.organization_id, "confirmation": seeded.slug}
    response = await client.execute(DELETE, {"input": arguments}, token=seeded.owner.access_token)
    assert only_error(response)["extensions"]["code"] == "CONFLICT"
    assert await rows_naming(server, seeded.raw) == before
    async with server.services.write() as session:
        billing = await session.get(BillingAccount, seeded.raw)
        assert billing is not None
        billing.cancel_at_period_end = True
    response = await client.execute(DELETE, {"input": arguments}, token=seeded.owner.access_token)
    assert response.errors == [], response.errors


async def tombstone_of(server: RunningServer, organization_id: str) -> AuditEvent:
    async with server.services.read() as session:
        event = await session.scalar(
            select(AuditEvent).where(
                AuditEvent.organization_id.is_(None),
                AuditEvent.action == data_rights.ORGANIZATION_DELETED,
                AuditEvent.target_id == organization_id,
            )
        )
    assert event is not None
    return event


async def test_deleting_an_organization_leaves_no_row_of_it(
    client: Client, server: RunningServer, tmp_path: Path
) -> None:
    seeded = await seed(client, server)
    other = await seed(client, server, name="Other Org")
    other_before = await rows_naming(server, other.raw)
    assert "conversations.organization_id" in other_before

    response = await client.execute(
        DELETE,
        {"input": {"organizationId": seeded.organization_id, "confirmation": seeded.slug}},
        token=seeded.owner.access_token,
    )
    assert response.errors == [], response.errors
    assert response.data["deleteOrganization"] is True

    tombstone = await tombstone_of(server, seeded.organization_id)
    assert await rows_naming(server, seeded.raw, except_ids=(tombstone.id,)) == {}
    assert await rows_naming(server, other.raw) == other_before
    # The tombstone keeps what happened, not who: no user, email, address or name.
    assert tombstone.actor_kind == "user" and tombstone.actor == "user"
    assert tombstone.actor_id is None and tombstone.ip is None
    recorded = json.dumps(tombstone.details)
    for personal in (seeded.owner.email, seeded.admin.email, seeded.slug, "Data Org"):
        assert personal not in recorded
    assert tombstone.details["rows"]["conversations"] == 4
    assert tombstone.details["rows"]["messages"] == 8
    verified = audit_verify(server.settings, tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The members keep their accounts (and their other organizations).
    gone = await client.execute(
        "query($id: ID!) { organization(id: $id) { id } }",
        {"id": seeded.organization_id},
        token=seeded.admin.access_token,
    )
    assert only_error(gone)["extensions"]["code"] == "NOT_FOUND"


async def test_command_line_export_and_delete(
    client: Client, server: RunningServer, tmp_path: Path
) -> None:
    seeded = await seed(client, server)
    env = cli_env(server, tmp_path)
    archive = tmp_path / "export.json"
    exported = run_cli("org", "export", seeded.slug, "--output", str(archive), env=env, cwd=ROOT)
    assert exported.returncode == 0, exported.stderr
    document = json.loads(archive.read_text())
    for object_id in seeded.all_ids():
        assert object_id in archive.read_text()
    assert len(document["conversations"]) == 4
    for secret in await secrets_of(server, seeded):
        assert secret not in archive.read_text()

    wrong = run_cli("org", "delete", seeded.slug, "--confirm", "nope", env=env, cwd=ROOT)
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
    unwritable = run_cli(
        "org",
        "export",
        seeded.slug,
        "--output",
        str(tmp_path / "none" / "x.json"),
        env=env,
        cwd=ROOT,
    )
    assert unwritable.returncode == 1 and unwritable.stderr.count("\n") == 1, unwritable.stderr
    unknown = run_cli("org", "export", "no-such-org", env=env, cwd=ROOT)
    assert unknown.returncode == 1 and unknown.stderr == "kindrobots: no such organization\n"

    deleted = run_cli(
        "org", "delete", seeded.organization_id, "--confirm", seeded.slug, env=env, cwd=ROOT
    )
    assert deleted.returncode == 0, deleted.stderr
    tombstone = await tombstone_of(server, seeded.organization_id)
    assert (tombstone.actor_kind, tombstone.actor) == ("system", "cli")
    assert await rows_naming(server, seeded.raw, except_ids=(tombstone.id,)) == {}


async def conversations_left(server: RunningServer, seeded: Seeded) -> dict[str | None, int]:
    async with server.services.read() as session:
        rows = await session.execute(
            select(Conversation.end_user, func.count())
            .where(Conversation.organization_id == seeded.raw)
            .group_by(Conversation.end_user)
        )
        return {subject: int(count) for subject, count in rows}


async def test_deleting_one_end_users_data(client: Client, server: RunningServer) -> None:
    seeded = await seed(client, server)
    other = await seed(client, server, name="Other Org")
    arguments = {"organizationId": seeded.organization_id, "subject": "alice"}
    refused = await client.execute(
        DELETE_END_USER, {"input": arguments}, token=seeded.viewer.access_token
    )
    assert only_error(refused)["extensions"]["code"] == "FORBIDDEN"
    foreign_project = await client.execute(
        DELETE_END_USER,
        {"input": {**arguments, "projectId": other.project_id}},
        token=seeded.admin.access_token,
    )
    assert only_error(foreign_project)["extensions"]["code"] == "NOT_FOUND"
    empty = await client.execute(
        DELETE_END_USER, {"input": {**arguments, "subject": ""}}, token=seeded.admin.access_token
    )
    assert only_error(empty)["extensions"] == {"code": "BAD_USER_INPUT", "field": "subject"}

    response = await client.execute(
        DELETE_END_USER, {"input": arguments}, token=seeded.admin.access_token
    )
    assert response.errors == [], response.errors
    assert response.data["deleteEndUserData"] == {"conversations": 2, "messages": 4}
    assert await conversations_left(server, seeded) == {"bob": 1, None: 1}
    assert await conversations_left(server, other) == {"alice": 2, "bob": 1, None: 1}
    async with server.services.read() as session:
        orphans = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(
                Message.conversation_id.in_(
                    [raw_id(c, "Conversation") for c in seeded.conversation_ids["alice"]]
                )
            )
        )
    assert orphans == 0
    (event,) = await audit_events(
        client, seeded.owner.access_token, seeded.organization_id, data_rights.END_USER_DATA_DELETED
    )
    assert "alice" not in json.dumps(event)
    assert event["metadata"]["conversations"] == 2
    assert len(event["metadata"]["subjectHash"]) == 64

    by_project = await client.execute(
        DELETE_END_USER,
        {"input": {**arguments, "subject": "bob", "projectId": seeded.project_id}},
        token=seeded.admin.access_token,
    )
    assert by_project.data["deleteEndUserData"] == {"conversations": 1, "messages": 2}
    assert await conversations_left(server, seeded) == {None: 1}


async def test_the_retention_setting(client: Client, server: RunningServer) -> None:
    seeded = await seed(client, server)
    arguments = {"organizationId": seeded.organization_id, "conversationRetentionDays": 30}
    viewer = await client.execute(UPDATE, {"input": arguments}, token=seeded.viewer.access_token)
    assert only_error(viewer)["extensions"]["code"] == "FORBIDDEN"
    for days in (0, -1, 3651):
        bad = await client.execute(
            UPDATE,
            {"input": {**arguments, "conversationRetentionDays": days}},
            token=seeded.admin.access_token,
        )
        assert only_error(bad)["extensions"] == {
            "code": "BAD_USER_INPUT",
            "field": "conversationRetentionDays",
        }
    updated = await client.execute(UPDATE, {"input": arguments}, token=seeded.admin.access_token)
    assert updated.data["updateOrganization"]["conversationRetentionDays"] == 30
    untouched = await client.execute(
        UPDATE,
        {"input": {"organizationId": seeded.organization_id}},
        token=seeded.owner.access_token,
    )
    assert untouched.data["updateOrganization"]["conversationRetentionDays"] == 30
    read = await client.execute(
        RETENTION, {"id": seeded.organization_id}, token=seeded.viewer.access_token
    )
    assert read.data["organization"]["conversationRetentionDays"] == 30
    cleared = await client.execute(
        UPDATE,
        {"input": {**arguments, "conversationRetentionDays": None}},
        token=seeded.owner.access_token,
    )
    assert cleared.data["updateOrganization"]["conversationRetentionDays"] is None
    changes = await audit_events(
        client, seeded.owner.access_token, seeded.organization_id, data_rights.ORGANIZATION_UPDATED
    )
    assert [c["metadata"]["conversationRetentionDays"] for c in changes] == [
        {"from": None, "to": 30},
        {"from": 30, "to": None},
    ]


async def retention_fixture(
    client: Client, server: RunningServer, old: int
) -> tuple[Seeded, Seeded, set[str]]:
    """An organization keeping conversations 30 days with ``old`` idle 31 days (returned)
    besides recent ones, and one without a setting whose old ones must stay."""
    seeded = await seed(client, server)
    keeping = await seed(client, server, name="Keeps Everything")
    async with server.services.write() as session:
        organization = await session.get(Organization, seeded.raw)
        assert organization is not None
        organization.conversation_retention_days = 30
    project = raw_id(seeded.project_id, "Project")
    expired = set()
    for index in range(old):
        conversation, _ = await add_conversation(
            server, seeded.raw, project, f"old-{index}", idle=timedelta(days=31)
        )
        expired.add(conversation)
    await add_conversation(server, seeded.raw, project, "recent", idle=timedelta(days=29))
    await add_conversation(
        server, keeping.raw, raw_id(keeping.project_id, "Project"), "x", idle=timedelta(days=400)
    )
    return seeded, keeping, expired


async def conversation_ids(server: RunningServer, seeded: Seeded) -> set[str]:
    async with server.services.read() as session:
        rows = await session.scalars(
            select(Conversation.id).where(Conversation.organization_id == seeded.raw)
        )
        return {to_global_id("Conversation", row) for row in rows}


async def purge_events(client: Client, seeded: Seeded) -> list[dict[str, Any]]:
    return await audit_events(
        client, seeded.owner.access_token, seeded.organization_id, data_rights.CONVERSATIONS_PURGED
    )


async def test_retention_purges_exactly_the_idle_conversations(
    client: Client, server: RunningServer, tmp_path: Path
) -> None:
    seeded, keeping, expired = await retention_fixture(client, server, old=5)
    before, kept_before = (
        await conversation_ids(server, seeded),
        await conversation_ids(server, keeping),
    )
    ran = run_cli("retention", "run", "--batch-size", "2", env=cli_env(server, tmp_path), cwd=ROOT)
    assert ran.returncode == 0, ran.stderr
    assert "purged 5 conversations (10 messages) in 1 organizations" in ran.stdout
    assert await conversation_ids(server, seeded) == before - expired
    assert await conversation_ids(server, keeping) == kept_before
    (event,) = await purge_events(client, seeded)
    assert (event["metadata"]["conversations"], event["metadata"]["messages"]) == (5, 10)
    again = run_cli("retention", "run", env=cli_env(server, tmp_path), cwd=ROOT)
    assert "purged 0 conversations" in again.stdout
    assert len(await purge_events(client, seeded)) == 1


async def test_two_retention_runs_at_once(
    client: Client, server: RunningServer, tmp_path: Path
) -> None:
    if server.backend != "postgresql":
        pytest.skip("concurrent instances share PostgreSQL")
    seeded, _, expired = await retention_fixture(client, server, old=24)
    before = await conversation_ids(server, seeded)
    env = cli_env(server, tmp_path)

    async def run() -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kindrobots",
            "retention",
            "run",
            "--batch-size",
            "3",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    results = await asyncio.gather(run(), run())
    purged = 0
    for code, out, err in results:
        assert code == 0 and err == "", err
        purged += int(out.split()[1])
    assert purged == len(expired)
    assert await conversation_ids(server, seeded) == before - expired
    events = await purge_events(client, seeded)
    assert 1 <= len(events) <= 2
    assert sum(e["metadata"]["conversations"] for e in events) == len(expired)
    verified = audit_verify(server.settings, tmp_path)
    assert verified.returncode == 0, verified.stdout
