"""Transport: HTTPS redirect behind a trusted proxy, security headers, direct TLS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import os
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from kindrobots import server as server_module
from kindrobots.config import (
    ConfigError,
    Settings,
    format_keys,
    generate_audit_key,
    generate_key,
    load_settings,
)
from kindrobots.security.transport import HSTS, server_ssl_context, ssl_context_for
from kindrobots.server import create_app
from tests.conftest import make_settings

AppClient = TestClient[web.Request, web.Application]
PUBLIC = "https://api.example.com"


def production_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Production, as behind a proxy on this machine; no route used here needs the database."""
    values: dict[str, Any] = {
        "env": "production",
        "metrics_token": "metrics-token-for-tests",
        "data_dir": tmp_path,
        "database_url": "postgresql+asyncpg://kr@127.0.0.1:1/kr",
        "public_url": PUBLIC,
        "signing_keys": format_keys((generate_key("sig"),)),
        "encryption_keys": format_keys((generate_key("enc"),)),
        "audit_key": generate_audit_key(),
        "log_format": "text",
        "trusted_proxies": "127.0.0.1,::1",
    }
    values.update(overrides)
    return load_settings(**values)


@pytest_asyncio.fixture
async def production(tmp_path: Path) -> AsyncIterator[AppClient]:
    async with TestClient(TestServer(create_app(production_settings(tmp_path)))) as client:
        yield client


@pytest_asyncio.fixture
async def development(tmp_path: Path) -> AsyncIterator[AppClient]:
    app = create_app(make_settings(tmp_path, "sqlite", trusted_proxies="127.0.0.1,::1"))
    async with TestClient(TestServer(app)) as client:
        yield client


HTTP = {"X-Forwarded-Proto": "http"}
HTTPS = {"X-Forwarded-Proto": "https"}


# --- HTTPS redirect ----------------------------------------------------------------------


async def test_plain_http_through_the_proxy_is_redirected_with_308(
    production: AppClient,
) -> None:
    cases = [
        ("GET", "/graphql?query=%7B__typename%7D", f"{PUBLIC}/graphql?query=%7B__typename%7D"),
        ("POST", "/graphql", f"{PUBLIC}/graphql"),
        ("GET", "/widget.js", f"{PUBLIC}/widget.js"),
        ("POST", "/webhooks/stripe", f"{PUBLIC}/webhooks/stripe"),
        ("GET", "/no/such/page?a=1&b=%26", f"{PUBLIC}/no/such/page?a=1&b=%26"),
    ]
    for method, path, location in cases:
        response = await production.request(
            method, path, headers=HTTP, data=b'{"query": "{ __typename }"}', allow_redirects=False
        )
        # 308, not 301/302: the client repeats the same method with the same body.
        assert response.status == 308, (method, path)
        assert response.headers["Location"] == location
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Strict-Transport-Security" not in response.headers  # never over plain HTTP


async def test_the_redirect_never_takes_its_host_from_the_request(
    production: AppClient,
) -> None:
    for headers in (
        {"Host": "evil.example.net"},
        {"X-Forwarded-Host": "evil.example.net"},
        {"Forwarded": "host=evil.example.net;proto=http"},
    ):
        response = await production.get(
            "/graphql", headers={**HTTP, **headers}, allow_redirects=False
        )
        assert response.status == 308
        assert response.headers["Location"] == f"{PUBLIC}/graphql"
    # A path that looks like a network-path reference stays a path on our host.
    url = URL(f"http://127.0.0.1:{production.port}//evil.example.net/x", encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=HTTP, allow_redirects=False) as response,
    ):
        assert response.status == 308
        assert response.headers["Location"] == f"{PUBLIC}//evil.example.net/x"


async def test_health_checks_are_not_redirected(production: AppClient) -> None:
    healthz = await production.get("/healthz", headers=HTTP, allow_redirects=False)
    assert healthz.status == 200
    readyz = await production.get("/readyz", headers=HTTP, allow_redirects=False)
    assert readyz.status == 503  # no database here; the point is: not 308


async def test_https_through_the_proxy_is_served_with_hsts(production: AppClient) -> None:
    for proto in ("https", "HTTPS", "http, https"):
        response = await production.get(
            "/healthz", headers={"X-Forwarded-Proto": proto}, allow_redirects=False
        )
        assert response.status == 200, proto
        assert response.headers["Strict-Transport-Security"] == HSTS
        assert HSTS == "max-age=63072000; includeSubDomains"


async def test_a_client_cannot_claim_https_in_front_of_the_proxy(production: AppClient) -> None:
    """Proxies append: the entry our proxy wrote is the last one, the client's come first."""
    response = await production.get(
        "/graphql?query={plans{tier}}",
        headers={"X-Forwarded-Proto": "https, http"},
        allow_redirects=False,
    )
    assert response.status == 308
    assert "Strict-Transport-Security" not in response.headers


