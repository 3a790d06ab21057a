"""Sessions as a user meets them: sign-up, sign-in, cookies, refresh rotation, sign-out, tokens."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, update

from kindrobots.auth import passwords
from kindrobots.auth.tokens import TokenSigner
from kindrobots.config import generate_key
from kindrobots.db.models import AuthSession, User
from kindrobots.ids import from_global_id
from kindrobots.resolvers import organizations
from tests.conftest import (
    MY_ORGANIZATIONS,
    PASSWORD,
    Account,
    Client,
    Response,
    RunningServer,
    make_settings,
    sign_up,
    start_server,
    unique_email,
)

ME = "{ me { user { id email } } }"
ORGANIZATION = "query Org($id: ID!) { organization(id: $id) { id name } }"
SIGN_IN = """
mutation SignIn($input: SignInInput!) {
  signIn(input: $input) { accessToken refreshToken expiresAt user { id email } }
}
"""
REFRESH = """
mutation Refresh($token: String) {
  refreshSession(refreshToken: $token) { accessToken refreshToken user { email } }
}
"""
SIGN_OUT = "mutation { signOut }"
SIGN_OUT_EVERYWHERE = "mutation { signOutEverywhere }"


async def sign_in(client: Client, email: str, password: str = PASSWORD) -> Response:
    return await client.execute(SIGN_IN, {"input": {"email": email, "password": password}})


async def sign_in_ok(client: Client, email: str) -> tuple[str, str]:
    """A fresh session (a new refresh-token family): its access and refresh tokens."""
    response = await sign_in(client, email)
    assert response.errors == [], response.errors
    payload = response.data["signIn"]
    return payload["accessToken"], payload["refreshToken"]


async def refresh(client: Client, token: str) -> Response:
    return await client.execute(REFRESH, {"token": token})


async def assert_signed_in(client: Client, access_token: str, account: Account) -> None:
    me = await client.execute(ME, token=access_token)
    assert me.errors == []
    assert me.data["me"]["user"]["email"] == account.email
    organization = await client.execute(
        ORGANIZATION, {"id": account.organization_id}, token=access_token
    )
    assert organization.errors == []
    assert organization.data["organization"]["id"] == account.organization_id


async def assert_signed_out(client: Client, access_token: str, account: Account) -> None:
    """``me`` is null and a protected field says UNAUTHENTICATED, exactly as with no token."""
    me = await client.execute(ME, token=access_token)
    assert me.errors == []
    assert me.data == {"me": None}
    organization = await client.execute(
        ORGANIZATION, {"id": account.organization_id}, token=access_token
    )
    assert organization.codes == ["UNAUTHENTICATED"]
    assert organization.data == {"organization": None}


def assert_refused(response: Response) -> None:
    assert response.codes == ["UNAUTHENTICATED"], response.body
    assert response.data is None


async def count_users(server: RunningServer, email: str) -> int:
    async with server.services.read() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(User).where(User.email == email.lower())
            )
            or 0
        )


# --- sign-up and `me` -------------------------------------------------------------------


async def test_sign_up_makes_the_user_owner_of_a_new_organization(client: Client) -> None:
    account = await sign_up(client, organization="Owner Test Co")
    me = await client.execute(MY_ORGANIZATIONS, token=account.access_token)
    assert me.errors == []
    (membership,) = me.data["me"]["memberships"]
    assert membership["role"] == "OWNER"
    assert membership["organization"]["name"] == "Owner Test Co"
    assert membership["organization"]["tier"] == "STARTER"


async def test_me_works_with_bearer_token_and_with_access_cookie(client: Client) -> None:
    account = await sign_up(client)
    by_bearer = await client.execute(ME, token=account.access_token)
    assert by_bearer.data["me"]["user"] == {"id": account.user_id, "email": account.email}
    by_cookie = await client.execute(ME, cookies={"kr_access": account.cookies["kr_access"]})
    assert by_cookie.errors == []
    assert by_cookie.data["me"]["user"] == {"id": account.user_id, "email": account.email}
    # The cookie carries the same session as the token in the payload.
    assert account.cookies["kr_access"] == account.access_token


async def test_me_is_null_without_credentials(client: Client) -> None:
    response = await client.execute(ME)
    assert response.errors == []
    assert response.data == {"me": None}


# --- cookie attributes ------------------------------------------------------------------


def cookie_flags(response: Response, name: str) -> dict[str, Any]:
    morsel = response.cookie_attributes[name][name]
    return {
        "httponly": bool(morsel["httponly"]),
        "samesite": morsel["samesite"],
        "secure": bool(morsel["secure"]),
    }


async def test_local_http_server_sets_session_cookies_without_secure(client: Client) -> None:
    response = await client.execute(
        """mutation($input: SignUpInput!) { signUp(input: $input) { accessToken } }""",
        {
            "input": {
                "email": unique_email("cookie"),
                "password": PASSWORD,
                "displayName": "Cookie",
                "organizationName": "Cookie Co",
            }
        },
    )
    assert response.errors == []
    assert cookie_flags(response, "kr_access") == {
        "httponly": True,
        "samesite": "Lax",
        "secure": False,
    }
    assert cookie_flags(response, "kr_refresh") == {
        "httponly": True,
        "samesite": "Strict",
        "secure": False,
    }


async def test_https_public_url_makes_both_session_cookies_secure(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    runner, running = await start_server(
        make_settings(tmp_path, "sqlite", public_url="https://api.example.com")
    )
    try:
        client = Client(http, running.base_url)
        email = unique_email("secure")
        await sign_up(client, email)
        response = await sign_in(client, email)
        assert response.errors == []
        assert cookie_flags(response, "kr_access") == {
            "httponly": True,
            "samesite": "Lax",
            "secure": True,
        }
        assert cookie_flags(response, "kr_refresh") == {
            "httponly": True,
            "samesite": "Strict",
            "secure": True,
        }
        rotated = await refresh(client, response.data["signIn"]["refreshToken"])
        assert rotated.errors == []
        assert cookie_flags(rotated, "kr_access")["secure"] is True
        assert cookie_flags(rotated, "kr_refresh")["secure"] is True
    finally:
        await runner.cleanup()


# --- refresh rotation and reuse ---------------------------------------------------------


async def test_refresh_rotates_and_each_refresh_token_works_once(client: Client) -> None:
    account = await sign_up(client)
    first = await refresh(client, account.refresh_token)
    assert first.errors == []
    rotated = first.data["refreshSession"]
    assert rotated["refreshToken"] != account.refresh_token
    assert rotated["accessToken"] != account.access_token
    assert rotated["user"]["email"] == account.email
    await assert_signed_in(client, rotated["accessToken"], account)
    # The rotated token works, once.
    second = await refresh(client, rotated["refreshToken"])
    assert second.errors == []
    assert second.data["refreshSession"]["refreshToken"] not in (
        rotated["refreshToken"],
        account.refresh_token,
    )


async def test_replayed_refresh_token_revokes_its_whole_family(client: Client) -> None:
    account = await sign_up(client)
    other_access, other_refresh = await sign_in_ok(client, account.email)  # a second family

    rotated = (await refresh(client, account.refresh_token)).data["refreshSession"]
    replay = await refresh(client, account.refresh_token)
    assert_refused(replay)
    # The replay also tells a browser to drop its session cookies.
    assert replay.cookies.get("kr_access") == ""
    assert replay.cookies.get("kr_refresh") == ""

    # The newest token of the family is dead too, and so is every access token of it.
    assert_refused(await refresh(client, rotated["refreshToken"]))
    await assert_signed_out(client, rotated["accessToken"], account)
    await assert_signed_out(client, account.access_token, account)

    # The other sign-in of the same user is a different family and lives on.
    await assert_signed_in(client, other_access, account)
    assert (await refresh(client, other_refresh)).errors == []


async def test_unknown_refresh_token_is_refused(client: Client) -> None:
    assert_refused(await refresh(client, "not-a-refresh-token"))
    assert_refused(await client.execute(REFRESH))  # neither argument nor cookie


async def test_refresh_with_the_refresh_cookie(client: Client) -> None:
    account = await sign_up(client)
    response = await client.execute(
        "mutation { refreshSession { accessToken refreshToken } }",
        cookies={"kr_refresh": account.cookies["kr_refresh"]},
    )
    assert response.errors == []
    payload = response.data["refreshSession"]
    assert payload["refreshToken"] != account.refresh_token
    # The new pair arrives as cookies as well.
    assert response.cookies["kr_refresh"] == payload["refreshToken"]
    assert response.cookies["kr_access"] == payload["accessToken"]
    await assert_signed_in(client, payload["accessToken"], account)
    # The spent cookie does not work a second time.
    assert_refused(
        await client.execute(
            "mutation { refreshSession { accessToken } }",
            cookies={"kr_refresh": account.cookies["kr_refresh"]},
        )
    )


# --- sign-out -----------------------------------------------------------------------------


async def test_sign_out_everywhere_ends_every_session_at_once(client: Client) -> None:
    account = await sign_up(client)
    access_a, refresh_a = await sign_in_ok(client, account.email)
    access_b, refresh_b = await sign_in_ok(client, account.email)
    await assert_signed_in(client, access_b, account)

    response = await client.execute(SIGN_OUT_EVERYWHERE, token=access_a)
    assert response.errors == []
    assert response.data == {"signOutEverywhere": True}

    for access in (account.access_token, access_a, access_b):
        await assert_signed_out(client, access, account)
        # The same token as the kr_access cookie is refused too.
        by_cookie = await client.execute("{ me { user { id } } }", cookies={"kr_access": access})
        assert by_cookie.data == {"me": None}
    for token in (account.refresh_token, refresh_a, refresh_b):
        assert_refused(await refresh(client, token))
        by_cookie = await client.execute(
            "mutation { refreshSession { accessToken } }", cookies={"kr_refresh": token}
        )
        assert by_cookie.codes == ["UNAUTHENTICATED"]
    # Signing in again still works.
    fresh, _ = await sign_in_ok(client, account.email)
    await assert_signed_in(client, fresh, account)


async def test_sign_out_everywhere_needs_a_session(client: Client) -> None:
    response = await client.execute(SIGN_OUT_EVERYWHERE)
    assert response.codes == ["UNAUTHENTICATED"]


async def test_sign_out_ends_only_the_current_session(client: Client) -> None:
    account = await sign_up(client)
    access_a, refresh_a = await sign_in_ok(client, account.email)
    access_b, refresh_b = await sign_in_ok(client, account.email)

    response = await client.execute(SIGN_OUT, token=access_a)
    assert response.data == {"signOut": True}
    assert response.cookies.get("kr_access") == ""
    assert response.cookies.get("kr_refresh") == ""

    await assert_signed_out(client, access_a, account)
    assert_refused(await refresh(client, refresh_a))
    await assert_signed_in(client, access_b, account)
    await assert_signed_in(client, account.access_token, account)
    assert (await refresh(client, refresh_b)).errors == []


async def test_sign_out_with_only_the_refresh_cookie(client: Client) -> None:
    account = await sign_up(client)
    response = await client.execute(SIGN_OUT, cookies={"kr_refresh": account.refresh_token})
    assert response.data == {"signOut": True}
    assert_refused(await refresh(client, account.refresh_token))
    await assert_signed_out(client, account.access_token, account)


# --- sign-in ------------------------------------------------------------------------------


async def test_unknown_email_and_wrong_password_are_indistinguishable(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await sign_up(client)
    verified: list[str] = []
    original = passwords._verify

    def counting_verify(stored_hash: str, password: str) -> bool:
        verified.append(stored_hash)
        return original(stored_hash, password)

    monkeypatch.setattr(passwords, "_verify", counting_verify)

    wrong_password = await sign_in(client, account.email, "not the password")
    assert len(verified) == 1
    unknown_email = await sign_in(client, unique_email("nobody"), "not the password")
    # An unknown email still costs one full Argon2id verification.
    assert len(verified) == 2
    assert verified[1].startswith("$argon2id$")

    assert wrong_password.status == unknown_email.status
    assert wrong_password.codes == ["UNAUTHENTICATED"]
    assert wrong_password.body == unknown_email.body
    assert wrong_password.cookies == unknown_email.cookies == {}
    # Nothing about the account leaks into the message.
    assert account.email not in str(wrong_password.body)


async def test_sign_in_is_case_insensitive_on_email(client: Client) -> None:
    account = await sign_up(client)
    response = await sign_in(client, f"  {account.email.upper()} ")
    assert response.errors == []
    assert response.data["signIn"]["user"]["email"] == account.email


async def test_bcrypt_hash_signs_in_and_is_upgraded_to_argon2id(
    client: Client, server: RunningServer
) -> None:
    account = await sign_up(client)
    # GoTrue (Supabase) exports Go's "$2a$" bcrypt hashes.
    legacy = bcrypt.hashpw(b"imported password", bcrypt.gensalt(rounds=4)).decode()
    legacy = "$2a$" + legacy.removeprefix("$2b$")
    user_id = from_global_id(account.user_id, "User")
    async with server.services.write() as session:
        await session.execute(update(User).where(User.id == user_id).values(password_hash=legacy))

    assert_refused(await sign_in(client, account.email, PASSWORD))  # the old password is gone
    response = await sign_in(client, account.email, "imported password")
    assert response.errors == []
    assert response.data["signIn"]["user"]["email"] == account.email

    async with server.services.read() as session:
        stored = await session.scalar(select(User.password_hash).where(User.id == user_id))
    assert stored is not None
    assert stored.startswith("$argon2id$")
    assert passwords._verify(stored, "imported password")
    # And the upgraded hash keeps working.
    assert (await sign_in(client, account.email, "imported password")).errors == []


# --- sign-up validation -------------------------------------------------------------------


def sign_up_input(email: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "input": {
            "email": email,
            "password": password,
            "displayName": "Validation",
            "organizationName": "Validation Co",
        }
    }


SIGN_UP_TOKEN = "mutation($input: SignUpInput!) { signUp(input: $input) { accessToken } }"


@pytest.mark.parametrize(
    ("email", "password", "field"),
    [
        ("not-an-email", PASSWORD, "email"),
        ("two@@example.com", PASSWORD, "email"),
        ("spaces in@example.com", PASSWORD, "email"),
        (None, "short", "password"),
        (None, "", "password"),
    ],
)
async def test_sign_up_rejects_bad_input_and_writes_nothing(
    client: Client, server: RunningServer, email: str | None, password: str, field: str
) -> None:
    email = email or unique_email("invalid")
    response = await client.execute(SIGN_UP_TOKEN, sign_up_input(email, password))
    assert response.codes == ["BAD_USER_INPUT"]
    assert response.errors[0]["extensions"]["field"] == field
    assert response.data is None
    assert response.cookies == {}
    assert await count_users(server, email) == 0


async def test_sign_up_with_a_taken_email_is_a_conflict(
    client: Client, server: RunningServer
) -> None:
    account = await sign_up(client)
    for email in (account.email, account.email.upper()):
        response = await client.execute(SIGN_UP_TOKEN, sign_up_input(email, "another password"))
        assert response.codes == ["CONFLICT"]
        assert response.data is None
        assert response.cookies == {}
    assert await count_users(server, account.email) == 1
    # The original password still signs in; the rejected sign-up changed nothing.
    assert (await sign_in(client, account.email)).errors == []
    assert_refused(await sign_in(client, account.email, "another password"))


async def test_sign_up_never_blames_a_free_email_for_another_constraint(
    client: Client, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clash elsewhere (here: two organizations drawing the same slug) is not "email taken"."""
    slug = f"same-slug-{uuid.uuid4().hex}"
    monkeypatch.setattr(organizations, "_slug", lambda name: slug)
    assert (await client.execute(SIGN_UP_TOKEN, sign_up_input(unique_email("slug")))).errors == []
    second = unique_email("slug")
    response = await client.execute(SIGN_UP_TOKEN, sign_up_input(second))
    assert response.codes != ["CONFLICT"]
    assert "email" not in response.errors[0]["message"].lower()
    assert await count_users(server, second) == 0  # nothing half-written
    monkeypatch.undo()
    # The email really is free: the same sign-up succeeds once slugs differ again.
    assert (await client.execute(SIGN_UP_TOKEN, sign_up_input(second))).errors == []


