"""OpenAPI 3.0/3.1 documents turned into the operations an agent can call.

Written here rather than with a validator library because the libraries follow
remote ``$ref``s (an SSRF path) and expand cyclic schemas without bound; we
accept only local references and cut cycles and depth ourselves, with limits
that each fail as BAD_USER_INPUT.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from kindrobots.db.bounds import MAX_OPERATIONS_PER_MANIFEST
from kindrobots.errors import BadUserInput

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_NESTING = 64
MAX_SCHEMA_DEPTH = 24
MAX_SCHEMA_NODES = 2000
MAX_SCHEMA_CHARS = 100_000
MAX_OUTPUT_CHARS = 4_000_000
MAX_INTEGER_BITS = 1024
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
OPERATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FIELD = "openapi"


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str
    summary: str | None
    parameters: dict[str, Any]
    locations: dict[str, str]  # parameter name -> path/query/header/cookie/body

    def as_json(self) -> dict[str, Any]:
        return {
            "operationId": self.operation_id,
            "method": self.method,
            "path": self.path,
            "summary": self.summary,
            "parameters": self.parameters,
            "locations": self.locations,
        }


@dataclass(frozen=True)
class Document:
    title: str
    servers: list[str]
    operations: list[Operation]


class _NoAliasLoader(yaml.SafeLoader):
    """YAML aliases let a small document expand to gigabytes; OpenAPI never needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not allowed")
        return super().compose_node(parent, index)


def _timestamp_as_text(loader: _NoAliasLoader, node: yaml.ScalarNode) -> str:
    """A manifest is stored as JSON: a YAML timestamp (``example: 2024-01-01``) stays its text."""
    return str(loader.construct_scalar(node))


_NoAliasLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def _bad(message: str) -> BadUserInput:
    return BadUserInput(FIELD, message)


def load(text: str) -> dict[str, Any]:
    """Parse a JSON or YAML document within the size and nesting limits."""
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise _bad(f"The document is larger than {MAX_DOCUMENT_BYTES // 1024} KB.")
    try:
        document = json.loads(text) if text.lstrip().startswith("{") else None
    except RecursionError:
        raise _bad(f"The document nests deeper than {MAX_NESTING} levels.") from None
    except ValueError:
        document = None
    if document is None:
        try:
            document = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - safe loader subclass
        except RecursionError:
            raise _bad(f"The document nests deeper than {MAX_NESTING} levels.") from None
        except (yaml.YAMLError, ValueError):
            # ValueError: an integer past Python's int-to-str digit limit (`int("1" * 5000)`).
            raise _bad("The document is neither valid JSON nor valid YAML.") from None
    if not isinstance(document, dict):
        raise _bad("The document must be an OpenAPI object.")
    _check_nesting(document)
    return document


