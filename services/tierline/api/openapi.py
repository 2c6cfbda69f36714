"""OpenAPI 3.1 built from the route table and the pydantic models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tierline.api.registry import Operation, query_spec

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


PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
IDEMPOTENCY_KEY_PARAM: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a retry with the same key and body returns the first answer, once done",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
IF_MATCH_PARAM: dict[str, Any] = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'the ETag ("<version>") the change was based on; 412 if it moved on',
    "schema": {"type": "string", "pattern": '^(\\*|(W/)?"?[0-9]{1,18}"?)$'},
}
HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {"description": 'the version, "<n>"', "schema": {"type": "string"}},
    "Location": {"description": "the created resource", "schema": {"type": "string"}},
    "RateLimit": {
        "description": "the key's remaining requests, IETF RateLimit header fields",
        "schema": {"type": "string"},
    },
    "RateLimit-Policy": {
        "description": "the key's quota and window, IETF RateLimit header fields",
        "schema": {"type": "string"},
    },
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
    "Allow": {"description": "the methods this path allows", "schema": {"type": "string"}},
    "Accept-Encoding": {"description": "identity", "schema": {"type": "string"}},
}
STATUS_TEXT = {
    400: "Malformed request (not JSON, bad header, nested too deep)",
    401: "No valid API key",
    403: "The key's role may not do this",
    404: "No such resource (or not visible to this key)",
    409: "Conflicts with the current state",
    412: "If-Match names another version",
    413: "Body too large",
    414: "URL too long",
    415: "Body not application/json, or encoded",
    422: "Invalid fields (see errors[].pointer)",
    429: "The key's rate limit is spent (see Retry-After)",
    431: "Headers too large",
    503: "PostgreSQL is unreachable (see Retry-After)",
}
ALL_ROLES = frozenset({"admin", "integration", "vendor", "viewer"})


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
    components = _unique_titles(dict(sorted(schemas.get("$defs", {}).items())))
    components["Problem"] = PROBLEM_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for op in sorted(operations, key=lambda o: (o.path, o.method)):
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
        links = _links(op, operations)
        if links:
            paths[op.path][op.method.lower()]["responses"][str(op.status)]["links"] = links
    document = {
        "openapi": "3.1.0",
        "info": {"title": "Tierline API", "version": version},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
    renamed: dict[str, Any] = _renamed_refs(document)
    return renamed


def _clean_name(name: str) -> str:
    """A component name a code generator can use as a class name (`X-Input` -> `XInput`)."""
    return name.replace("-", "")


def _unique_titles(components: dict[str, Any]) -> dict[str, Any]:
    """Each schema titled by its (unique) component name: generators name classes by title."""
    renamed: dict[str, Any] = {}
    for name, schema in components.items():
        clean = _clean_name(name)
        renamed[clean] = {**schema, "title": clean}
    return renamed


def _renamed_refs(node: Any) -> Any:
    """Every `$ref` pointing at the cleaned component names."""
    if isinstance(node, dict):
        return {
            key: (
                "#/components/schemas/" + _clean_name(value.rsplit("/", 1)[1])
                if key == "$ref" and isinstance(value, str)
                else _renamed_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renamed_refs(item) for item in node]
    return node


def _links(created: Operation, operations: list[Operation]) -> dict[str, Any]:
    """OpenAPI links from a create (POST on a collection, 201) to what acts on the new item.

    They let clients and stateful fuzzers (schemathesis) follow an id from the answer into
    the item's own operations: `POST /v1/issues` -> `POST /v1/issues/{issue_id}/acknowledge`.
    """
    if created.method != "POST" or created.status != 201 or _path_params(created.path):
        return {}
    links: dict[str, Any] = {}
    for op in sorted(operations, key=lambda o: (o.path, o.method)):
        params = _path_params(op.path)
        if len(params) == 1 and op.path.startswith(f"{created.path}/{{{params[0]}}}"):
            links[op.handler.__name__] = {
                "operationId": op.handler.__name__,
                "parameters": {params[0]: "$response.body#/id"},
            }
    return links


def _is_request(model: type[BaseModel], operations: list[Operation]) -> bool:
    return any(op.request is model for op in operations) and not any(
        op.response is model for op in operations
    )


def _statuses(op: Operation) -> set[int]:
    """Every problem status the operation can answer, from what it declares and accepts."""
    found = set(op.errors) | {400, 414, 431}
    if not op.public:
        found |= {401, 429, 503}
        if op.roles is not None and op.roles != ALL_ROLES:
            found.add(403)
    if _path_params(op.path):
        found.add(404)
    if op.query:
        found.add(422)
    if op.request is not None and op.method != "GET":
        found |= {413, 415, 422}
    if op.if_match:
        found |= {400, 412}
    found.discard(op.status)
    return found


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_params(op.path)
    ]
    for name, raw in op.query.items():
        spec = query_spec(raw)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": False,
            "description": spec.description,
            "schema": spec.schema,
        }
        if spec.comma_separated:
            param |= {"style": "form", "explode": False}
        params.append(param)
    if op.idempotent:
        params.append(IDEMPOTENCY_KEY_PARAM)
    if op.if_match:
        params.append(IF_MATCH_PARAM)
    return params


def _problem(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": STATUS_TEXT.get(status, "Problem")}
    answer["content"] = PROBLEM_CONTENT
    names = {429: ("Retry-After",), 503: ("Retry-After",), 415: ("Accept-Encoding",)}
    if status in names:
        answer["headers"] = {name: HEADERS[name] for name in names[status]}
    return answer


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.handler.__name__,
        "tags": [op.tag],
    }
    if op.request is not None and op.method != "GET":
        mode = "validation" if (op.request, "validation") in refs else "serialization"
        doc["requestBody"] = {
            # A command whose fields are all optional may be sent without a body at all.
            "required": any(f.is_required() for f in op.request.model_fields.values()),
            "content": {"application/json": {"schema": refs[(op.request, mode)]}},
        }
    params = _parameters(op)
    if params:
        doc["parameters"] = params
    ok: dict[str, Any] = {"description": "OK"}
    if op.response is not None:
        mode = "serialization" if (op.response, "serialization") in refs else "validation"
        ok["content"] = {"application/json": {"schema": refs[(op.response, mode)]}}
    ok_headers = [*op.headers, *(() if op.public else ("RateLimit", "RateLimit-Policy"))]
    if ok_headers:
        ok["headers"] = {name: HEADERS[name] for name in ok_headers}
    responses: dict[str, Any] = {str(op.status): ok}
    for status, description in op.also.items():
        responses[str(status)] = {**ok, "description": description}
    for status in sorted(_statuses(op)):
        responses.setdefault(str(status), _problem(status))
    doc["responses"] = dict(sorted(responses.items()))
    if not op.public:
        doc["security"] = [{"bearer": []}]
    return doc


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
