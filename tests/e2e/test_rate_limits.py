"""Per-key rate limits over HTTP: headers on every answer, 429 problems past the burst."""

from __future__ import annotations

import asyncio

from tests.fixtures.stack import running_stack, stack_settings


async def test_a_runaway_key_gets_429_and_others_carry_on(
    database_url: str, tansu: str, topic: str
) -> None:
    settings = stack_settings(database_url, tansu, topic, rate_limit_rps=1.0, rate_limit_burst=5)
    async with running_stack(settings, roles=["api"]) as api:
        other = await api.new_key("viewer")
        async with api.client() as http, api.client(other) as calm:
            statuses, headers = [], []
            for _ in range(8):
                async with http.get("/v1/vendors") as resp:
                    statuses.append(resp.status)
                    headers.append(dict(resp.headers))
                    if resp.status == 429:
                        problem = await resp.json(content_type=None)
            assert statuses[:5] == [200] * 5 and 429 in statuses[5:], statuses
            assert headers[0]["RateLimit-Policy"] == '"per-key";q=5;w=5'
            assert headers[0]["RateLimit"].startswith('"per-key";r=4;')
            refused = headers[statuses.index(429)]
            assert int(refused["Retry-After"]) >= 1
            assert refused["Content-Type"].startswith("application/problem+json")
            assert problem["type"].endswith("/rate-limited")
            async with calm.get("/v1/vendors") as resp:
                assert resp.status == 200
            await asyncio.sleep(int(refused["Retry-After"]))
            async with http.get("/v1/vendors") as resp:
                assert resp.status == 200
