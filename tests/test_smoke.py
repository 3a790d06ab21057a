from tests.conftest import Client, sign_up


async def test_sign_up_then_me(client: Client) -> None:
    account = await sign_up(client)
    me = await client.execute("{ me { user { email } } }", token=account.access_token)
    assert me.data == {"me": {"user": {"email": account.email}}}
