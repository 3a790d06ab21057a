"""Containment (security policy 8.2) on one instance: staff, suspension, revoked sessions,
rotated keys — each closing open WebSockets at once, audited and recorded.

The same on two instances (Redis between them, the command line's announcements) is in
``test_two_instances_containment.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest_asyncio
from sqlalchemy import select

from kindrobots.auth.principals import CLI
from kindrobots.auth.signing_keys import refresh
from kindrobots.db import audit_chain
from kindrobots.db.models import AuditEvent, SecurityEvent, SigningKey
from kindrobots.ids import from_global_id
from kindrobots.resolvers import containment
from tests.chat_helpers import (
    CHAT,
    closed,
    deploy,
    widget_chat,
    widget_refused,
    widget_socket,
)
from tests.conftest import Account, Client, RunningServer, backend_server, sign_up
from tests.processes import cli_env, run_cli
from tests.test_live_feed import SEND_MESSAGE, LiveFeed, first_answer, in_process

SUSPEND_ORGANIZATION = """
mutation($id: ID!, $reason: String!) { suspendOrganization(id: $id, reason: $reason) }
"""
RESTORE_ORGANIZATION = "mutation($id: ID!) { restoreOrganization(id: $id) }"
SUSPEND_USER = "mutation($id: ID!, $reason: String!) { suspendUser(id: $id, reason: $reason) }"
RESTORE_USER = "mutation($id: ID!) { restoreUser(id: $id) }"
REVOKE_USER_SESSIONS = "mutation($id: ID!) { revokeUserSessions(id: $id) }"
REVOKE_ORGANIZATION_SESSIONS = "mutation($id: ID!) { revokeOrganizationSessions(id: $id) }"
ROTATE_KEYS = "mutation($id: ID!) { rotateOrganizationProjectKeys(id: $id) }"
ORGANIZATION = "query($id: ID!) { organization(id: $id) { name } }"
ME = "{ me { user { email } } }"
SIGN_IN = """
mutation($input: SignInInput!) { signIn(input: $input) { accessToken } }
"""

ORGANIZATION_SUSPENDED = "This organization is suspended."
ACCOUNT_SUSPENDED = "This account is suspended."


async def staff_member(client: Client, server: RunningServer, tmp_path: Path) -> Account:
    """A user made staff the only way there is: ``kindrobots staff grant EMAIL``."""
    account = await sign_up(client, organization="Kind Robots")
    granted = run_cli(
        "staff", "grant", account.email, env=cli_env(server.settings, tmp_path), cwd=tmp_path
    )
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.strip() == f"{account.email}: staff"
    return account


async def as_staff(client: Client, staff: Account, query: str, variables: dict[str, Any]) -> Any:
    response = await client.execute(query, variables, token=staff.access_token)
    assert response.errors == [], response.errors
    return response.data


def send_message(client: Client, project_key: str) -> Any:
    return client.execute(
        SEND_MESSAGE,
        {"input": {"message": "hello"}},
        headers={"X-Project-Key": project_key, "Origin": "https://shop.example.com"},
    )


async def security_events(server: RunningServer, name: str) -> list[SecurityEvent]:
    async with server.services.read() as session:
        return list(await session.scalars(select(SecurityEvent).where(SecurityEvent.event == name)))


async def audit_actions(server: RunningServer, organization_id: uuid.UUID | None) -> list[str]:
    async with server.services.read() as session:
        condition = (
            AuditEvent.organization_id.is_(None)
            if organization_id is None
            else AuditEvent.organization_id == organization_id
        )
        rows = await session.scalars(
            select(AuditEvent).where(condition).order_by(AuditEvent.sequence)
        )
        return [f"{row.actor_kind}:{row.action}" for row in rows]


async def test_staff_comes_only_from_the_command_line(
    client: Client, server: RunningServer, tmp_path: Path
) -> None:
    # No input type of the API can carry the flag.
    sdl = (Path(__file__).parent.parent / "schema.graphql").read_text()
    inputs = [block for block in sdl.split("\n\n") if block.startswith("input ")]
    assert inputs and not any("staff" in block.lower() for block in inputs)

    outsider = await sign_up(client)
    victim = await sign_up(client)
    for query, variables in (
        (SUSPEND_ORGANIZATION, {"id": victim.organization_id, "reason": "x"}),
        (RESTORE_ORGANIZATION, {"id": victim.organization_id}),
        (SUSPEND_USER, {"id": victim.user_id, "reason": "x"}),
        (RESTORE_USER, {"id": victim.user_id}),
        (REVOKE_USER_SESSIONS, {"id": victim.user_id}),
        (REVOKE_ORGANIZATION_SESSIONS, {"id": victim.organization_id}),
        (ROTATE_KEYS, {"id": victim.organization_id}),
    ):
        refused = await client.execute(query, variables, token=outsider.access_token)
        assert refused.codes == ["FORBIDDEN"], (query, refused.body)
        anonymous = await client.execute(query, variables)
        assert anonymous.codes == ["UNAUTHENTICATED"], (query, anonymous.body)
    # Nothing happened to the victim.
    assert (await client.execute(ME, token=victim.access_token)).data["me"] is not None

    staff = await staff_member(client, server, tmp_path)
    await as_staff(client, staff, RESTORE_USER, {"id": victim.user_id})
    env = cli_env(server.settings, tmp_path)
    revoked = run_cli("staff", "revoke", staff.email, env=env, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    refused = await client.execute(RESTORE_USER, {"id": victim.user_id}, token=staff.access_token)
    assert refused.codes == ["FORBIDDEN"]
    unknown = run_cli("staff", "grant", "nobody@example.com", env=env, cwd=tmp_path)
    assert (unknown.returncode, unknown.stderr) == (1, "kindrobots: no such user\n")

    actions = await audit_actions(server, None)
    staff_id = from_global_id(staff.user_id, "User")
    assert "system:staff.grant" in actions and "system:staff.revoke" in actions
    granted = await security_events(server, containment.STAFF_GRANTED)
    assert staff_id in [event.user_id for event in granted]


async def test_a_suspended_organization_is_refused_everywhere_until_restored(
    client: Client, server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    staff = await staff_member(client, server, tmp_path)
    owner = await sign_up(client)
    shop = await deploy(client, owner)
    organization = from_global_id(owner.organization_id, "Organization")
    publish = in_process(server)
    async with (
        widget_socket(http, server, shop.project_key) as widget,
        LiveFeed.open(http, server.ws_url, owner.access_token, shop.project_id, publish) as feed,
    ):
        await as_staff(
            client, staff, SUSPEND_ORGANIZATION, {"id": owner.organization_id, "reason": "abuse"}
        )
        assert await closed(widget) == (4403, ORGANIZATION_SUSPENDED)
        assert await closed(feed.ws) == (4403, ORGANIZATION_SUSPENDED)

    # New widgets, the external API, the dashboard's calls and feeds: all refused, saying why.
    assert await widget_refused(http, server, shop.project_key) == (4403, ORGANIZATION_SUSPENDED)
    api = await send_message(client, shop.project_key)
    assert (api.codes, api.errors[0]["message"]) == (["FORBIDDEN"], ORGANIZATION_SUSPENDED)
    dashboard = await client.execute(
        ORGANIZATION, {"id": owner.organization_id}, token=owner.access_token
    )
    assert (dashboard.codes, dashboard.errors[0]["message"]) == (
        ["FORBIDDEN"],
        ORGANIZATION_SUSPENDED,
    )
    frame = await first_answer(http, server.ws_url, owner.access_token, shop.project_id)
    assert frame["payload"][0]["extensions"]["code"] == "FORBIDDEN", frame
    # The member's account itself is not suspended.
    assert (await client.execute(ME, token=owner.access_token)).data["me"] is not None

    assert (await as_staff(client, staff, RESTORE_ORGANIZATION, {"id": owner.organization_id})) == {
        "restoreOrganization": True
    }
    events = await widget_chat(http, server, shop.project_key, "back again")
    assert events[-1]["__typename"] == "ChatCompleted"
    assert (await send_message(client, shop.project_key)).errors == []
    restored = await client.execute(
        ORGANIZATION, {"id": owner.organization_id}, token=owner.access_token
    )
    assert restored.errors == [] and restored.data["organization"]["name"] == "Acme"

    assert (await audit_actions(server, organization))[-2:] == [
        "staff:organization.suspend",
        "staff:organization.restore",
    ]
    suspended = await security_events(server, containment.ORGANIZATION_SUSPENDED_EVENT)
    assert organization in [event.organization_id for event in suspended]
    assert organization in [
        event.organization_id
        for event in await security_events(server, containment.ORGANIZATION_RESTORED_EVENT)
    ]
    # Other tests break chains of this shared server on purpose: this organization's holds.
    # (``kindrobots audit verify`` on a database of its own: test_two_instances_containment.)
    async with server.services.read() as session:
        report = await audit_chain.verify(session, server.settings.audit_key)
    assert organization not in [link.organization_id for link in report.broken]


async def test_a_suspended_user_is_refused_everywhere_until_restored(
    client: Client, server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    staff = await staff_member(client, server, tmp_path)
    user = await sign_up(client)
    shop = await deploy(client, user)
    async with LiveFeed.open(
        http, server.ws_url, user.access_token, shop.project_id, in_process(server)
    ) as feed:
        await as_staff(client, staff, SUSPEND_USER, {"id": user.user_id, "reason": "stolen"})
        assert await closed(feed.ws) == (4403, ACCOUNT_SUSPENDED)

    refused = await client.execute(ME, token=user.access_token)
    assert (refused.codes, refused.errors[0]["message"]) == (["FORBIDDEN"], ACCOUNT_SUSPENDED)
    signed_in = await client.execute(
        SIGN_IN, {"input": {"email": user.email, "password": user.password}}
    )
    assert (signed_in.codes, signed_in.errors[0]["message"]) == (["FORBIDDEN"], ACCOUNT_SUSPENDED)
    async with http.ws_connect(server.ws_url, protocols=["graphql-transport-ws"]) as ws:
        await ws.send_json(
            {"type": "connection_init", "payload": {"authorization": f"Bearer {user.access_token}"}}
        )
        message = await ws.receive(timeout=10)
        assert (ws.close_code, message.extra) == (4403, ACCOUNT_SUSPENDED)
    # The organization's widgets are the organization's, not the user's: they still chat.
    assert (await widget_chat(http, server, shop.project_key, "hi"))[-1]["__typename"] == (
        "ChatCompleted"
    )

    await as_staff(client, staff, RESTORE_USER, {"id": user.user_id})
    back = await client.execute(ME, token=user.access_token)
    assert back.errors == [] and back.data["me"]["user"]["email"] == user.email
    assert (await audit_actions(server, None))[-2:] == ["staff:user.suspend", "staff:user.restore"]
    user_id = from_global_id(user.user_id, "User")
    assert user_id in [
        event.user_id for event in await security_events(server, containment.USER_SUSPENDED_EVENT)
    ]


async def test_revoked_sessions_end_tokens_and_open_sockets(
    client: Client, server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    staff = await staff_member(client, server, tmp_path)
    user = await sign_up(client)
    shop = await deploy(client, user)
    async with LiveFeed.open(
        http, server.ws_url, user.access_token, shop.project_id, in_process(server)
    ) as feed:
        revoked = await as_staff(client, staff, REVOKE_USER_SESSIONS, {"id": user.user_id})
        assert revoked == {"revokeUserSessions": 1}
        assert await closed(feed.ws) == (4401, "The session has ended; sign in again.")
    assert (await client.execute(ME, token=user.access_token)).data["me"] is None

    # The whole organization: every member's sessions, the staff member's own untouched.
    again = await client.execute(
        SIGN_IN, {"input": {"email": user.email, "password": user.password}}
    )
    token = again.data["signIn"]["accessToken"]
    async with LiveFeed.open(
        http, server.ws_url, token, shop.project_id, in_process(server)
    ) as feed:
        count = await as_staff(
            client, staff, REVOKE_ORGANIZATION_SESSIONS, {"id": user.organization_id}
        )
        assert count == {"revokeOrganizationSessions": 1}
        assert await closed(feed.ws) == (4401, "The session has ended; sign in again.")
    assert (await client.execute(ME, token=token)).data["me"] is None
    assert (await client.execute(ME, token=staff.access_token)).data["me"] is not None


async def test_rotated_project_keys_are_refused_at_once(
    client: Client, server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    staff = await staff_member(client, server, tmp_path)
    owner = await sign_up(client)
    first = await deploy(client, owner)
    second = await deploy(client, owner)
    async with (
        widget_socket(http, server, first.project_key) as one,
        widget_socket(http, server, second.project_key) as two,
    ):
        rotated = await as_staff(client, staff, ROTATE_KEYS, {"id": owner.organization_id})
        assert rotated == {"rotateOrganizationProjectKeys": 2}
        reason = "This project key is no longer valid."
        assert await closed(one) == (4403, reason)
        assert await closed(two) == (4403, reason)
    assert (await widget_refused(http, server, first.project_key))[0] == 4403
    assert (await send_message(client, second.project_key)).codes == ["FORBIDDEN"]


async def test_a_widget_chat_in_flight_is_refused_once_suspended(
    client: Client, server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The check before every message reads the suspension with the project (no
    statement of its own): a widget that was not closed in time still cannot chat."""
    staff = await staff_member(client, server, tmp_path)
    owner = await sign_up(client)
    shop = await deploy(client, owner)
    async with widget_socket(http, server, shop.project_key) as ws:
        # Forget the socket, as if the announcement had been lost.
        server.services.live.remove(
            next(
                iter(
                    server.services.live.matching(
                        [[containment.project_key(from_global_id(shop.project_id, "Project"))]]
                    )
                )
            )
        )
        await as_staff(
            client, staff, SUSPEND_ORGANIZATION, {"id": owner.organization_id, "reason": "x"}
        )
        await ws.send_json(
            {
                "type": "subscribe",
                "id": "1",
                "payload": {"query": CHAT, "variables": {"input": {"message": "hi"}}},
            }
        )
        frame = await ws.receive_json(timeout=20)
        errors = frame["payload"] if frame["type"] == "error" else frame["payload"]["errors"]
        assert [(e["extensions"]["code"], e["message"]) for e in errors] == [
            ("FORBIDDEN", ORGANIZATION_SUSPENDED)
        ]
    await as_staff(client, staff, RESTORE_ORGANIZATION, {"id": owner.organization_id})