async def test_an_untrusted_peer_is_neither_redirected_nor_believed(tmp_path: Path) -> None:
    settings = production_settings(tmp_path, trusted_proxies="10.0.0.0/8")
    async with TestClient(TestServer(create_app(settings))) as client:
        for headers in (HTTP, HTTPS):
            response = await client.get("/healthz", headers=headers, allow_redirects=False)
            assert response.status == 200
            assert "Strict-Transport-Security" not in response.headers


async def test_development_is_never_redirected_and_has_no_hsts(development: AppClient) -> None:
    for headers in (HTTP, HTTPS):
        response = await development.get("/healthz", headers=headers, allow_redirects=False)
        assert response.status == 200
        assert "Strict-Transport-Security" not in response.headers


# --- headers -------------------------------------------------------------------------------


async def test_every_response_has_the_basic_security_headers(development: AppClient) -> None:
    responses = [
        await development.get("/healthz"),
        await development.get("/no/such/page"),
        await development.get("/.well-known/jwks.json"),
        await development.get("/widget.js"),
        await development.post("/graphql", data="{not json", headers={"Content-Type": "x/y"}),
        await development.request("DELETE", "/graphql"),
    ]
    for response in responses:
        label = (response.method, response.url.path, response.status)
        assert response.headers["X-Content-Type-Options"] == "nosniff", label
        assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin", label
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'"), label
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"], label


async def test_the_widget_routes_keep_their_own_headers(development: AppClient) -> None:
    script = await development.get("/widget.js")
    assert script.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    demo = await development.get("/widget/demo", params={"key": "pk_demo"})
    assert demo.status == 200
    csp = demo.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert demo.headers["Referrer-Policy"] == "no-referrer"
    assert demo.headers["X-Content-Type-Options"] == "nosniff"


async def test_graphiql_gets_a_policy_that_lets_it_run(development: AppClient) -> None:
    response = await development.get("/graphql", headers={"Accept": "text/html"})
    assert response.status == 200 and response.content_type == "text/html"
    page = await response.read()
    csp = dict(
        (part.split()[0], part.split()[1:])
        for part in response.headers["Content-Security-Policy"].split(";")
    )
    assert csp["default-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]  # the GraphQL endpoint and its WebSocket only
    # Every external script and stylesheet comes from the CDN the policy names.
    sources = re.findall(rb'(?:src|href)="(https://[^"]+)"', page)
    assert sources
    assert all(source.startswith(b"https://unpkg.com/") for source in sources)
    assert "https://unpkg.com" in csp["script-src"]
    assert "https://unpkg.com" in csp["style-src"]
    # The inline script runs by its hash, and nothing else inline does.
    assert "'unsafe-inline'" not in csp["script-src"]
    assert "'unsafe-eval'" not in csp["script-src"]
    inline = re.findall(rb"<script>(.*?)</script>", page, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0]).digest()).decode()
    assert f"'sha256-{digest}'" in csp["script-src"]


async def test_graphiql_is_absent_in_production(production: AppClient) -> None:
    response = await production.get("/graphql", headers={**HTTPS, "Accept": "text/html"})
    assert response.content_type != "text/html"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


# --- direct TLS ----------------------------------------------------------------------------


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return write_self_signed(tmp_path)


def client_context(cert: Path, *, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    # Let the client offer old versions at all (OpenSSL's default level forbids them),
    # so a refusal is the server's doing.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = maximum
    return context


async def handshake(port: int, context: ssl.SSLContext) -> str:
    """The protocol version a TLS handshake with 127.0.0.1:port settles on."""
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        return str(writer.get_extra_info("ssl_object").version())
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


@dataclass
class TlsSite:
    url: str
    port: int
    cert: Path


@pytest_asyncio.fixture
async def tls_site(tmp_path: Path, certificate: tuple[Path, Path]) -> AsyncIterator[TlsSite]:
    """The production app on the context ``run()`` passes to ``web.run_app``."""
    cert, key = certificate
    settings = production_settings(tmp_path, tls_cert=str(cert), tls_key=str(key))
    context = ssl_context_for(settings)
    assert context is not None
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield TlsSite(f"https://127.0.0.1:{port}", port, cert)
    finally:
        await runner.cleanup()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_direct_tls_accepts_tls_1_2_and_sets_hsts(tls_site: TlsSite) -> None:
    for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = client_context(tls_site.cert, maximum=maximum)
        assert await handshake(tls_site.port, context) == maximum.name.replace("_", ".")
        connector = aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"{tls_site.url}/healthz", server_hostname="localhost") as response,
        ):
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
            # Direct TLS is HTTPS without any proxy's word for it.
            assert response.headers["Strict-Transport-Security"] == HSTS


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_direct_tls_refuses_tls_1_1(
    tls_site: TlsSite, certificate: tuple[Path, Path]
) -> None:
    for maximum in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        context = client_context(tls_site.cert, maximum=maximum)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(tls_site.port, context)
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(aiohttp.ClientConnectorError):
                async with session.get(f"{tls_site.url}/healthz", server_hostname="localhost"):
                    pass

    # The control: the same client does speak TLS 1.1 to a server that allows it.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.load_cert_chain(*certificate)

    async def close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    old = await asyncio.start_server(close, "127.0.0.1", 0, ssl=permissive)
    try:
        port = old.sockets[0].getsockname()[1]
        context = client_context(tls_site.cert, maximum=ssl.TLSVersion.TLSv1_1)
        assert await handshake(port, context) == "TLSv1.1"
    finally:
        old.close()
        await old.wait_closed()


