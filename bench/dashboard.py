"""The dashboard page query, from the database, against a raw handler and plain Strawberry.

    python bench/dashboard.py [--quick] [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

One organization with 50 agents, each with a credential and 3 manifests of 3
operations; the page asks for all of it in one request (about 3,100 fields, 80 KB of
JSON). Three servers answer it over real HTTP on loopback, each in a process of its
own, on the same data:

- the project: ``kindrobots serve``, exactly as deployed (development settings);
- raw: a hand-written aiohttp handler that authenticates the caller and reads the page
  with the SQL the project runs (one statement per level, the columns the page shows)
  and builds the same JSON by hand;
- plain Strawberry: a minimal, straightforward schema over the same tables (async
  resolvers, DataLoaders, full ORM rows), authenticating the same way.

The sides run in alternation, several rounds each, with a few requests in flight,
first on a temporary SQLite file, then on a PostgreSQL database created for the run
(and dropped at the end). Every side's answer must be byte-equal to the others' after
canonical dumping, or the run fails. The lines that count are the ratios of
throughput against the raw handler of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import strawberry
from aiohttp import web
from sqlalchemy import and_, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from strawberry.aiohttp.views import GraphQLView
from strawberry.dataloader import DataLoader

from kindrobots.config import Settings, format_keys, generate_key, load_settings
from kindrobots.db import models
from kindrobots.db.engine import create_sessionmaker
from kindrobots.db.migrate import upgrade
from kindrobots.db.pagination import encode_cursor
from kindrobots.ids import from_global_id, to_global_id

AGENTS = 50
MANIFESTS = 12  # the organization's; each agent calls 3 of them
MANIFESTS_PER_AGENT = 3
OPERATIONS = 3
CREDENTIALS = 5
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

PAGE = """
query Dashboard($id: ID!) {
  organization(id: $id) {
    id name slug
    agents(first: 50) {
      edges {
        cursor
        node {
          id name model temperature createdAt updatedAt
          llmCredential { id provider label }
          manifests {
            id name version
            operations { operationId method path summary }
          }
        }
      }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    requests: int  # per side and round, at most
    budget: float  # seconds per side and round, at most
    in_flight: int


FULL = Mode("full", 8, 400, 3.0, 4)
QUICK = Mode("quick", 2, 30, 0.5, 2)


# --- The data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    organization_id: str
    access_token: str


def settings_for(database_url: str, data_dir: Path, signing: str, encryption: str) -> Settings:
    return load_settings(
        env="development",
        database_url=database_url,
        data_dir=data_dir,
        signing_keys=signing,
        encryption_keys=encryption,
        access_token_ttl=86400,
        log_level="ERROR",
    )


async def seed(settings: Settings) -> Seeded:
    """The organization, its owner with a live session, and the page's rows."""
    from kindrobots.server import create_services

    services = create_services(settings)
    await upgrade(services.engine)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    at = (start + timedelta(seconds=i) for i in range(10_000))
    try:
        async with services.writer() as session, session.begin():
            user = models.User(
                email="owner@bench.test",
                display_name="Owner",
                password_hash="not-a-hash",  # noqa: S106 - nobody signs in with a password here
                created_at=start,
            )
            organization = models.Organization(name="Bench", slug="bench", created_at=start)
            session.add_all([user, organization])
            await session.flush()
            auth = models.AuthSession(
                user_id=user.id, created_at=start, expires_at=start + timedelta(days=3650)
            )
            session.add_all(
                [
                    auth,
                    models.Membership(
                        organization_id=organization.id, user_id=user.id, role="OWNER"
                    ),
                ]
            )
            credentials = [
                models.LlmCredential(
                    organization_id=organization.id,
                    provider="OPENAI",
                    label=f"Key {i}",
                    key_id="bench",
                    nonce=bytes(12),
                    ciphertext=bytes(64),
                    key_hint=f"{i:04d}",
                    created_at=next(at),
                )
                for i in range(CREDENTIALS)
            ]
            manifests = [
                models.Manifest(
                    organization_id=organization.id, name=f"API {i}", version=1, created_at=next(at)
                )
                for i in range(MANIFESTS)
            ]
            session.add_all([*credentials, *manifests])
            await session.flush()
            for i, manifest in enumerate(manifests):
                session.add(
                    models.ManifestVersion(
                        manifest_id=manifest.id,
                        organization_id=organization.id,
                        version=1,
                        source_url=f"https://api{i}.example.com/openapi.json",
                        servers=[f"https://api{i}.example.com"],
                        operations=[
                            {
                                "operationId": f"op{i}_{j}",
                                "method": "GET",
                                "path": f"/things/{j}",
                                "summary": f"Get thing {j} of API {i}",
                                "parameters": {"type": "object", "properties": {}},
                                "locations": {},
                            }
                            for j in range(OPERATIONS)
                        ],
                        created_at=manifest.created_at,
                    )
                )
            for i in range(AGENTS):
                created = next(at)
                agent = models.Agent(
                    organization_id=organization.id,
                    name=f"Agent {i}",
                    system_prompt="You help. " * 20,
                    model="gpt-4o",
                    temperature=0.5,
                    llm_credential_id=credentials[i % CREDENTIALS].id,
                    created_at=created,
                    updated_at=created,
                )
                session.add(agent)
                await session.flush()
                session.add_all(
                    models.AgentManifest(
                        agent_id=agent.id,
                        manifest_id=manifests[(i + k) % MANIFESTS].id,
                        organization_id=organization.id,
                        position=k,
                    )
                    for k in range(MANIFESTS_PER_AGENT)
                )
        token, _ = services.signer.issue(user.id, auth.id, datetime.now(UTC))
        return Seeded(to_global_id("Organization", organization.id), token)
    finally:
        await services.engine.dispose()


# --- The raw handler ----------------------------------------------------------------------


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else None


async def _caller(
    session: AsyncSession, settings: Settings, signer: Any, request: web.Request
) -> dict[uuid.UUID, str] | None:
    """The caller's roles, by the one statement the project runs for every operation."""
    token = _bearer(request)
    claims = signer.verify(token) if token else None
    if claims is None:
        return None
    rows = (
        await session.execute(
            select(models.User, models.Membership.organization_id, models.Membership.role)
            .join(
                models.AuthSession,
                and_(
                    models.AuthSession.user_id == models.User.id,
                    models.AuthSession.id == claims.session_id,
                    models.AuthSession.revoked_at.is_(None),
                    models.AuthSession.expires_at > datetime.now(UTC),
                ),
            )
            .outerjoin(models.Membership, models.Membership.user_id == models.User.id)
            .where(models.User.id == claims.user_id)
        )
    ).all()
    return {org: role for _, org, role in rows if org is not None} if rows else None


def _operations(version: Sequence[Any] | None) -> list[dict[str, Any]]:
    return [
        {
            "operationId": op["operationId"],
            "method": op["method"],
            "path": op["path"],
            "summary": op.get("summary"),
        }
        for op in (version[1] if version else [])
    ]


async def raw_page(session: AsyncSession, organization_id: uuid.UUID) -> dict[str, Any] | None:
    """The page: one statement per level, the columns it shows, organization-scoped."""
    A, M, AM, V, C = (
        models.Agent,
        models.Manifest,
        models.AgentManifest,
        models.ManifestVersion,
        models.LlmCredential,
    )
    organization = (
        await session.execute(
            select(models.Organization.name, models.Organization.slug).where(
                models.Organization.id == organization_id
            )
        )
    ).first()
    if organization is None:
        return None
    agents = (
        await session.execute(
            select(
                A.id,
                A.name,
                A.model,
                A.temperature,
                A.created_at,
                A.updated_at,
                A.llm_credential_id,
            )
            .where(A.organization_id == organization_id)
            .order_by(A.created_at, A.id)
            .limit(AGENTS + 1)
        )
    ).all()
    has_next = len(agents) > AGENTS
    agents = agents[:AGENTS]
    agent_ids = [a[0] for a in agents]
    links = (
        await session.execute(
            select(AM.agent_id, M.id, M.name, M.version)
            .join(M, M.id == AM.manifest_id)
            .where(AM.agent_id.in_(agent_ids), M.organization_id == organization_id)
            .order_by(AM.agent_id, AM.position)
        )
    ).all()
    manifest_ids = {link[1] for link in links}
    versions = {
        row[0]: row
        for row in (
            await session.execute(
                select(V.manifest_id, V.operations)
                .join(M, and_(M.id == V.manifest_id, M.version == V.version))
                .where(M.id.in_(manifest_ids), M.organization_id == organization_id)
            )
        ).all()
    }
    credential_ids = {a[6] for a in agents if a[6] is not None}
    credentials = {
        row[0]: row
        for row in (
            await session.execute(
                select(C.id, C.provider, C.label).where(
                    C.id.in_(credential_ids), C.organization_id == organization_id
                )
            )
        ).all()
    }
    operations = {
        manifest_id: _operations(versions.get(manifest_id)) for manifest_id in manifest_ids
    }
    of_agent: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for agent_id, manifest_id, name, version in links:
        of_agent[agent_id].append(
            {
                "id": to_global_id("Manifest", manifest_id),
                "name": name,
                "version": version,
                "operations": operations[manifest_id],
            }
        )
    edges = []
    cursors = []
    for agent_id, name, model, temperature, created_at, updated_at, credential_id in agents:
        cursor = encode_cursor(created_at, agent_id)
        cursors.append(cursor)
        credential = credentials.get(credential_id) if credential_id else None
        edges.append(
            {
                "cursor": cursor,
                "node": {
                    "id": to_global_id("Agent", agent_id),
                    "name": name,
                    "model": model,
                    "temperature": temperature,
                    "createdAt": created_at.isoformat(),
                    "updatedAt": updated_at.isoformat(),
                    "llmCredential": (
                        {
                            "id": to_global_id("LlmCredential", credential[0]),
                            "provider": credential[1],
                            "label": credential[2],
                        }
                        if credential
                        else None
                    ),
                    "manifests": of_agent[agent_id],
                },
            }
        )
    return {
        "id": to_global_id("Organization", organization_id),
        "name": organization[0],
        "slug": organization[1],
        "agents": {
            "edges": edges,
            "pageInfo": {"hasNextPage": has_next, "endCursor": cursors[-1] if cursors else None},
        },
    }


def raw_app(settings: Settings) -> web.Application:
    from kindrobots.server import create_services

    services = create_services(settings)
    sessions = services.sessionmaker

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        organization_id = from_global_id(body["variables"]["id"], "Organization")
        async with sessions() as session:
            roles = await _caller(session, settings, services.signer, request)
            if roles is None or organization_id not in roles:
                return web.json_response({"data": None, "errors": [{"message": "refused"}]})
            page = await raw_page(session, organization_id)
        return web.json_response({"data": {"organization": page}})

    app = web.Application()
    app.router.add_post("/graphql", handle)

    async def close(_app: web.Application) -> None:
        await services.engine.dispose()

    app.on_cleanup.append(close)
    return app


# --- Plain Strawberry ----------------------------------------------------------------------


@strawberry.enum(name="LlmProvider")
class PlainProvider(enum.Enum):
    OPENAI = "OPENAI"
    ANTHROPIC = "ANTHROPIC"
    OPENAI_COMPATIBLE = "OPENAI_COMPATIBLE"
    DEMO = "DEMO"


@dataclass
class PlainLoaders:
    credential: DataLoader[uuid.UUID, models.LlmCredential | None]
    manifests: DataLoader[uuid.UUID, list[models.Manifest]]
    version: DataLoader[uuid.UUID, models.ManifestVersion | None]


@dataclass
class PlainContext:
    sessions: async_sessionmaker[AsyncSession]
    organizations: dict[uuid.UUID, str]
    loaders: PlainLoaders


def plain_loaders(sessions: async_sessionmaker[AsyncSession]) -> PlainLoaders:
    async def load_credentials(ids: Sequence[uuid.UUID]) -> list[models.LlmCredential | None]:
        async with sessions() as session:
            rows = (
                await session.scalars(
                    select(models.LlmCredential).where(models.LlmCredential.id.in_(ids))
                )
            ).all()
        found = {row.id: row for row in rows}
        return [found.get(i) for i in ids]

    async def load_manifests(ids: Sequence[uuid.UUID]) -> list[list[models.Manifest]]:
        async with sessions() as session:
            rows = (
                await session.execute(
                    select(models.AgentManifest.agent_id, models.Manifest)
                    .join(models.Manifest, models.Manifest.id == models.AgentManifest.manifest_id)
                    .where(models.AgentManifest.agent_id.in_(ids))
                    .order_by(models.AgentManifest.agent_id, models.AgentManifest.position)
                )
            ).all()
        grouped: dict[uuid.UUID, list[models.Manifest]] = defaultdict(list)
        for agent_id, manifest in rows:
            grouped[agent_id].append(manifest)
        return [grouped[i] for i in ids]

    async def load_versions(ids: Sequence[uuid.UUID]) -> list[models.ManifestVersion | None]:
        V, M = models.ManifestVersion, models.Manifest
        async with sessions() as session:
            rows = (
                await session.scalars(
                    select(V)
                    .join(M, and_(M.id == V.manifest_id, M.version == V.version))
                    .where(M.id.in_(ids))
                )
            ).all()
        found = {row.manifest_id: row for row in rows}
        return [found.get(i) for i in ids]

    return PlainLoaders(
        credential=DataLoader(load_fn=load_credentials),
        manifests=DataLoader(load_fn=load_manifests),
        version=DataLoader(load_fn=load_versions),
    )


@strawberry.type(name="ManifestOperation")
class PlainOperation:
    operation_id: str
    method: str
    path: str
    summary: str | None


@strawberry.type(name="Manifest")
class PlainManifest:
    id: strawberry.ID
    name: str
    version: int
    row_id: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def operations(self, info: strawberry.Info[PlainContext, None]) -> list[PlainOperation]:
        version = await info.context.loaders.version.load(self.row_id)
        return [
            PlainOperation(
                operation_id=op["operationId"],
                method=op["method"],
                path=op["path"],
                summary=op.get("summary"),
            )
            for op in (version.operations if version else [])
        ]


@strawberry.type(name="LlmCredential")
class PlainCredential:
    id: strawberry.ID
    provider: PlainProvider
    label: str


@strawberry.type(name="Agent")
class PlainAgent:
    id: strawberry.ID
    name: str
    model: str
    temperature: float
    created_at: datetime
    updated_at: datetime
    row_id: strawberry.Private[uuid.UUID]
    credential_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field
    async def llm_credential(
        self, info: strawberry.Info[PlainContext, None]
    ) -> PlainCredential | None:
        if self.credential_id is None:
            return None
        row = await info.context.loaders.credential.load(self.credential_id)
        if row is None:
            return None
        return PlainCredential(
            id=strawberry.ID(to_global_id("LlmCredential", row.id)),
            provider=PlainProvider(row.provider),
            label=row.label,
        )

    @strawberry.field
    async def manifests(self, info: strawberry.Info[PlainContext, None]) -> list[PlainManifest]:
        rows = await info.context.loaders.manifests.load(self.row_id)
        return [
            PlainManifest(
                id=strawberry.ID(to_global_id("Manifest", row.id)),
                name=row.name,
                version=row.version,
                row_id=row.id,
            )
            for row in rows
        ]


@strawberry.type(name="PageInfo")
class PlainPageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(name="AgentEdge")
class PlainAgentEdge:
    cursor: str
    node: PlainAgent


@strawberry.type(name="AgentConnection")
class PlainAgentConnection:
    edges: list[PlainAgentEdge]
    page_info: PlainPageInfo


@strawberry.type(name="Organization")
class PlainOrganization:
    id: strawberry.ID
    name: str
    slug: str
    row_id: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def agents(
        self, info: strawberry.Info[PlainContext, None], first: int = 20
    ) -> PlainAgentConnection:
        A = models.Agent
        async with info.context.sessions() as session:
            rows = (
                await session.scalars(
                    select(A)
                    .where(A.organization_id == self.row_id)
                    .order_by(A.created_at, A.id)
                    .limit(first + 1)
                )
            ).all()
        shown = rows[:first]
        edges = [
            PlainAgentEdge(
                cursor=encode_cursor(row.created_at, row.id),
                node=PlainAgent(
                    id=strawberry.ID(to_global_id("Agent", row.id)),
                    name=row.name,
                    model=row.model,
                    temperature=row.temperature,
                    created_at=row.created_at,
                    updated_at=row.updated_at,
                    row_id=row.id,
                    credential_id=row.llm_credential_id,
                ),
            )
            for row in shown
        ]
        return PlainAgentConnection(
            edges=edges,
            page_info=PlainPageInfo(
                has_next_page=len(rows) > first, end_cursor=edges[-1].cursor if edges else None
            ),
        )


@strawberry.type(name="Query")
class PlainQuery:
    @strawberry.field
    async def organization(
        self, info: strawberry.Info[PlainContext, None], id: strawberry.ID
    ) -> PlainOrganization | None:
        organization_id = from_global_id(id, "Organization")
        if organization_id not in info.context.organizations:
            return None
        async with info.context.sessions() as session:
            row = await session.get(models.Organization, organization_id)
        if row is None:
            return None
        return PlainOrganization(
            id=strawberry.ID(to_global_id("Organization", row.id)),
            name=row.name,
            slug=row.slug,
            row_id=row.id,
        )


def strawberry_app(settings: Settings) -> web.Application:
    """The straightforward way: async resolvers, one DataLoader per relation, ORM rows."""
    from kindrobots.server import create_services

    services = create_services(settings)
    sessions = create_sessionmaker(services.engine)
    schema = strawberry.Schema(query=PlainQuery)

    class View(GraphQLView[PlainContext, None]):
        async def get_context(self, request: web.Request, response: Any) -> PlainContext:
            async with sessions() as session:
                roles = await _caller(session, settings, services.signer, request)
            return PlainContext(sessions, roles or {}, plain_loaders(sessions))

    app = web.Application()
    app.router.add_route("*", "/graphql", View(schema=schema))

    async def close(_app: web.Application) -> None:
        await services.engine.dispose()

    app.on_cleanup.append(close)
    return app


def serve(side: str, port: int) -> None:
    """A child process: one of the baselines on ``port`` (settings from KR_* variables)."""
    settings = load_settings()
    app = raw_app(settings) if side == "raw" else strawberry_app(settings)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- The run ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Side:
    name: str
    url: str
    process: asyncio.subprocess.Process


@asynccontextmanager
async def started(
    name: str, env: dict[str, str], data_dir: Path, http: aiohttp.ClientSession
) -> AsyncIterator[Side]:
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("KR_")}
    child_env.update(env, KR_HOST="127.0.0.1", KR_PORT=str(port), KR_DATA_DIR=str(data_dir))
    if name == "project":
        command = [sys.executable, "-m", "kindrobots", "serve"]
    else:
        command = [sys.executable, __file__, "--serve", name, "--port", str(port)]
    log = (data_dir / f"{name}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *command, env=child_env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    side = Side(name, f"http://127.0.0.1:{port}/graphql", process)
    try:
        async with asyncio.timeout(60):
            while True:
                if process.returncode is not None:
                    raise SystemExit(f"{name} exited: {(data_dir / f'{name}.log').read_text()}")
                try:
                    async with http.post(side.url, json={}) as response:
                        await response.read()
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        yield side
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def fetch(http: aiohttp.ClientSession, side: Side, seeded: Seeded) -> bytes:
    payload = {"query": PAGE, "variables": {"id": seeded.organization_id}}
    headers = {"Authorization": f"Bearer {seeded.access_token}"}
    async with http.post(side.url, json=payload, headers=headers) as response:
        body = await response.read()
        if response.status != 200:
            raise SystemExit(f"{side.name} answered {response.status}: {body[:500]!r}")
        return body


def canonical(body: bytes) -> bytes:
    return json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()


async def requests_per_second(
    mode: Mode, http: aiohttp.ClientSession, side: Side, seeded: Seeded
) -> float:
    done = 0
    deadline = time.perf_counter() + mode.budget

    async def worker() -> None:
        nonlocal done
        while done < mode.requests and time.perf_counter() < deadline:
            done += 1
            await fetch(http, side, seeded)

    started_at = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(mode.in_flight)))
    return done / (time.perf_counter() - started_at)


async def measure(
    mode: Mode, database: str, env: dict[str, str], data_dir: Path, seeded: Seeded
) -> None:
    names = ("project", "raw", "strawberry")
    async with (
        aiohttp.ClientSession() as http,
        started("project", env, data_dir, http) as project,
        started("raw", env, data_dir, http) as raw,
        started("strawberry", env, data_dir, http) as plain,
    ):
        sides = {"project": project, "raw": raw, "strawberry": plain}
        answers = {name: canonical(await fetch(http, side, seeded)) for name, side in sides.items()}
        page = json.loads(answers["raw"])["data"]["organization"]
        if page is None or len(page["agents"]["edges"]) != AGENTS:
            raise SystemExit(f"the raw side did not see the page: {answers['raw'][:300]!r}")
        for name in names:
            if answers[name] != answers["raw"]:
                raise SystemExit(
                    f"{name} answered differently from raw ({database}):\n"
                    f"{answers[name][:600]!r}\n{answers['raw'][:600]!r}"
                )
        size = len(await fetch(http, project, seeded))
        print(f"page ({database}): {AGENTS} agents, {size / 1024:.1f} KB, responses identical")
        for side in sides.values():  # warm: pools, caches, the interpreter
            for _ in range(10):
                await fetch(http, side, seeded)
        rates: dict[str, list[float]] = {name: [] for name in names}
        for round_number in range(mode.rounds):
            # Each round starts with another side, so no side always runs first.
            order = names[round_number % 3 :] + names[: round_number % 3]
            for name in order:
                rates[name].append(await requests_per_second(mode, http, sides[name], seeded))
    best = {name: max(values) for name, values in rates.items()}
    for name in names:
        print(f"requests/s {name} ({database}): {best[name]:.1f}")
    for name in ("project", "strawberry"):
        print(f"ratio {name}/raw ({database}): {best[name] / best['raw']:.2f}")


async def run(mode: Mode, postgres: str) -> None:
    print(f"dashboard bench, {mode.name} mode")
    started_at = time.perf_counter()
    keys = {
        "KR_SIGNING_KEYS": format_keys((generate_key("sig"),)),
        "KR_ENCRYPTION_KEYS": format_keys((generate_key("enc"),)),
    }
    with tempfile.TemporaryDirectory(prefix="kr-bench-dashboard-") as tmp:
        data_dir = Path(tmp)
        sqlite_url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        await run_on("sqlite", sqlite_url, keys, data_dir, mode)
        name = f"kr_bench_{uuid.uuid4().hex[:12]}"
        admin = create_async_engine(postgres, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as connection:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                url = make_url(postgres).set(database=name).render_as_string(hide_password=False)
                await run_on("postgresql", url, keys, data_dir, mode)
            finally:
                async with admin.connect() as connection:
                    await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            await admin.dispose()
    print(f"bench took {time.perf_counter() - started_at:.1f} s")


async def run_on(database: str, url: str, keys: dict[str, str], data_dir: Path, mode: Mode) -> None:
    settings = settings_for(url, data_dir, keys["KR_SIGNING_KEYS"], keys["KR_ENCRYPTION_KEYS"])
    seeded = await seed(settings)
    env = {
        **keys,
        "KR_ENV": "development",
        "KR_DATABASE_URL": url,
        "KR_ACCESS_TOKEN_TTL": "86400",
        "KR_LOG_LEVEL": "ERROR",
    }
    await measure(mode, database, env, data_dir, seeded)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short rounds: a smoke run")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="an administrative URL")
    parser.add_argument("--serve", choices=("raw", "strawberry"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return
    asyncio.run(run(QUICK if args.quick else FULL, args.postgres))


if __name__ == "__main__":
    main()
