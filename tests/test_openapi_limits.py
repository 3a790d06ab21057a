"""$ref expansion is bounded by size, not only by the number of parts."""

from __future__ import annotations

import json

import pytest

from kindrobots.errors import BadUserInput
from kindrobots.resolvers import openapi


def _document(description_chars: int, references: int, operations: int) -> str:
    root = {f"p{i}": {"$ref": "#/components/schemas/Big"} for i in range(references)}
    return json.dumps(
        {
            "openapi": "3.0.3",
            "info": {"title": "bomb", "version": "1"},
            "paths": {
                f"/r{i}": {
                    "post": {
                        "requestBody": {
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Root"}
                                }
                            }
                        }
                    }
                }
                for i in range(operations)
            },
            "components": {
                "schemas": {
                    "Root": {"type": "object", "properties": root},
                    "Big": {"type": "string", "description": "x" * description_chars},
                }
            },
        }
    )


def test_one_large_schema_referenced_everywhere_is_refused() -> None:
    text = _document(description_chars=500_000, references=600, operations=200)
    assert len(text) < openapi.MAX_DOCUMENT_BYTES
    with pytest.raises(BadUserInput, match="expands to more than"):
        openapi.parse(text)


def test_many_operations_that_each_fit_can_still_exceed_the_document_budget() -> None:
    per_operation = openapi.MAX_SCHEMA_CHARS // 2
    operations = openapi.MAX_OUTPUT_CHARS // per_operation + 1
    text = _document(description_chars=per_operation - 100, references=1, operations=operations)
    with pytest.raises(BadUserInput, match="The operations expand"):
        openapi.parse(text)


def test_ordinary_reuse_is_fine() -> None:
    document = openapi.parse(_document(description_chars=200, references=20, operations=10))
    assert len(document.operations) == 10
