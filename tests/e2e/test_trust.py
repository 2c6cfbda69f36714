"""Trust findings of the outside trial, each as a regression test over the HTTP API.

- an external ref belongs to one vendor: another vendor's ref is a 409 that reveals nothing;
- the last active admin key cannot be revoked (409 `last-admin-key`), even by two at once;
- a database that does not answer gives 503 problems with `Retry-After`, and recovery needs
  no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from tests.fixtures.api import create_vendor, open_issue
from tests.fixtures.stack import Stack, running_stack, stack_settings

ISSUE = {"title": "Weekly report missing", "category": "communication", "priority": "P3"}


@pytest.fixture
async def api(database_url: str, tansu: str, topic: str) -> AsyncIterator[Stack]:
    """The API role alone: these findings are all on the write side."""
    async with running_stack(stack_settings(database_url, tansu, topic), roles=["api"]) as s:
        async with s.client() as http:
            await create_vendor(http, id="globex", name="Globex Outsourcing")
            await create_vendor(http, id="initech", name="Initech Services")
        yield s


async def post(
    http: aiohttp.ClientSession, path: str, body: dict[str, Any]
) -> tuple[int, str, dict[str, str]]:
    async with http.post(path, json=body) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def assert_reveals_nothing(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked in {text}"


@pytest.mark.parametrize("caller", ["vendor", "admin", "integration"])
async def test_external_ref_of_another_vendor_is_a_conflict_that_reveals_nothing(
    api: Stack, caller: str
) -> None:
    async with api.client() as admin:
        globex = await open_issue(admin, "globex", external_ref="demo:3", title="Globex secret")
    key = await api.new_key("vendor", "initech") if caller == "vendor" else None
    key = key or (await api.new_key("integration") if caller == "integration" else None)
    async with api.client(key) as http:
        status, text, headers = await post(
            http, "/v1/issues", {**ISSUE, "vendor_id": "initech", "external_ref": "demo:3"}
        )
    assert status == 409, text
    body = json.loads(text)
    assert body["type"].endswith("/external-ref-conflict")
    assert headers["Content-Type"].startswith("application/problem+json")
    assert_reveals_nothing(text + json.dumps(headers), globex["id"], "globex", "Globex")
    # Nothing was opened for initech either.
    async with api.client() as admin, admin.get(f"/v1/issues/{globex['id']}") as resp:
        assert (await resp.json())["version"] == 1


async def test_conflict_answer_is_the_same_whoever_owns_the_ref(api: Stack) -> None:
    """To a vendor key, another vendor's ref must look like any conflict: one fixed body."""
    async with api.client() as admin:
        await create_vendor(admin, id="hooli", name="Hooli")
        await open_issue(admin, "globex", external_ref="jira:GOV-1")
        await open_issue(admin, "hooli", external_ref="jira:GOV-2")
    key = await api.new_key("vendor", "initech")
    answers = []
    async with api.client(key) as http:
        for ref in ("jira:GOV-1", "jira:GOV-2"):
            status, text, _ = await post(
                http, "/v1/issues", {**ISSUE, "vendor_id": "initech", "external_ref": ref}
            )
            body = json.loads(text)
            answers.append((status, {k: v for k, v in body.items() if k != "instance"}))
    assert answers[0] == answers[1]


async def test_same_vendor_ref_still_returns_the_existing_issue(api: Stack) -> None:
    key = await api.new_key("vendor", "initech")
    async with api.client(key) as http:
        first = await open_issue(http, "initech", external_ref="jira:INI-9")
        status, text, _ = await post(
            http, "/v1/issues", {**ISSUE, "vendor_id": "initech", "external_ref": "jira:INI-9"}
        )
    assert status == 200
    assert json.loads(text)["id"] == first["id"]


async def test_two_vendors_racing_for_one_ref_get_one_issue_and_one_conflict(api: Stack) -> None:
    keys = [await api.new_key("vendor", v) for v in ("globex", "initech")]
    sessions = [api.client(k) for k in keys]
    try:
        for round_ in range(5):
            ref = f"race:{round_}"
            answers = await asyncio.gather(
                *(
                    post(s, "/v1/issues", {**ISSUE, "vendor_id": v, "external_ref": ref})
                    for s, v in zip(sessions, ("globex", "initech"), strict=True)
                )
            )
            assert sorted(a[0] for a in answers) == [201, 409], answers
    finally:
        for s in sessions:
            await s.close()


async def _admin_key_ids(http: aiohttp.ClientSession) -> list[str]:
    async with http.get("/v1/api-keys") as resp:
        items = (await resp.json())["items"]
    return [k["id"] for k in items if k["role"] == "admin" and k.get("revoked_at") is None]


async def test_the_last_active_admin_key_cannot_be_revoked(api: Stack) -> None:
    async with api.client() as http:
        (only,) = await _admin_key_ids(http)
        async with http.delete(f"/v1/api-keys/{only}") as resp:
            assert resp.status == 409
            body = await resp.json(content_type=None)
            assert body["type"].endswith("/last-admin-key")
            assert resp.headers["Content-Type"].startswith("application/problem+json")
        # Still usable: the refusal changed nothing.
        assert await _admin_key_ids(http) == [only]


async def test_two_admins_revoking_each_other_at_once_leave_one(api: Stack) -> None:
    second = await api.new_key("admin")
    async with api.client() as first_http, api.client(second) as second_http:
        first_id, second_id = await _admin_key_ids(first_http)

        async def revoke(http: aiohttp.ClientSession, key_id: str) -> int:
            async with http.delete(f"/v1/api-keys/{key_id}") as resp:
                return resp.status

        # Each revokes the other: whichever goes second finds itself the last admin (409), or,
        # if its own key is already gone, is not let in at all (401). Never both revoked.
        statuses = await asyncio.gather(
            revoke(first_http, second_id), revoke(second_http, first_id)
        )
        assert statuses.count(204) == 1, statuses
        assert set(statuses) <= {204, 401, 409}, statuses
        survivor = first_http if statuses[0] == 204 else second_http
        assert len(await _admin_key_ids(survivor)) == 1


class _Proxy:
    """A TCP proxy between the API and PostgreSQL that a test can cut and restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop every open one, like a server that went away."""
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._pipes |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._pipes.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


async def test_database_outage_answers_503_then_recovers_without_restart(
    database_url: str, tansu: str, topic: str
) -> None:
    parts = urlsplit(database_url)
    proxy = _Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    via_proxy = urlunsplit(
        parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}"))
    )
    settings = stack_settings(via_proxy, tansu, topic)
    try:
        async with running_stack(settings, roles=["api"]) as api, api.client() as http:
            await create_vendor(http, id="globex", name="Globex")
            await open_issue(http, "globex")
            await proxy.cut()
            for _ in range(3):
                status, text, headers = await post(
                    http, "/v1/issues", {**ISSUE, "vendor_id": "globex"}
                )
                assert status == 503, text
                assert json.loads(text)["type"].endswith("/unavailable")
                assert int(headers["Retry-After"]) > 0
                async with http.get("/v1/vendors/globex") as resp:
                    assert resp.status == 503
            await proxy.start()  # the database is back, on the same address
            for _ in range(100):
                status, text, _ = await post(http, "/v1/issues", {**ISSUE, "vendor_id": "globex"})
                if status == 201:
                    break
                assert status == 503, text
                await asyncio.sleep(0.1)
            assert status == 201, text
    finally:
        if proxy.server is not None:
            proxy.server.close()
