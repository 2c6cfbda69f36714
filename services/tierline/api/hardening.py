"""One input-hardening layer for every route: what the API refuses before any handler runs.

Each refusal is an RFC 9457 problem with a pointer to the offending part, and nothing reaches
PostgreSQL that it cannot store (NUL characters, lone surrogates). The limits:

- request line and each header: the HTTP parser refuses beyond `PARSER_LIMIT` bytes; this layer
  answers 414 for a URL over `MAX_URL_BYTES` and 431 for a header over `MAX_HEADER_BYTES` or
  all headers over `MAX_HEADERS_BYTES`;
- bodies: `application/json` (or a `+json` type) only, else 415; no `Content-Encoding` but
  `identity`, else 415 with `Accept-Encoding: identity`; size per `TIERLINE_API_MAX_BODY_BYTES`
  (413); JSON nested at most `MAX_JSON_DEPTH` deep (400); numbers Python can parse (400);
- strings in bodies, query and path parameters: no NUL, no lone surrogates (422, or 404 for a
  path parameter, since no object can have such an id).

Errors the HTTP parser itself finds (bad request line, header with a control character, line
over the parser limit) are rendered as problems too, by `ProblemRequestHandler`.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import structlog
from aiohttp import http_exceptions, web, web_protocol, web_server

from tierline.api.problems import Problem, problem_response

log = structlog.get_logger(__name__)

MAX_URL_BYTES = 8192
MAX_HEADER_BYTES = 8192
MAX_HEADERS_BYTES = 32768
# What aiohttp's parser accepts, above our own limits so that ours answer with a problem.
PARSER_LIMIT = 16384
MAX_JSON_DEPTH = 32
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
REQUEST_LINE = re.compile(rb"[A-Z]+ \S")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def unstorable(text: str) -> str | None:
    """Why PostgreSQL could not store this text (NUL, lone surrogate), or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _pointer(path: list[str | int]) -> str:
    escaped = (str(p).replace("~", "~0").replace("/", "~1") for p in path)
    return "#/" + "/".join(escaped)