# --- access tokens ------------------------------------------------------------------------


async def test_access_token_verifies_against_the_published_jwks(
    client: Client, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    account = await sign_up(client)
    header = jwt.get_unverified_header(account.access_token)
    assert header["alg"] == "EdDSA"
    kid = header["kid"]
    async with http.get(f"{server.base_url}/.well-known/jwks.json") as response:
        assert response.status == 200
        keys = (await response.json())["keys"]
    (published,) = [key for key in keys if key["kid"] == kid]
    assert "d" not in published  # public keys only
    claims = jwt.decode(
        account.access_token,
        jwt.PyJWK(published).key,
        algorithms=["EdDSA"],
        audience="kindrobots",
        issuer=server.settings.public_url,
    )
    assert claims["sub"] == str(from_global_id(account.user_id, "User"))
    assert "sid" in claims


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def test_expired_access_token_is_treated_as_signed_out(
    client: Client, server: RunningServer
) -> None:
    account = await sign_up(client)
    claims = claims_of(account.access_token)
    # Signed by the server's own key, for a live session, but its time is up.
    signer = TokenSigner(
        server.settings.signing_keys,
        issuer=server.settings.public_url,
        ttl=timedelta(minutes=10),
    )
    expired, _ = signer.issue(
        uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]), datetime.now(UTC) - timedelta(hours=1)
    )
    fresh, _ = signer.issue(uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]), datetime.now(UTC))
    await assert_signed_in(client, fresh, account)  # the forging recipe itself is sound
    await assert_signed_out(client, expired, account)