# Signing keys, with a controllable clock, on a server of their own: the rotation changes
# the key set the server signs with.


@pytest_asyncio.fixture
async def rotating(backend: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with backend_server(tmp_path, backend) as running:
        yield running


async def test_rotating_the_signing_key_by_the_clock(
    rotating: RunningServer, http: aiohttp.ClientSession
) -> None:
    server, client = rotating, Client(http, rotating.base_url)
    signer = server.services.signer
    account = await sign_up(client)
    old_kid = jwt.get_unverified_header(account.access_token)["kid"]
    t0 = datetime.now(UTC)
    async with server.services.write() as session:
        new_kid = await containment.rotate_signing_key(session, CLI, t0, signer)
    async with server.services.read() as session:
        await refresh(session, signer, t0)
        stored = list(await session.scalars(select(SigningKey)))
    assert new_kid != old_kid
    # The private keys are sealed, never stored as they are.
    assert all(row.key_id == server.services.keyring.active_key_id for row in stored)

    # New tokens carry the new key; old ones still work; the JWKS lists both.
    assert jwt.get_unverified_header(signer.issue(uuid.uuid4(), uuid.uuid4(), t0)[0])["kid"] == (
        new_kid
    )
    assert (await client.execute(ME, token=account.access_token)).data["me"] is not None
    assert {key["kid"] for key in signer.jwks(t0)["keys"]} == {old_kid, new_kid}
    async with http.get(f"{client.base_url}/.well-known/jwks.json") as response:
        served = {key["kid"] for key in (await response.json())["keys"]}
    assert served == {old_kid, new_kid}

    # Past the lifetime of every token the old key signed, only the new key is published.
    after = t0 + signer.ttl + timedelta(seconds=6)
    assert [key["kid"] for key in signer.jwks(after)["keys"]] == [new_kid]
    async with server.services.read() as session:
        await refresh(session, signer, after)
    assert [key["kid"] for key in signer.jwks(after)["keys"]] == [new_kid]

    assert "system:keys.rotate_signing" in await audit_actions(server, None)
    rotated = await security_events(server, containment.SIGNING_KEY_ROTATED)
    assert [event.details["kid"] for event in rotated] == [new_kid]