def test_the_context_demands_tls_1_2(certificate: tuple[Path, Path]) -> None:
    context = server_ssl_context(*certificate)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER


def test_tls_settings_come_in_pairs_of_existing_files(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    settings = make_settings(tmp_path, "sqlite", tls_cert=str(cert), tls_key=str(key))
    assert settings.tls_cert == cert and settings.tls_key == key
    assert make_settings(tmp_path, "sqlite", tls_cert="", tls_key="").tls_cert is None
    for overrides in (
        {"tls_cert": str(cert)},
        {"tls_key": str(key)},
    ):
        with pytest.raises(ConfigError, match="KR_TLS_CERT and KR_TLS_KEY"):
            make_settings(tmp_path, "sqlite", **overrides)
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match="KR_TLS_KEY: must name an existing file") as error:
        make_settings(tmp_path, "sqlite", tls_cert=str(cert), tls_key=str(missing))
    assert str(missing) not in str(error.value)
    with pytest.raises(ConfigError, match="KR_TLS_CERT: must name an existing file"):
        make_settings(tmp_path, "sqlite", tls_cert=str(tmp_path), tls_key=str(key))


def test_an_unloadable_certificate_is_a_configuration_error(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, _ = certificate
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    settings = make_settings(tmp_path, "sqlite", tls_cert=str(cert), tls_key=str(garbage))
    with pytest.raises(ConfigError, match="KR_TLS_CERT/KR_TLS_KEY") as error:
        ssl_context_for(settings)
    assert "not a key" not in str(error.value)
    assert ssl_context_for(make_settings(tmp_path, "sqlite")) is None


def test_run_serves_tls_when_configured(
    tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run_app(app: web.Application, **kwargs: Any) -> None:
        calls.append(kwargs)

    monkeypatch.setattr(web, "run_app", fake_run_app)
    cert, key = certificate
    server_module.run(make_settings(tmp_path, "sqlite", tls_cert=str(cert), tls_key=str(key)))
    server_module.run(make_settings(tmp_path, "sqlite"))
    with_tls, without = calls
    context = with_tls["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert without["ssl_context"] is None


async def test_graphiql_runs_under_its_policy_in_a_browser(tmp_path: Path) -> None:
    """No violation in Chromium: the CDN files get as far as the network (aborted here, the
    test runs offline) and the inline script runs (it then fails for want of them)."""
    chromium = await asyncio.to_thread(Path("/usr/bin/chromium").exists)
    if not chromium:
        if os.environ.get("CI") == "true":
            pytest.fail("/usr/bin/chromium is missing; CI must install Debian's chromium package")
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    from playwright.async_api import Route, async_playwright

    runner = web.AppRunner(create_app(make_settings(tmp_path, "sqlite")))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    violations: list[str] = []
    requested: list[str] = []
    errors: list[str] = []

    async def cdn(route: Route) -> None:
        requested.append(route.request.url)
        await route.abort()

    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = await browser.new_page()

                def report(violation: str) -> None:
                    violations.append(violation)

                await page.expose_function("reportViolation", report)
                await page.add_init_script(
                    "document.addEventListener('securitypolicyviolation', e => "
                    "window.reportViolation(e.violatedDirective + ' ' + e.blockedURI))"
                )
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.route("https://unpkg.com/**", cdn)
                await page.goto(f"http://127.0.0.1:{runner.addresses[0][1]}/graphql")
                await page.wait_for_load_state("load")
                await page.wait_for_timeout(200)
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
    assert violations == []
    assert any(url.endswith("graphiql.min.js") for url in requested), requested
    assert any(url.endswith("graphiql.min.css") for url in requested), requested
    assert any("is not defined" in error for error in errors), errors  # the inline script ran
