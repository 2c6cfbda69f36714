"""A corpus of hostile requests: each answers a 4xx problem and changes nothing.

Sent over a raw socket, so nothing a client library would refuse or repair gets in the way
(NUL bytes in headers, request lines past the parser's limit, bodies that lie about their
type). The layer under test is `tierline.api.hardening`; this corpus samples its classes of
input and is not the whole of them (schemathesis in tests/contract covers the rest).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.fixtures.api import create_vendor, open_issue
from tests.fixtures.stack import Stack, running_stack, stack_settings


@dataclass(frozen=True)
class Hostile:
    name: str
    method: str
    target: str
    body: bytes = b""
    content_type: str | None = "application/json"
    status: tuple[int, ...] = (400,)
    headers: dict[str, str] = field(default_factory=dict)
    raw_headers: bytes = b""


ISSUE = {"vendor_id": "acme-it", "title": "t", "category": "quality", "priority": "P3"}


def body(**overrides: object) -> bytes:
    return json.dumps({**ISSUE, **overrides}).encode()


DEEP = b"[" * 100_000 + b"]" * 100_000
NESTED_FIELD = b'{"vendor_id":"acme-it","title":' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}"
CORPUS = [
    Hostile("nul in a string field", "POST", "/v1/issues", body(title="a\x00b"), status=(422,)),
    Hostile("nul in a key", "POST", "/v1/issues", body(**{"ti\x00tle": "x"}), status=(422,)),
    Hostile(
        "lone surrogate",
        "POST",
        "/v1/issues",
        b'{"vendor_id":"acme-it","title":"\\ud800","category":"quality","priority":"P3"}',
        status=(422,),
    ),
    Hostile("nul in a query parameter", "GET", "/v1/issues?status=%00", status=(422,)),
    Hostile("nul in a query name", "GET", "/v1/issues?st%00atus=open", status=(422,)),
    Hostile("nul in a path parameter", "GET", "/v1/issues/%00", status=(404,)),
    Hostile("nul in a command path", "POST", "/v1/issues/a%00b/acknowledge", b"{}", status=(404,)),
    Hostile("nul in a vendor id", "GET", "/v1/vendors/x%00y", status=(404,)),
    Hostile("nul in a header", "GET", "/v1/vendors", raw_headers=b"X-Evil: a\x00b\r\n"),
    Hostile("deeply nested array", "POST", "/v1/issues", DEEP),
    Hostile("nested 40 deep in a field", "POST", "/v1/issues", NESTED_FIELD),
    Hostile("integer of 5000 digits", "POST", "/v1/issues", b'{"title":' + b"9" * 5000 + b"}"),
    Hostile("float overflow", "POST", "/v1/issues", body(priority=1e999), status=(422,)),
    Hostile("huge limit", "GET", "/v1/issues?limit=" + "9" * 400, status=(422,)),
    Hostile(
        "gzip body",
        "POST",
        "/v1/issues",
        body(),
        headers={"Content-Encoding": "gzip"},
        status=(415,),
    ),
    Hostile(
        "unknown encoding",
        "POST",
        "/v1/vendors",
        b"{}",
        headers={"Content-Encoding": "br, zstd"},
        status=(415,),
    ),
    Hostile("text/plain body", "POST", "/v1/issues", body(), "text/plain", (415,)),
    Hostile("form body", "POST", "/v1/issues", b"a=1", "application/x-www-form-urlencoded", (415,)),
    Hostile("no content type", "POST", "/v1/issues", body(), None, (415,)),
    Hostile("not json", "POST", "/v1/issues", b"{not json"),
    Hostile("json but not an object", "POST", "/v1/issues", b'"hello"', status=(422,)),
    Hostile("invalid utf-8", "POST", "/v1/issues", b'{"title":"\xff\xfe"}'),
    Hostile("body over the limit", "POST", "/v1/issues", b" " * 300_000, status=(413,)),
    Hostile("url over our limit", "GET", "/v1/issues?x=" + "a" * 9000, status=(414,)),
    Hostile("url over the parser's limit", "GET", "/v1/issues?x=" + "a" * 20000, status=(414,)),
    Hostile(
        "header over our limit", "GET", "/v1/vendors", headers={"X-Big": "a" * 9000}, status=(431,)
    ),
    Hostile(
        "header over the parser's limit",
        "GET",
        "/v1/vendors",
        headers={"X-Big": "a" * 20000},
        status=(431,),
    ),
    Hostile(
        "idempotency key of non-ascii",
        "POST",
        "/v1/vendors",
        b'{"id":"x","name":"x"}',
        headers={"Idempotency-Key": "kéy"},
    ),
    Hostile(
        "idempotency key too long",
        "POST",
        "/v1/vendors",
        b'{"id":"x","name":"x"}',
        headers={"Idempotency-Key": "k" * 256},
    ),
    Hostile("wrong method on a collection", "PUT", "/v1/issues", b"{}", status=(405,)),
    Hostile("wrong method on an item", "DELETE", "/v1/vendors/acme-it", status=(405,)),
    Hostile("unknown method", "BREW", "/v1/issues", status=(405, 400)),
]


@pytest.fixture
async def api(database_url: str, tansu: str, topic: str) -> AsyncIterator[Stack]:
    async with running_stack(stack_settings(database_url, tansu, topic), roles=["api"]) as s:
        async with s.client() as http:
            await create_vendor(http)
            await open_issue(http)
        yield s


async def send_raw(api_url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; the status, headers and body of the answer."""
    parts = urlsplit(api_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        payload = await reader.readexactly(length) if length else b""
        return status, headers, payload
    finally:
        writer.close()


def raw_request(case: Hostile, key: str) -> bytes:
    lines = [f"{case.method} {case.target} HTTP/1.1", "Host: test", f"Authorization: Bearer {key}"]
    if case.content_type is not None and case.body:
        lines.append(f"Content-Type: {case.content_type}")
    lines += [f"{k}: {v}" for k, v in case.headers.items()]
    lines += [f"Content-Length: {len(case.body)}", "Connection: close"]
    head = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    return head + case.raw_headers + b"\r\n" + case.body


async def _state(database_url: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM vendors),"
            " (SELECT count(*) FROM idempotency_keys)"
        )
        assert row is not None
        return row[0], row[1], row[2]
    finally:
        await conn.close()


