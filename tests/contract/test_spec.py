"""The checked-in OpenAPI document is valid OpenAPI 3.1 and says what clients need."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

SPEC = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "openapi.json").read_text())
OPERATIONS = [
    (path, method, op) for path, methods in SPEC["paths"].items() for method, op in methods.items()
]


def test_the_document_is_valid_openapi() -> None:
    validate(SPEC)


def test_schema_titles_are_unique_so_generated_models_keep_their_names() -> None:
    titles = [schema.get("title", name) for name, schema in SPEC["components"]["schemas"].items()]
    assert len(titles) == len(set(titles))


def test_authenticated_operations_document_the_errors_every_request_can_meet() -> None:
    for path, method, op in OPERATIONS:
        if "security" not in op:
            continue
        for status in ("400", "401", "429", "503"):
            assert status in op["responses"], (method, path, status)
        ok = next(r for s, r in op["responses"].items() if s.startswith("2"))
        assert {"RateLimit", "RateLimit-Policy"} <= set(ok.get("headers", {})), (method, path)
        if "requestBody" in op:
            assert {"413", "415", "422"} <= set(op["responses"]), (method, path)


def test_query_parameters_are_typed() -> None:
    typed = {"limit": "integer", "tier": "array", "breached": "boolean"}
    seen = set()
    for _path, _method, op in OPERATIONS:
        for param in op.get("parameters", []):
            if param["in"] == "query" and param["name"] in typed:
                assert param["schema"]["type"] == typed[param["name"]], param
                seen.add(param["name"])
    assert seen == set(typed)


def test_concurrency_headers_are_documented_where_they_are_honoured() -> None:
    commands = [op for path, _m, op in OPERATIONS if path.startswith("/v1/issues/{issue_id}/")]
    for op in [*commands, SPEC["paths"]["/v1/governance"]["put"]]:
        names = {p["name"] for p in op.get("parameters", [])}
        if op["operationId"] == "issue_events":
            continue
        assert "If-Match" in names, op["operationId"]
        assert "412" in op["responses"]
    key = next(
        p
        for p in SPEC["paths"]["/v1/issues"]["post"]["parameters"]
        if p["name"] == "Idempotency-Key"
    )
    assert key["schema"]["maxLength"] == 255 and key["schema"]["minLength"] == 1
    assert "200" in SPEC["paths"]["/v1/issues"]["post"]["responses"]
