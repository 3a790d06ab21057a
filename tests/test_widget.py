"""``GET /widget.js`` and the development demo page, without a browser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from kindrobots.config import format_keys, generate_audit_key, generate_key, load_settings
from kindrobots.server import SERVICES, create_app
from kindrobots.widget import WidgetScript
from tests.conftest import make_settings

AppClient = TestClient[web.Request, web.Application]


@pytest_asyncio.fixture
async def app_client(tmp_path: Path) -> AsyncIterator[AppClient]:
    """The development app; neither route touches the database, so none is migrated."""
    app = create_app(make_settings(tmp_path, "sqlite"))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_widget_js_is_served_as_cacheable_javascript(app_client: AppClient) -> None:
    response = await app_client.get("/widget.js")
    assert response.status == 200
    assert response.content_type == "application/javascript"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    body = await response.read()
    assert body == WidgetScript.load().body
    assert b"graphql-transport-ws" in body and b"innerHTML" not in body

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = await app_client.get("/widget.js", headers={"If-None-Match": header})
        assert cached.status == 304, header
        assert cached.headers["ETag"] == etag
        assert await cached.read() == b""
    stale = await app_client.get("/widget.js", headers={"If-None-Match": '"stale"'})
    assert stale.status == 200
    head = await app_client.head("/widget.js")
    assert head.status == 200 and head.headers["ETag"] == etag


async def test_demo_page_embeds_the_widget_with_the_key(app_client: AppClient) -> None:
    response = await app_client.get("/widget/demo", params={"key": "pk_Demo-key_1"})
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert '<script src="/widget.js" data-project-key="pk_Demo-key_1"' in page
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


async def test_demo_page_refuses_keys_that_are_not_keys(app_client: AppClient) -> None:
    for key in ('pk_"><script>alert(1)</script>', "sk_secret", "pk_", "pk_" + "a" * 65, ""):
        response = await app_client.get("/widget/demo", params={"key": key})
        assert response.status == 400, key
        page = await response.text()
        assert "data-project-key" not in page
        assert "alert(1)" not in page


async def test_demo_page_does_not_exist_in_production(tmp_path: Path) -> None:
    settings = load_settings(
        env="production",
        metrics_port=9100,
        data_dir=tmp_path,
        database_url="postgresql+asyncpg://kr@127.0.0.1:1/kr",
        public_url="https://api.example.com",
        signing_keys=format_keys((generate_key("sig"),)),
        encryption_keys=format_keys((generate_key("enc"),)),
        audit_key=generate_audit_key(),
        log_format="text",
    )
    app = create_app(settings)
    try:
        # Routing alone decides: nothing starts, nothing connects to the (absent) database.
        demo = await app.router.resolve(make_mocked_request("GET", "/widget/demo?key=pk_abc"))
        assert demo.http_exception is not None and demo.http_exception.status == 404
        script = await app.router.resolve(make_mocked_request("GET", "/widget.js"))
        assert script.http_exception is None
    finally:
        await app[SERVICES].engine.dispose()