def check_json(value: Any) -> None:
    """Depth and storability of a parsed JSON document, walked iteratively."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            raise Problem(
                400,
                "malformed-request",
                f"JSON is nested deeper than {MAX_JSON_DEPTH} levels",
                errors=[{"pointer": _pointer(path), "detail": "nested too deeply"}],
            )
        if isinstance(node, str):
            _check_text(node, path)
        elif isinstance(node, dict):
            for key, item in node.items():
                _check_text(key, [*path, key])
                stack.append((item, [*path, key]))
        elif isinstance(node, list):
            stack.extend((item, [*path, i]) for i, item in enumerate(node))


def _check_text(text: str, path: list[str | int]) -> None:
    reason = unstorable(text)
    if reason is not None:
        raise Problem(
            422,
            "validation-failed",
            f"a string {reason}",
            errors=[
                {
                    "pointer": _pointer(path),
                    "field": ".".join(str(p) for p in path),
                    "detail": reason,
                    "code": "unstorable_string",
                }
            ],
        )


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, refused as a problem when it is not JSON we can keep."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise Problem(
            400, "malformed-request", f"JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, "malformed-request", f"body is not valid JSON: {exc}") from None
    except ValueError as exc:  # integers beyond Python's digit limit
        raise Problem(400, "malformed-request", f"body has a number out of range: {exc}") from None
    check_json(value)
    return value


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def check_request(request: web.Request) -> None:
    """Everything about a request but its body: URL, headers, parameters, media type."""
    check_request_head(request)
    check_body_encoding(request)
    if (
        request.method in BODY_METHODS
        and request.body_exists
        and not _is_json(request.content_type)
    ):
        raise Problem(
            415,
            "unsupported-media-type",
            f"send the body as application/json, not {request.content_type[:60]!r}",
        )


def check_request_head(request: web.Request) -> None:
    """URL, headers, path and query parameters (the part every route shares, the board too)."""
    if len(request.raw_path.encode("utf-8", "surrogateescape")) > MAX_URL_BYTES:
        raise Problem(414, "uri-too-long", f"the URL is longer than {MAX_URL_BYTES} bytes")
    total = 0
    for name, value in request.raw_headers:
        size = len(name) + len(value)
        total += size
        if size > MAX_HEADER_BYTES or total > MAX_HEADERS_BYTES:
            raise Problem(
                431,
                "headers-too-large",
                f"each header is limited to {MAX_HEADER_BYTES} bytes and all headers together "
                f"to {MAX_HEADERS_BYTES}",
                errors=[{"pointer": f"#/headers/{name.decode('latin-1')}", "detail": "too large"}],
            )
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise Problem(
            400,
            "malformed-request",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            errors=[{"pointer": "#/headers/Idempotency-Key", "detail": "invalid"}],
        )
    for param, text in request.match_info.items():
        if unstorable(text) is not None:
            raise Problem(404, "not-found", f"no such resource ({param})")
    for param, text in request.query.items():
        reason = unstorable(text) or unstorable(param)
        if reason is not None:
            name_shown = param.encode("utf-8", "replace").decode()[:60]
            raise Problem(
                422,
                "validation-failed",
                f"query parameter {name_shown!r} {reason}",
                errors=[
                    {"pointer": f"#/query/{name_shown}", "field": name_shown, "detail": reason}
                ],
            )


def check_body_encoding(request: web.Request) -> None:
    """A body, if any, must come unencoded (no gzip bombs, nothing to decompress)."""
    if request.method in BODY_METHODS and request.body_exists:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise Problem(
                415,
                "unsupported-content-encoding",
                f"Content-Encoding {encoding[:40]!r} is not supported; send the body unencoded",
                headers={"Accept-Encoding": "identity"},
            )


def _parser_problem(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """Status, kind and fixed detail for an error the HTTP parser raised."""
    if isinstance(exc, http_exceptions.LineTooLong):
        # The exception holds the line's first bytes: a request line starts "METHOD target".
        line = exc.args[0] if exc.args else b""
        head = line.encode("latin-1", "replace") if isinstance(line, str) else bytes(line)
        if head.startswith(b"/") or REQUEST_LINE.match(head):
            return 414, "uri-too-long", "the request line is too long"
        return 431, "headers-too-large", "a header line is too long"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return 400, "malformed-request", "the request method is not valid HTTP"
    if isinstance(exc, http_exceptions.HttpProcessingError) or status == 400:
        return 400, "malformed-request", "the request is not valid HTTP"
    if status == 413:
        return 413, "payload-too-large", "the request is too large"
    return status, "internal-error", "an internal error occurred"


class ProblemRequestHandler(web_protocol.RequestHandler):
    """aiohttp's protocol handler, rendering its own errors as problem details."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Close as aiohttp does, but answer with problem+json; hostile input is no ERROR."""
        if request.writer.output_size > 0:  # a response is under way: nothing else can go
            raise ConnectionError("response already started; cannot send a problem")
        code, kind, detail = _parser_problem(exc, status)
        if code >= 500:
            log.error("http_internal_error", exc_info=exc)
        else:
            log.info("http_request_refused", status=code, kind=kind, error=type(exc).__name__)
        response = problem_response(code, kind, detail, "")
        response.force_close()
        return response


class ProblemServer(web_server.Server):
    """A low-level server whose connections use `ProblemRequestHandler`."""

    def __call__(self) -> web_protocol.RequestHandler:
        loop: asyncio.AbstractEventLoop = self._loop
        kwargs: dict[str, Any] = self._kwargs
        return ProblemRequestHandler(self, loop=loop, **kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner serving the app through `ProblemServer`."""

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = ProblemServer
        return server


HANDLER_ARGS: dict[str, Any] = {"max_line_size": PARSER_LIMIT, "max_field_size": PARSER_LIMIT}