def _check_nesting(document: Any) -> None:
    """Within the nesting limit, and only values JSON can hold (YAML also has bytes, sets, NaN)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise _bad(f"The document nests deeper than {MAX_NESTING} levels.")
        if not _json_value(node) or (
            isinstance(node, dict) and not all(_json_value(key, scalar=True) for key in node)
        ):
            raise _bad("The document holds a value that JSON cannot represent.")
        if isinstance(node, int) and node.bit_length() > MAX_INTEGER_BITS:
            # YAML reads `0x…` of any length; storing it as JSON would fail past 4300 digits.
            raise _bad("The document holds a number too large to store.")
        if (isinstance(node, str) and "\x00" in node) or (
            isinstance(node, dict) and any(isinstance(key, str) and "\x00" in key for key in node)
        ):
            raise _bad("The document must not contain NUL (U+0000) characters.")
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        stack.extend((child, depth + 1) for child in children)


def _json_value(value: Any, *, scalar: bool = False) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict | list):
        return not scalar
    return value is None or isinstance(value, str | int)  # bool is an int


def parse(text: str) -> Document:
    document = load(text)
    version = document.get("openapi")
    if not isinstance(version, str) or not re.match(r"^3\.[01]\.\d+", version):
        raise _bad("Only OpenAPI 3.0 and 3.1 documents are supported (the `openapi` field).")
    info = document.get("info")
    if not isinstance(info, dict) or not isinstance(info.get("title"), str):
        raise _bad("The document needs info.title.")
    paths = document.get("paths")
    if not isinstance(paths, dict):
        raise _bad("The document needs a `paths` object.")
    resolver = _Resolver(document)
    operations: list[Operation] = []
    used_ids: set[str] = set()
    for path, item in paths.items():
        if not isinstance(path, str) or not path.startswith("/"):
            raise _bad(f"Path {path!r} must start with '/'.")
        item = resolver.deref(item, f"paths.{path}")
        if not isinstance(item, dict):
            raise _bad(f"Path {path} must be an object.")
        shared = item.get("parameters", [])
        for method in METHODS:
            if method not in item:
                continue
            if len(operations) >= MAX_OPERATIONS_PER_MANIFEST:
                raise _bad(f"The document has more than {MAX_OPERATIONS_PER_MANIFEST} operations.")
            operation = resolver.deref(item[method], f"{method.upper()} {path}")
            if not isinstance(operation, dict):
                raise _bad(f"{method.upper()} {path} must be an object.")
            operations.append(_operation(resolver, method, path, operation, shared, used_ids))
    listed = document.get("servers") or []
    if not isinstance(listed, list):
        raise _bad("`servers` must be a list.")
    servers = [
        server["url"][:2048]
        for server in listed
        if isinstance(server, dict) and isinstance(server.get("url"), str)
    ]
    return Document(title=info["title"], servers=servers, operations=operations)


def _operation_id(method: str, path: str, operation: dict[str, Any], used: set[str]) -> str:
    given = operation.get("operationId")
    if isinstance(given, str) and OPERATION_ID.match(given) and given not in used:
        used.add(given)
        return given
    base = given if isinstance(given, str) else f"{method}_{path}"
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", base).strip("_")[:56] or method
    candidate, suffix = base, 2
    while candidate in used:
        candidate, suffix = f"{base}_{suffix}", suffix + 1
    used.add(candidate)
    return candidate


def _operation(
    resolver: _Resolver,
    method: str,
    path: str,
    operation: dict[str, Any],
    shared: Any,
    used_ids: set[str],
) -> Operation:
    where = f"{method.upper()} {path}"
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    own = operation.get("parameters") or []
    if not isinstance(own, list):
        raise _bad(f"{where}: `parameters` must be a list.")
    for raw in [*(shared if isinstance(shared, list) else []), *own]:
        parameter = resolver.deref(raw, where)
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise _bad(f"{where}: every parameter needs a name.")
        location = parameter.get("in")
        if location not in ("path", "query", "header", "cookie"):
            raise _bad(f"{where}: parameter {parameter['name']!r} has no valid `in`.")
        merged[(parameter["name"], location)] = parameter
    properties: dict[str, Any] = {}
    required: list[str] = []
    locations: dict[str, str] = {}
    budget = _Budget(resolver.output)
    for (name, location), parameter in merged.items():
        schema = resolver.schema(parameter.get("schema", {}), budget)
        if isinstance(parameter.get("description"), str):
            schema = {**schema, "description": parameter["description"]}
        properties[name] = schema
        locations[name] = location
        if parameter.get("required") or location == "path":
            required.append(name)
    body = resolver.deref(operation.get("requestBody"), where)
    if isinstance(body, dict):
        content = body.get("content")
        content = content if isinstance(content, dict) else {}
        media = next((value for key, value in content.items() if "json" in key), None)
        if isinstance(media, dict):
            properties["body"] = resolver.schema(media.get("schema", {}), budget)
            locations["body"] = "body"
            if body.get("required"):
                required.append("body")
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    summary = operation.get("summary") or operation.get("description")
    return Operation(
        operation_id=_operation_id(method, path, operation, used_ids),
        method=method.upper(),
        path=path,
        summary=summary[:1000] if isinstance(summary, str) else None,
        parameters=parameters,
        locations=locations,
    )


class _Budget:
    """What inlining $refs may produce: parts and characters per operation and per document.

    A small document can reference one large schema from many places; counting
    only parts would let it expand to gigabytes.
    """

    def __init__(self, document: _DocumentBudget) -> None:
        self.nodes = 0
        self.chars = 0
        self.document = document

    def spend(self, chars: int = 0) -> None:
        self.nodes += 1
        self.chars += chars
        self.document.chars += chars
        if self.nodes > MAX_SCHEMA_NODES:
            raise _bad(f"An operation's schema has more than {MAX_SCHEMA_NODES} parts.")
        if self.chars > MAX_SCHEMA_CHARS:
            raise _bad(f"An operation's schema expands to more than {MAX_SCHEMA_CHARS} characters.")
        if self.document.chars > MAX_OUTPUT_CHARS:
            raise _bad(f"The operations expand to more than {MAX_OUTPUT_CHARS} characters.")


@dataclass
class _DocumentBudget:
    chars: int = 0


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(json.dumps(value, default=str))


class _Resolver:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.output = _DocumentBudget()

    def lookup(self, ref: str, where: str) -> Any:
        if not ref.startswith("#/"):
            raise _bad(f"{where}: only local $refs (#/...) are allowed, not {ref[:200]!r}.")
        node: Any = self.document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise _bad(f"{where}: $ref {ref[:200]!r} points nowhere.")
            node = node[part]
        return node

    def deref(self, node: Any, where: str) -> Any:
        """Follow a chain of $refs for non-schema objects (parameters, bodies, path items)."""
        seen: set[str] = set()
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen:
                raise _bad(f"{where}: $ref {ref[:200]!r} refers to itself.")
            seen.add(ref)
            node = self.lookup(ref, where)
        return node

    def schema(
        self, node: Any, budget: _Budget, stack: tuple[str, ...] = (), depth: int = 0
    ) -> Any:
        """A JSON Schema with $refs inlined; a cycle or excess depth becomes an open object."""
        budget.spend(len(node) if isinstance(node, str) else 0)
        if isinstance(node, list):
            return [self.schema(item, budget, stack, depth) for item in node]
        if not isinstance(node, dict):
            return node
        if isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            name = ref.rsplit("/", 1)[-1]
            if ref in stack:
                return {"type": "object", "description": f"{name} (recursive; see above)"}
            if depth >= MAX_SCHEMA_DEPTH:
                return {"type": "object", "description": f"{name} (nested too deep to expand)"}
            target = self.lookup(ref, "schema")
            return self.schema(target, budget, (*stack, ref), depth + 1)
        if depth >= MAX_SCHEMA_DEPTH:
            return {"description": "(nested too deep to expand)"}
        expanded: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("description", "example", "examples", "default", "enum", "const"):
                budget.spend(_size(value))  # copied as is, but counted like the rest
                expanded[key] = value
            else:
                budget.spend(len(key))
                expanded[key] = self.schema(value, budget, stack, depth + 1)
        return expanded
