"""Containment on two instances: a staff action or a command on one reaches the other.

Two real ``kindrobots serve`` processes on one PostgreSQL and one Redis. Whatever is
contained (an organization, a user, sessions, project keys, the signing key) is
announced on the broker's control channel after commit, and each instance closes its
own matching WebSockets within a second (``tests.chat_helpers.closed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import jwt
from redis.asyncio import Redis

from kindrobots.broker.redis import RedisBroker
from tests.chat_helpers import closed, deploy, widget_chat, widget_refused, widget_socket
from tests.conftest import POSTGRES_URL, REDIS_URL, Client, require_service, sign_up
from tests.processes import Instance, instances, run_cli
from tests.test_containment import (
    ACCOUNT_SUSPENDED,
    ME,
    ORGANIZATION_SUSPENDED,
    RESTORE_ORGANIZATION,
    SIGN_IN,
    SUSPEND_ORGANIZATION,
    as_staff,
    send_message,
)
from tests.test_live_feed import LiveFeed, Publish

SETTINGS = {"KR_PUBLIC_URL": "http://localhost:8000", "KR_RATE_LIMITS": "false"}
SESSION_ENDED = (4401, "The session has ended; sign in again.")


async def kindrobots(instance: Instance, tmp: Path, *args: str) -> str:
    """A command with the instances' settings (their database, keys and Redis); its output."""
    done = await asyncio.to_thread(run_cli, *args, env=instance.env, cwd=tmp)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@asynccontextmanager
async def two(
    http: aiohttp.ClientSession, tmp: Path
) -> AsyncIterator[tuple[Instance, Instance, Publish]]:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    require_service("Redis", REDIS_URL, 6379)
    async with instances(http, tmp, SETTINGS) as (a, b):
        redis = Redis.from_url(REDIS_URL)
        try:
            yield a, b, RedisBroker(redis).publish
        finally:
            await redis.aclose()


async def test_containment_reaches_the_other_instance(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with two(http, tmp_path) as (a, b, probe):
        on_a, on_b = Client(http, a.base_url), Client(http, b.base_url)
        staff = await sign_up(on_a, organization="Kind Robots")
        assert await kindrobots(a, tmp_path, "staff", "grant", staff.email) == (
            f"{staff.email}: staff"
        )
        owner = await sign_up(on_a)
        shop = await deploy(on_a, owner)

        # Suspend the organization on A: B's widget and B's feed close.
        async with (
            widget_socket(http, a, shop.project_key) as widget_a,
            widget_socket(http, b, shop.project_key) as widget_b,
            LiveFeed.open(http, b.ws_url, owner.access_token, shop.project_id, probe) as feed_b,
        ):
            await as_staff(
                on_a, staff, SUSPEND_ORGANIZATION, {"id": owner.organization_id, "reason": "abuse"}
            )
            assert await closed(widget_b) == (4403, ORGANIZATION_SUSPENDED)
            assert await closed(feed_b.ws) == (4403, ORGANIZATION_SUSPENDED)
            assert await closed(widget_a) == (4403, ORGANIZATION_SUSPENDED)
        for instance, client in ((a, on_a), (b, on_b)):
            assert await widget_refused(http, instance, shop.project_key) == (
                4403,
                ORGANIZATION_SUSPENDED,
            )
            assert (await send_message(client, shop.project_key)).codes == ["FORBIDDEN"]
        await as_staff(on_a, staff, RESTORE_ORGANIZATION, {"id": owner.organization_id})
        assert (await widget_chat(http, b, shop.project_key, "back"))[-1]["__typename"] == (
            "ChatCompleted"
        )

        # Suspend the user from the command line: the feed on B closes; A refuses the user.
        async with LiveFeed.open(
            http, b.ws_url, owner.access_token, shop.project_id, probe
        ) as feed_b:
            await kindrobots(a, tmp_path, "user", "suspend", owner.email, "--reason", "stolen")
            assert await closed(feed_b.ws) == (4403, ACCOUNT_SUSPENDED)
        for client in (on_a, on_b):
            refused = await client.execute(ME, token=owner.access_token)
            assert (refused.codes, refused.errors[0]["message"]) == (
                ["FORBIDDEN"],
                ACCOUNT_SUSPENDED,
            )
        assert await kindrobots(a, tmp_path, "user", "restore", owner.email) == (
            f"{owner.email}: restored"
        )
        assert (await on_b.execute(ME, token=owner.access_token)).data["me"] is not None

        # Revoke the user's sessions: the token stops on both, open sockets close with 4401.
        async with (
            LiveFeed.open(http, a.ws_url, owner.access_token, shop.project_id, probe) as feed_a,
            LiveFeed.open(http, b.ws_url, owner.access_token, shop.project_id, probe) as feed_b,
        ):
            assert await kindrobots(a, tmp_path, "user", "revoke-sessions", owner.email) == (
                f"{owner.email}: 1 sessions revoked"
            )
            assert await closed(feed_a.ws) == SESSION_ENDED
            assert await closed(feed_b.ws) == SESSION_ENDED
        for client in (on_a, on_b):
            assert (await client.execute(ME, token=owner.access_token)).data["me"] is None

        # Rotate every project key: widgets holding the old one close on both.
        async with (
            widget_socket(http, a, shop.project_key) as widget_a,
            widget_socket(http, b, shop.project_key) as widget_b,
        ):
            rotated = await kindrobots(a, tmp_path, "org", "rotate-keys", owner.organization_id)
            assert rotated.endswith(": 1 project keys rotated")
            reason = "This project key is no longer valid."
            assert await closed(widget_a) == (4403, reason)
            assert await closed(widget_b) == (4403, reason)
        assert (await widget_refused(http, b, shop.project_key))[0] == 4403

        verified = await kindrobots(a, tmp_path, "audit", "verify")
        assert verified.endswith("intact"), verified


async def test_a_rotated_signing_key_signs_on_every_instance(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with two(http, tmp_path) as (a, b, _):
        on_a, on_b = Client(http, a.base_url), Client(http, b.base_url)
        before = await sign_up(on_a)
        old_kid = jwt.get_unverified_header(before.access_token)["kid"]

        output = await kindrobots(b, tmp_path, "keys", "rotate-signing")
        new_kid = output.split()[2].rstrip(";")
        assert new_kid != old_kid

        for instance in (a, b):
            async with http.get(f"{instance.base_url}/.well-known/jwks.json") as response:
                listed = {key["kid"] for key in (await response.json())["keys"]}
            assert listed == {old_kid, new_kid}, instance.name
        # New tokens on either instance carry the new key and work on the other.
        for signing, verifying in ((on_a, on_b), (on_b, on_a)):
            signed = await signing.execute(
                SIGN_IN, {"input": {"email": before.email, "password": before.password}}
            )
            token = signed.data["signIn"]["accessToken"]
            assert jwt.get_unverified_header(token)["kid"] == new_kid
            assert (await verifying.execute(ME, token=token)).data["me"] is not None
        # Tokens the old key signed still work until they expire.
        for client in (on_a, on_b):
            assert (await client.execute(ME, token=before.access_token)).data["me"] is not None
