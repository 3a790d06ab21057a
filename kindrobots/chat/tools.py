"""Manifest operations offered to the model as functions, and their execution.

Every call goes out through the SSRF guard with tight caps: the model chooses
the arguments, so nothing it says may reach an internal address, send a header
the operation did not declare, or pull an unbounded response into the context.

A manifest that opted in (``forwardEndUserToken``) has its operations called with
the verified end user's token of an AUTHENTICATED project as ``Authorization:
Bearer``, and only on a URL under one of the manifest's own servers: the model
cannot send that token anywhere else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from yarl import URL

from kindrobots.chat.providers import Tool
from kindrobots.security.ssrf import Limits, OutboundFailed, OutboundRefused, outbound_request

TOOL_LIMITS = Limits(timeout=10.0, max_bytes=256 * 1024, max_redirects=2)
MAX_RESULT_CHARS = 8000
FORBIDDEN_HEADERS = frozenset(
    {"host", "authorization", "cookie", "content-length", "transfer-encoding", "connection"}
)


@dataclass(frozen=True)
class ManifestTools:
    """One manifest's newest version as the agent uses it."""

    servers: list[str]
    operations: list[dict[str, Any]]
    forward_end_user_token: bool = False


@dataclass(frozen=True)
class ToolSpec:
    tool: Tool
    method: str
    path: str
    locations: dict[str, str]
    server: str | None
    # The end user's verified token, for an opted-in manifest only; never shown or logged.
    bearer: str | None = field(default=None, repr=False)
    servers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolOutcome:
    result: Any  # JSON value shown to the client and stored
    for_model: str  # what the model reads back, bounded


def build_tools(
    manifests: Iterable[ManifestTools], end_user_token: str | None = None
) -> dict[str, ToolSpec]:
    """One tool per operation of each manifest; names made unique. ``end_user_token``
    goes to the operations of manifests that opted in, and to no other."""
    specs: dict[str, ToolSpec] = {}
    for manifest in manifests:
        servers = manifest.servers
        server = next((s for s in servers if s.startswith(("http://", "https://"))), None)
        bearer = end_user_token if manifest.forward_end_user_token else None
        for operation in manifest.operations:
            name = _unique(operation["operationId"], specs)
            specs[name] = ToolSpec(
                tool=Tool(
                    name=name,
                    description=(
                        operation.get("summary") or f"{operation['method']} {operation['path']}"
                    )[:1000],
                    parameters=operation["parameters"],
                ),
                method=operation["method"],
                path=operation["path"],
                locations=operation.get("locations", {}),
                server=server,
                bearer=bearer,
                servers=tuple(servers),
            )
    return specs


def on_declared_server(url: str, servers: Iterable[str]) -> bool:
    """Whether ``url`` lies under one of ``servers``: same scheme, host and port, and a
    path within the server's own (``https://api.example.com/v1`` admits ``/v1/...``)."""
    try:
        target = URL(url)
    except (ValueError, TypeError):
        return False
    for server in servers:
        try:
            base = URL(server)
        except (ValueError, TypeError):
            continue
        if not base.is_absolute() or (target.scheme, target.host, target.port) != (
            base.scheme,
            base.host,
            base.port,
        ):
            continue
        prefix = base.path.rstrip("/")
        if target.path == prefix or target.path.startswith(prefix + "/"):
            return True
    return False


def _unique(name: str, taken: dict[str, ToolSpec]) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:60] or "tool"
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name[:58]}_{suffix}", suffix + 1
    return candidate


def _failure(message: str) -> ToolOutcome:
    return ToolOutcome({"error": message}, json.dumps({"error": message}))


async def execute(
    spec: ToolSpec | None, arguments_text: str, allow: Sequence[str], *, https_only: bool = False
) -> ToolOutcome:
    """Call the operation; every failure is a result the model can read, never an exception."""
    if spec is None:
        return _failure("There is no such tool.")
    if spec.server is None:
        return _failure("The manifest names no absolute server URL to call.")
    try:
        arguments = json.loads(arguments_text or "{}")
    except ValueError:
        return _failure("The arguments are not valid JSON.")
    if not isinstance(arguments, dict):
        return _failure("The arguments must be a JSON object.")
    path = spec.path
    query: dict[str, str] = {}
    headers: dict[str, str] = {"Accept": "application/json"}
    body: Any = None
    for name, value in arguments.items():
        location = spec.locations.get(name)
        text = value if isinstance(value, str) else json.dumps(value)
        if location == "path":
            path = path.replace("{" + name + "}", quote(text, safe=""))
        elif location == "query":
            query[name] = text
        elif location == "header" and name.lower() not in FORBIDDEN_HEADERS:
            headers[name] = text.replace("\r", " ").replace("\n", " ")
        elif location == "body":
            body = value
    if "{" in path:
        return _failure("A required path parameter is missing.")
    url = spec.server.rstrip("/") + path
    if query:
        url += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())
    if spec.bearer is not None:
        if not on_declared_server(url, spec.servers):
            return _failure("The call's URL is not on the manifest's servers.")
        headers["Authorization"] = f"Bearer {spec.bearer}"
    try:
        response = await outbound_request(
            url,
            allow=allow,
            method=spec.method,
            headers=headers,
            json=body,
            limits=TOOL_LIMITS,
            https_only=https_only,
        )
    except (OutboundRefused, OutboundFailed) as exc:
        return _failure(exc.message)
    text = response.body.decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text[:MAX_RESULT_CHARS]
    result = {"status": response.status, "body": parsed}
    return ToolOutcome(result, json.dumps(result)[:MAX_RESULT_CHARS])
