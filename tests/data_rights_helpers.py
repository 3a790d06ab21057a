"""An organization with one of everything, and a scan of the database for an ID.

:func:`rows_naming` lists the tables and columns from the database itself
(``sqlite_master``/``PRAGMA table_info``, ``information_schema.columns``), not from
the ORM, so a table another change adds is scanned without anyone listing it.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from kindrobots.db.models import BillingAccount, Conversation, Message
from kindrobots.ids import to_global_id
from tests.chat_helpers import deploy
from tests.conftest import Account, Client, RunningServer, set_tier, sign_up, unique_email
from tests.org_helpers import add_member, invitation_token, raw_id
from tests.processes import clean_env
from tests.test_agents import new_credential, new_manifest

API_KEY = "sk-live-PLAINTEXT-never-exported-7f3a"
CREATE_CREDENTIAL = """
mutation Add($input: AddLlmCredentialInput!) { addLlmCredential(input: $input) { id } }
"""
ORGANIZATION = "query($id: ID!) { organization(id: $id) { id name slug } }"


@dataclass
class Seeded:
    owner: Account
    admin: Account
    viewer: Account
    organization_id: str
    slug: str
    invitation_token: str
    credential_ids: list[str]
    manifest_id: str
    agent_id: str
    project_id: str
    project_key: str
    conversation_ids: dict[str, list[str]] = field(default_factory=dict)
    message_ids: list[str] = field(default_factory=list)

    @property
    def raw(self) -> uuid.UUID:
        return raw_id(self.organization_id, "Organization")

    def all_ids(self) -> list[str]:
        conversations = [c for ids in self.conversation_ids.values() for c in ids]
        return [
            self.organization_id,
            self.owner.user_id,
            self.admin.user_id,
            self.viewer.user_id,
            *self.credential_ids,
            self.manifest_id,
            self.agent_id,
            self.project_id,
            *conversations,
            *self.message_ids,
        ]


async def add_conversation(
    server: RunningServer,
    organization_id: uuid.UUID,
    project_id: uuid.UUID,
    end_user: str | None,
    *,
    idle: timedelta = timedelta(0),
    messages: int = 2,
) -> tuple[str, list[str]]:
    """A conversation last active ``idle`` ago, with ``messages`` messages (global IDs)."""
    at = datetime.now(UTC) - idle
    async with server.services.write() as session:
        conversation = Conversation(
            organization_id=organization_id,
            project_id=project_id,
            end_user=end_user,
            created_at=at,
            updated_at=at,
        )
        session.add(conversation)
        await session.flush()
        rows = [
            Message(
                organization_id=organization_id,
                conversation_id=conversation.id,
                role="user" if index % 2 == 0 else "assistant",
                content=f"message {index} of {end_user}",
                created_at=at,
            )
            for index in range(messages)
        ]
        session.add_all(rows)
        await session.flush()
    return to_global_id("Conversation", conversation.id), [
        to_global_id("Message", row.id) for row in rows
    ]


async def seed(client: Client, server: RunningServer, name: str = "Data Org") -> Seeded:
    owner = await sign_up(client, organization=name)
    await set_tier(server, owner.organization_id, "ENTERPRISE")
    organization_id = owner.organization_id
    admin = await add_member(client, server, owner, organization_id, "ADMIN")
    viewer = await add_member(client, server, owner, organization_id, "VIEWER")
    invitation = await invitation_token(
        client, owner.access_token, organization_id, unique_email("pending")
    )
    in_org = Account(**{**vars(owner), "organization_id": organization_id})
    demo_credential = await new_credential(client, in_org)
    secret = await client.execute(
        CREATE_CREDENTIAL,
        {
            "input": {
                "organizationId": organization_id,
                "provider": "OPENAI",
                "apiKey": API_KEY,
                "label": "Production key",
            }
        },
        token=owner.access_token,
    )
    assert secret.errors == [], secret.errors
    manifest_id = await new_manifest(client, in_org, "Orders API")
    deployed = await deploy(
        client, in_org, credential_id=demo_credential, manifest_ids=[manifest_id]
    )
    slug = await client.execute(ORGANIZATION, {"id": organization_id}, token=owner.access_token)
    seeded = Seeded(
        owner=in_org,
        admin=admin,
        viewer=viewer,
        organization_id=organization_id,
        slug=slug.data["organization"]["slug"],
        invitation_token=invitation,
        credential_ids=[demo_credential, secret.data["addLlmCredential"]["id"]],
        manifest_id=manifest_id,
        agent_id=deployed.agent_id,
        project_id=deployed.project_id,
        project_key=deployed.project_key,
    )
    project = raw_id(deployed.project_id, "Project")
    for subject in ("alice", "alice", "bob", None):
        conversation, messages = await add_conversation(server, seeded.raw, project, subject)
        seeded.conversation_ids.setdefault(subject or "", []).append(conversation)
        seeded.message_ids += messages
    async with server.services.write() as session:
        session.add(
            BillingAccount(
                organization_id=seeded.raw,
                stripe_customer_id=f"cus_{uuid.uuid4().hex[:14]}",
                status="active",
                tier="ENTERPRISE",
            )
        )
    return seeded


def _forms(value: uuid.UUID) -> list[str]:
    """How a UUID may be stored: dashed text (PostgreSQL, JSON) or 32 hex digits (SQLite)."""
    return [str(value), value.hex]


async def rows_naming(
    server: RunningServer, value: uuid.UUID, *, except_ids: tuple[uuid.UUID, ...] = ()
) -> dict[str, int]:
    """Table.column → rows whose ``organization_id`` is ``value``, or whose text, UUID or
    JSON column contains it; ``except_ids`` are rows (by ``id``) left out of the count."""
    found: dict[str, int] = {}
    async with server.services.engine.connect() as connection:
        if server.backend == "sqlite":
            tables = [
                row[0]
                for row in await connection.execute(
                    text(
                        "SELECT name FROM sqlite_master WHERE type = 'table' "
                        "AND name NOT LIKE 'sqlite_%'"
                    )
                )
            ]
            columns = {
                table: [
                    row[1]
                    for row in await connection.execute(text(f'PRAGMA table_info("{table}")'))
                ]
                for table in tables
            }
        else:
            columns = {}
            for table, column, data_type in await connection.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
                )
            ):
                columns.setdefault(table, [])
                if data_type in ("uuid", "text", "character varying", "character", "json", "jsonb"):
                    columns[table].append(column)
        excluded = [form for row_id in except_ids for form in _forms(row_id)]
        for table, names in columns.items():
            has_id = "id" in names
            for column in names:
                patterns = {f"p{i}": f"%{form}%" for i, form in enumerate(_forms(value))}
                matches = " OR ".join(f'CAST("{column}" AS TEXT) LIKE :{key}' for key in patterns)
                where = f"({matches})"
                parameters: dict[str, str] = dict(patterns)
                if excluded and has_id:
                    keys = [f"x{i}" for i in range(len(excluded))]
                    where += f' AND CAST("id" AS TEXT) NOT IN ({", ".join(":" + k for k in keys)})'
                    parameters.update(zip(keys, excluded, strict=True))
                count = (
                    await connection.execute(
                        text(f'SELECT count(*) FROM "{table}" WHERE {where}'),  # noqa: S608
                        parameters,
                    )
                ).scalar_one()
                if count:
                    found[f"{table}.{column}"] = int(count)
    return found


def cli_env(server: RunningServer, data_dir: Path) -> dict[str, str]:
    """The environment a ``kindrobots`` command needs to work on ``server``'s database."""
    return clean_env(
        KR_DATABASE_URL=server.settings.database_url,
        KR_DATA_DIR=str(data_dir),
        KR_AUDIT_KEY=base64.b64encode(server.settings.audit_key).decode(),
        KR_LOG_FORMAT="text",
    )
