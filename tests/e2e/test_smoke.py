"""The stack starts and answers health, readiness and OpenAPI."""

from __future__ import annotations

from tests.fixtures.stack import Stack


async def test_health_ready_openapi(stack: Stack) -> None:
    async with stack.client() as http:
        async with http.get("/healthz") as resp:
            assert resp.status == 200
        async with http.get("/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body["checks"] == {"postgres": "ok", "kafka": "ok"}
        async with http.get("/openapi.json") as resp:
            doc = await resp.json()
            assert doc["openapi"].startswith("3.1")
            assert "/v1/issues/{issue_id}/escalate" in doc["paths"]