async def test_every_hostile_request_is_a_problem_and_changes_nothing(api: Stack) -> None:
    before = await _state(api.settings.database_url)
    failures = []
    for case in CORPUS:
        status, headers, payload = await send_raw(api.api_url, raw_request(case, api.admin_key))
        problem = None
        if headers.get("content-type", "").startswith("application/problem+json"):
            problem = json.loads(payload)
        if status not in case.status or problem is None or problem.get("status") != status:
            failures.append(
                f"{case.name}: {status} {headers.get('content-type')} {payload[:200]!r}"
            )
        elif status == 405 and "allow" not in headers:
            failures.append(f"{case.name}: 405 without Allow")
        elif (
            status == 415
            and case.headers.get("Content-Encoding")
            and headers.get("accept-encoding") != "identity"
        ):
            failures.append(f"{case.name}: 415 without Accept-Encoding: identity")
    assert not failures, "\n".join(failures)
    assert await _state(api.settings.database_url) == before


async def test_validation_problems_point_at_the_field(api: Stack) -> None:
    status, _, payload = await send_raw(api.api_url, raw_request(CORPUS[0], api.admin_key))
    assert status == 422
    assert json.loads(payload)["errors"][0]["pointer"] == "#/title"
    query = Hostile("q", "GET", "/v1/issues?status=%00")
    status, _, payload = await send_raw(api.api_url, raw_request(query, api.admin_key))
    assert json.loads(payload)["errors"][0]["pointer"] == "#/query/status"


async def test_405_names_the_allowed_methods(api: Stack) -> None:
    status, headers, _ = await send_raw(
        api.api_url, raw_request(Hostile("m", "DELETE", "/v1/issues"), api.admin_key)
    )
    assert status == 405
    assert set(headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}


async def test_an_empty_command_body_needs_no_content_type(api: Stack) -> None:
    async with api.client() as http:
        issue = await open_issue(http, external_ref="jira:EMPTY-1")
    case = Hostile("empty", "POST", f"/v1/issues/{issue['id']}/acknowledge", b"", None)
    status, _, payload = await send_raw(api.api_url, raw_request(case, api.admin_key))
    assert status == 200, payload