def forged_tokens(kid: str, claims: dict[str, Any]) -> dict[str, str]:
    """Tokens with genuine claims that the server's key set never signed."""
    stranger = Ed25519PrivateKey.from_private_bytes(generate_key("x").material)
    return {
        "same kid, foreign key": jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"kid": kid}
        ),
        "unknown kid": jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"kid": "sig-stranger"}
        ),
        "no kid": jwt.encode(claims, stranger, algorithm="EdDSA"),
        "alg none": jwt.encode(claims, "", algorithm="none", headers={"kid": kid}),
    }


async def test_token_signed_by_a_key_outside_the_key_set_is_treated_as_signed_out(
    client: Client, server: RunningServer
) -> None:
    account = await sign_up(client)
    kid = jwt.get_unverified_header(account.access_token)["kid"]
    for name, token in forged_tokens(kid, claims_of(account.access_token)).items():
        me = await client.execute(ME, token=token)
        assert me.data == {"me": None}, name
        organization = await client.execute(
            ORGANIZATION, {"id": account.organization_id}, token=token
        )
        assert organization.codes == ["UNAUTHENTICATED"], name
    # The genuine token of the same session is still fine.
    await assert_signed_in(client, account.access_token, account)


async def test_session_rows_record_revocation(client: Client, server: RunningServer) -> None:
    """signOut stores why the session ended (what an operator sees when investigating)."""
    account = await sign_up(client)
    session_id = uuid.UUID(claims_of(account.access_token)["sid"])
    await client.execute(SIGN_OUT, token=account.access_token)
    async with server.services.read() as session:
        row = await session.get(AuthSession, session_id)
    assert row is not None
    assert row.revoked_at is not None
    assert row.revoked_reason == "sign_out"
