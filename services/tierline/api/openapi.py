"""OpenAPI 3.1 built from the route table and the pydantic models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tierline.api.registry import Operation

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def build_openapi(operations: list[Operation], version: str) -> dict[str, Any]:
    """The whole document, deterministic for a given code base."""
    models: set[type[BaseModel]] = set()
    for op in operations:
        models.update(m for m in (op.request, op.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    pairs: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m, "validation" if _is_request(m, operations) else "serialization") for m in ordered
    ]
    refs, schemas = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    components = dict(sorted(schemas.get("$defs", {}).items()))
    components["Problem"] = PROBLEM_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for op in sorted(operations, key=lambda o: (o.path, o.method)):
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tierline API", "version": version},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }


def _is_request(model: type[BaseModel], operations: list[Operation]) -> bool:
    return any(op.request is model for op in operations) and not any(
        op.response is model for op in operations
    )


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.handler.__name__,
        "tags": [op.tag],
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_params(op.path)
    ]
    params += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": text,
            "schema": {"type": "string"},
        }
        for name, text in op.query.items()
    ]
    if op.request is not None and op.method != "GET":
        params += [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            }
        ]
        mode = "validation" if (op.request, "validation") in refs else "serialization"
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(op.request, mode)]}},
        }
    if params:
        doc["parameters"] = params
    ok: dict[str, Any] = {"description": "OK"}
    if op.response is not None:
        mode = "serialization" if (op.response, "serialization") in refs else "validation"
        ok["content"] = {"application/json": {"schema": refs[(op.response, mode)]}}
    responses: dict[str, Any] = {str(op.status): ok}
    for status in op.errors:
        responses[str(status)] = {
            "description": "Problem",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
    doc["responses"] = responses
    if not op.public:
        doc["security"] = [{"bearer": []}]
    return doc


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
