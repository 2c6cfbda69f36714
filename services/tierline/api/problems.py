"""RFC 9457 problem details with a stable `type` URI per kind of error."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

TYPE_BASE = "https://tierline.dev/problems/"
PROBLEM_JSON = "application/problem+json"

TITLES = {
    "malformed-request": "Malformed request",
    "unauthenticated": "Authentication required",
    "forbidden": "Forbidden",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "invalid-transition": "Invalid transition",
    "duplicate": "Already exists",
    "precondition-failed": "Precondition failed",
    "payload-too-large": "Payload too large",
    "unsupported-media-type": "Unsupported media type",
    "validation-failed": "Validation failed",
    "idempotency-key-reused": "Idempotency key reused with a different request",
    "unknown-vendor": "Unknown vendor",
    "external-ref-conflict": "External reference belongs to another vendor",
    "last-admin-key": "The last active admin key cannot be revoked",
    "internal-error": "Internal server error",
    "unavailable": "Service unavailable",
    "unsupported-content-encoding": "Unsupported content encoding",
    "uri-too-long": "URI too long",
    "headers-too-large": "Request header fields too large",
    "rate-limited": "Too many requests",
    "inbound-unmappable": "The delivery could not be mapped to a command",
}


class Problem(Exception):
    """Raise anywhere in a handler; the middleware renders it."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra
        super().__init__(detail or kind)


def problem_response(
    status: int,
    kind: str,
    detail: str | None,
    instance: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The problem+json response for an error."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind,
        "title": TITLES.get(kind, kind.replace("-", " ").capitalize()),
        "status": status,
        "instance": instance,
    }
    if detail:
        body["detail"] = detail
    if extra:
        body.update(extra)
    if not instance:
        del body["instance"]
    return web.Response(
        status=status, text=json.dumps(body), content_type=PROBLEM_JSON, headers=headers
    )
