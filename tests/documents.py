"""OpenAPI documents that tests feed to createManifest: the smallest valid ones."""

from __future__ import annotations

import json
from typing import Any


def openapi_document(
    paths: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    *,
    version: str = "3.0.3",
    title: str = "Test API",
    api_version: str = "1.0.0",
) -> dict[str, Any]:
    """A minimal valid OpenAPI document (one ``ping`` operation unless ``paths``),
    with ``extra`` top-level keys."""
    return {
        "openapi": version,
        "info": {"title": title, "version": api_version},
        "paths": {"/ping": {"get": {"operationId": "ping", "responses": {}}}}
        if paths is None
        else paths,
        **(extra or {}),
    }


def one_operation(operation_id: str) -> str:
    """An OpenAPI 3.1 document, as JSON text, with one GET operation named ``operation_id``."""
    paths = {f"/{operation_id}": {"get": {"operationId": operation_id}}}
    return json.dumps(openapi_document(paths, version="3.1.0", title=operation_id, api_version="1"))
