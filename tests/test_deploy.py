"""The deployment files agree with the code and with each other (Docker itself may not be
available where the tests run): every setting is in .env.example with its real default,
compose runs migrate before two instances behind a proxy it trusts, the image serves."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kindrobots.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
ENV_LINE = re.compile(r"^# ([A-Z][A-Z0-9_]*)=(.*)$")
COMPOSE_ONLY = {"SITE_ADDRESS", "PROXY_PORT", "POSTGRES_PASSWORD"}
SETTINGS = {f"KR_{name.upper()}": name for name in Settings.model_fields}


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    found = [(match.group(1), match.group(2)) for line in lines if (match := ENV_LINE.match(line))]
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), "a variable is listed twice"
    return dict(found)


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    listed = env_example()
    assert {name for name in listed if name.startswith("KR_")} == set(SETTINGS)
    assert {name for name in listed if not name.startswith("KR_")} == COMPOSE_ONLY


def test_env_example_shows_the_real_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [name for name in os.environ if name.startswith("KR_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    shown = {name: value for name, value in env_example().items() if name in SETTINGS and value}
    for name, value in shown.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    for name in shown:
        field = SETTINGS[name]
        assert getattr(settings, field) == Settings.model_fields[field].default, name


def test_compose_migrates_once_then_runs_two_instances_behind_the_proxy() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "proxy"} <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    instances = [name for name, service in services.items() if service.get("command") == ["serve"]]
    assert len(instances) == 2
    for name in instances:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"

    # The instances believe X-Forwarded-For from the proxy's fixed address alone.
    proxy_address = services["proxy"]["networks"]["backend"]["ipv4_address"]
    (subnet,) = compose()["networks"]["backend"]["ipam"]["config"]
    assert ipaddress.ip_address(proxy_address) in ipaddress.ip_network(subnet["subnet"])
    for name in (*instances, "migrate"):
        environment = services[name]["environment"]
        assert environment["KR_TRUSTED_PROXIES"] == proxy_address
        assert set(environment) <= set(SETTINGS), name
        for key in ("KR_ENCRYPTION_KEYS", "KR_SIGNING_KEYS", "KR_AUDIT_KEY"):
            assert ":?" in environment[key], "instances must share keys from .env"

    # Caddy spreads requests over exactly the instances, on the port the image listens on.
    mounts = services["proxy"]["volumes"]
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in mounts
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    (upstreams,) = re.findall(r"reverse_proxy ([^{]+)\{", caddyfile)
    assert sorted(upstreams.split()) == sorted(f"{name}:8000" for name in instances)
    assert "health_uri /readyz" in caddyfile
    assert "KR_PORT=8000" in (ROOT / "Dockerfile").read_text()


def test_compose_variables_are_settings_or_documented() -> None:
    text = (ROOT / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert used <= set(SETTINGS) | COMPOSE_ONLY
    assert used >= COMPOSE_ONLY - {"SITE_ADDRESS"} | {"KR_DATABASE_URL", "KR_SIGNING_KEYS"}
    assert "{$SITE_ADDRESS" in (ROOT / "deploy" / "Caddyfile").read_text()


def test_the_compose_database_url_is_accepted(tmp_path: Path) -> None:
    url = compose()["x-kindrobots"]["environment"]["KR_DATABASE_URL"]
    default = re.fullmatch(r"\$\{KR_DATABASE_URL:-(.*)\}", url)
    assert default is not None
    expanded = default.group(1).replace("${POSTGRES_PASSWORD:-kindrobots}", "kindrobots")
    settings = load_settings(database_url=expanded, data_dir=tmp_path)
    assert (
        settings.database_url
        == "postgresql+asyncpg://kindrobots:kindrobots@postgres:5432/kindrobots"
    )


def test_dockerfile_builds_a_non_root_image_that_serves() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert user not in ("root", "0")
    assert re.search(r"pip install --constraint constraints\.txt \.", text)
    assert 'ENTRYPOINT ["kindrobots"]' in text and 'CMD ["serve"]' in text
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert set(re.findall(r"\b(KR_[A-Z_]+)=", text)) <= set(SETTINGS)
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path


def test_readme_documents_the_deployment() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("Dockerfile", "compose.yaml", ".env.example", "docker compose up"):
        assert name in readme, name
