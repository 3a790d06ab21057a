"""What rate limiting costs, measured in one run and printed as ratios.

    python bench/ratelimit.py [--quick] [--redis-url redis://127.0.0.1:6379/0]

1. Check throughput: ``RedisLimiter.hit`` (one Lua round trip to a loopback Redis)
   against ``MemoryLimiter.hit`` (in-process), one check at a time and with many
   in flight.
2. A limited field against the same field without the limit, executed by a
   Strawberry schema in-process: the extension, the key and the check.
3. The same over HTTP on real servers: ``refreshSession`` (limited per IP) with
   ``KR_RATE_LIMITS`` off, then on with each backend.

Every measurement is bounded twice, by a number of operations and by a time
budget, so a run ends by itself even on a busy machine (full: about half a
minute; ``--quick``: a few seconds). The variants of one comparison run in
alternation and the best round counts, so a load change during the run shifts
all of them alike. Loopback only; the Redis keys are this run's own (their
addresses carry the run id) and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import strawberry
from aiohttp import web
from redis.asyncio import Redis
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig

from kindrobots.config import Settings, format_keys, generate_key, load_settings
from kindrobots.context import RequestContext, Services
from kindrobots.db.migrate import upgrade
from kindrobots.schema.base import Info
from kindrobots.schema.directives import RateLimit, RateLimitKey, install_rate_limits
from kindrobots.security.ratelimit import Limiter, MemoryLimiter, RedisLimiter
from kindrobots.server import SERVICES, create_app, create_services

DEFAULT_REDIS = os.environ.get("KR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
HUGE = 10**9  # a limit never reached: the bench measures the allowed path
WARM_UP = 20

Operation = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Mode:
    name: str
    max_ops: int  # per measurement
    budget: float  # seconds per measurement
    rounds: int  # alternating rounds per comparison
    concurrency: int


FULL = Mode("full", 50_000, 0.75, 3, 32)
QUICK = Mode("quick", 2_000, 0.1, 1, 8)


def addresses(run_id: str, count: int) -> list[str]:
    """Callers from many addresses, as in production: many keys, not one hot key.

    Limits count IPv6 callers by /64, so each address is in a /64 of its own, all of
    them under one prefix (IPv6 documentation range) that carries the run's id: the
    limiter keys are this run's alone.
    """
    return [f"{run_prefix(run_id)}:{i:x}::1" for i in range(1, count + 1)]


def run_prefix(run_id: str) -> str:
    return f"2001:db8:{int(run_id[:4], 16) | 0x8000:x}"


async def seconds_per_op(mode: Mode, operation: Operation, concurrency: int = 1) -> float:
    """Wall-clock seconds per operation, ``concurrency`` of them in flight."""
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while done < mode.max_ops and time.perf_counter() < deadline:
            await operation(i)
            done += 1
            i += concurrency

    # As timeit does: no collection of earlier garbage lands inside one variant's time.
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        deadline = started + mode.budget
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        return (time.perf_counter() - started) / max(done, 1)
    finally:
        gc.enable()


async def compare(
    mode: Mode, variants: dict[str, Operation], concurrency: dict[str, int] | None = None
) -> dict[str, float]:
    """Seconds per operation of each variant: the best (least disturbed) of ``mode.rounds``
    alternating rounds, after a warm-up of each (caches, connections, the script load)."""
    for operation in variants.values():
        for i in range(WARM_UP):
            await operation(i)
    best = {name: float("inf") for name in variants}
    for _ in range(mode.rounds):
        for name, operation in variants.items():
            in_flight = (concurrency or {}).get(name, 1)
            best[name] = min(best[name], await seconds_per_op(mode, operation, in_flight))
    return best


# --- 1. Check throughput --------------------------------------------------------------


def checking(limiter: Limiter, keys: list[str]) -> Operation:
    async def check(i: int) -> None:
        await limiter.hit(keys[i % len(keys)], HUGE, 60)

    return check


# --- 2. A limited field in-process ----------------------------------------------------


async def unlimited() -> int:
    return 1


async def limited() -> int:
    return 1


@strawberry.type
class BenchQuery:
    unlimited: int = strawberry.field(resolver=unlimited)
    limited: int = strawberry.field(
        resolver=limited, directives=[RateLimit(limit=HUGE, window=60, per=RateLimitKey.IP)]
    )


install_rate_limits([BenchQuery])
# Parsing and validating `{ limited }` again each time would cost far more than executing it
# and hide what the limit adds; a hot document is parsed and validated once.
BENCH_SCHEMA = strawberry.Schema(
    query=BenchQuery,
    extensions=[lambda: ParserCache(maxsize=8), lambda: ValidationCache(maxsize=8)],
    # The limit reads what the field's permission granted from the project's Info type.
    config=StrawberryConfig(info_class=Info),
)


def executing(services: Services, query: str, ips: list[str]) -> Operation:
    async def execute(i: int) -> None:
        context = RequestContext(services=services, ip=ips[i % len(ips)], user_agent=None)
        result = await BENCH_SCHEMA.execute(query, context_value=context)
        if result.errors:
            raise SystemExit(f"bench query failed: {result.errors}")

    return execute


# --- 3. The same over HTTP ------------------------------------------------------------

REFRESH = {
    "query": "mutation($t: String) { refreshSession(refreshToken: $t) { accessToken } }",
    "variables": {"t": "not-a-refresh-token"},
}


@dataclass
class Server:
    runner: web.AppRunner
    url: str


async def start(settings: Settings) -> Server:
    app = create_app(settings)
    await upgrade(app[SERVICES].engine)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return Server(runner, f"http://127.0.0.1:{runner.addresses[0][1]}/graphql")


def requesting(http: aiohttp.ClientSession, server: Server, ips: list[str]) -> Operation:
    """refreshSession with a token that does not exist: one database read, UNAUTHENTICATED."""
    calls = 0

    async def request(_: int) -> None:
        nonlocal calls
        # A new address for each call of this server (refreshSession allows 30 a minute each).
        headers = {"X-Forwarded-For": ips[calls % len(ips)]}
        calls += 1
        async with http.post(server.url, json=REFRESH, headers=headers) as response:
            body: dict[str, Any] = await response.json()
        if body["errors"][0]["extensions"]["code"] != "UNAUTHENTICATED":
            raise SystemExit(f"unexpected answer {response.status}: {body}")

    return request


# --- The run --------------------------------------------------------------------------


def settings_for(tmp: Path, **overrides: Any) -> Settings:
    tmp.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "data_dir": tmp,
        "database_url": f"sqlite+aiosqlite:///{tmp}/bench.db",
        "signing_keys": format_keys((generate_key("sig"),)),
        "encryption_keys": format_keys((generate_key("enc"),)),
        "trusted_proxies": "127.0.0.1",
        "log_level": "ERROR",
        **overrides,
    }
    return load_settings(**values)


async def close_services(services: Services) -> None:
    await services.broker.close()
    if services.redis is not None:
        await services.redis.aclose()
    await services.engine.dispose()


async def throughput(mode: Mode, redis: Redis, ips: list[str]) -> None:
    memory, shared = MemoryLimiter(), RedisLimiter(redis, "closed")
    keys = [f"rl:bench.check:IP:ip:{ip}" for ip in ips[:256]]
    n = mode.concurrency
    best = await compare(
        mode,
        {
            "in-process": checking(memory, keys),
            "redis": checking(shared, keys),
            "redis-n": checking(shared, keys),
        },
        {"redis-n": n},
    )
    per_s = {name: 1 / seconds for name, seconds in best.items()}
    print(f"checks/s in-process: {per_s['in-process']:,.0f}")
    print(f"checks/s redis, 1 in flight: {per_s['redis']:,.0f}")
    print(f"checks/s redis, {n} in flight: {per_s['redis-n']:,.0f}")
    print(f"ratio redis/in-process checks/s: {per_s['redis'] / per_s['in-process']:.4f}")
    print(
        f"ratio redis ({n} in flight)/in-process checks/s: "
        f"{per_s['redis-n'] / per_s['in-process']:.4f}"
    )


async def field_latency(mode: Mode, tmp: Path, redis_url: str, ips: list[str]) -> None:
    on_memory = create_services(settings_for(tmp, rate_limits=True))
    on_redis = create_services(settings_for(tmp, rate_limits=True, redis_url=redis_url))
    try:
        best = await compare(
            mode,
            {
                "unlimited": executing(on_memory, "{ unlimited }", ips),
                "in-process": executing(on_memory, "{ limited }", ips),
                "redis": executing(on_redis, "{ limited }", ips),
            },
        )
    finally:
        await close_services(on_memory)
        await close_services(on_redis)
    print(f"field µs unlimited: {best['unlimited'] * 1e6:.1f}")
    for name in ("in-process", "redis"):
        print(f"field µs limited, {name}: {best[name] * 1e6:.1f}")
    for name in ("in-process", "redis"):
        ratio = best[name] / best["unlimited"]
        print(f"ratio limited/unlimited query latency ({name}): {ratio:.3f}")


async def http_latency(mode: Mode, tmp: Path, redis_url: str, ips: list[str]) -> None:
    servers = {
        "off": await start(settings_for(tmp / "off", rate_limits=False)),
        "in-process": await start(settings_for(tmp / "memory", rate_limits=True)),
        "redis": await start(settings_for(tmp / "redis", rate_limits=True, redis_url=redis_url)),
    }
    try:
        async with aiohttp.ClientSession() as http:
            operations = {name: requesting(http, server, ips) for name, server in servers.items()}
            best = await compare(mode, operations)
    finally:
        for server in servers.values():
            await server.runner.cleanup()
    for name, seconds in best.items():
        print(f"http refreshSession ms, limits {name}: {seconds * 1e3:.3f}")
    for name in ("in-process", "redis"):
        print(f"ratio limited/unlimited http latency ({name}): {best[name] / best['off']:.3f}")


async def delete_keys(redis: Redis, pattern: str) -> None:
    async for key in redis.scan_iter(match=pattern, count=1000):
        await redis.delete(key)


async def run(mode: Mode, redis_url: str) -> None:
    redis = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose()
        raise SystemExit(
            f"Redis at {redis_url} is not reachable ({exc}); pass --redis-url"
        ) from exc
    run_id = uuid.uuid4().hex[:8]
    ips = addresses(run_id, 4096)
    print(f"rate-limit bench, run {run_id}, {mode.name} mode (loopback Redis at {redis_url})")
    started = time.perf_counter()
    try:
        await throughput(mode, redis, ips)
        with tempfile.TemporaryDirectory(prefix="kr-bench-") as tmp:
            await field_latency(mode, Path(tmp), redis_url, ips)
            await http_latency(mode, Path(tmp), redis_url, ips)
    finally:
        await delete_keys(redis, f"rl:*:ip:{run_prefix(run_id)}:*")
        await redis.aclose()
    print(f"bench took {time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = parser.parse_args(argv)
    asyncio.run(run(QUICK if args.quick else FULL, args.redis_url))


if __name__ == "__main__":
    main()
