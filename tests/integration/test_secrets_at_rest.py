"""Webhook signing secrets are encrypted at rest (ADR 0007): no `whsec_` in a dump of the
database while deliveries stay verifiable; plaintext rows from before are sealed; rotation
re-seals under the newest key; the roles that need the key refuse to start without it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.fixtures.api import add_vendor, call
from tests.fixtures.stack import TEST_SECRET_KEY, Stack, running_stack, stack_settings
from tests.integration.test_webhooks import (
    Receiver,
    open_issue,
    receiver_running,
    subscribe,
    webhook_stack,
)
from tierline.config import Settings
from tierline.roles import run_roles
from tierline.secretbox import SecretBox, SecretKeyError, generate_key
from tierline.secrets_command import rotate_secrets
from tierline.webhooks.signing import new_secret
from tierline.webhooks.subscriptions import insert_subscription, open_secret, rotate_secret

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

PG_DUMP = Path("/usr/lib/postgresql/15/bin/pg_dump")
TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
STORED = "SELECT secret, previous_secret FROM webhook_subscriptions WHERE id = $1"
INSERT_PLAINTEXT = """
INSERT INTO webhook_subscriptions
    (id, url, event_types, vendor_id, secret, previous_secret, previous_secret_expires_at)
VALUES ($1, $2, '{*}', $3, $4, $5, now() + interval '1 hour')
"""


async def database_text(database_url: str) -> str:
    """Every row of every table as text (all columns, whatever their type)."""
    conn = await asyncpg.connect(database_url)
    try:
        parts = []
        for (table,) in await conn.fetch(TABLES):
            rows = await conn.fetchval(f"SELECT string_agg(t::text, E'\\n') FROM \"{table}\" t")
            parts.append(f"-- {table}\n{rows or ''}")
        return "\n".join(parts)
    finally:
        await conn.close()


def pg_dump(database_url: str) -> str:
    """A full pg_dump of the test database (schema and data)."""
    done = subprocess.run(
        [str(PG_DUMP), "--no-owner", database_url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def dumps(database_url: str) -> list[str]:
    """What an attacker with a backup would read: pg_dump (when this PostgreSQL's client is
    installed) and every row of every table."""
    found = [await database_text(database_url)]
    if PG_DUMP.exists():  # noqa: ASYNC240
        found.append(await asyncio.to_thread(pg_dump, database_url))
    return found


def assert_no_secrets(texts: list[str], secrets: list[str]) -> None:
    for text in texts:
        assert "webhook_subscriptions" in text, "the dump covers the subscriptions table"
        assert "whsec_" not in text
        assert TEST_SECRET_KEY not in text
        for secret in secrets:
            # The key material alone, without the prefix, must not be there either.
            assert secret.removeprefix("whsec_") not in text


async def test_no_plaintext_secret_in_a_dump_while_deliveries_verify(
    pg_admin_dsn: str, tansu: str
) -> None:
    async with webhook_stack(pg_admin_dsn, tansu) as (stack, receiver):
        async with stack.client() as http:
            vendor = await add_vendor(http)
            hook = await subscribe(http, receiver.url("at-rest"), vendor_id=vendor)
            other = await subscribe(http, receiver.url("at-rest-other"), vendor_id=vendor)
            issue_id = await open_issue(http, vendor)
            (first,) = await receiver.wait_for("at-rest", 1)
            assert first.verify(hook["secret"])["subject"] == issue_id
            rotated = await call(http, "POST", f"/v1/webhooks/{hook['id']}/rotate-secret", 200)
            await call(http, "POST", f"/v1/issues/{issue_id}/acknowledge", 200, {})
            second = (await receiver.wait_for("at-rest", 2))[1]
            # Signed with both the new secret and, during the overlap, the old one.
            assert second.verify(rotated["secret"])["type"].endswith(".acknowledged.v1")
            assert second.verify(hook["secret"])["id"] == second.webhook_id
            (await receiver.wait_for("at-rest-other", 2))[1].verify(other["secret"])
        secrets = [hook["secret"], rotated["secret"], other["secret"]]
        texts = await dumps(stack.settings.database_url)
    assert_no_secrets(texts, secrets)


async def test_no_plaintext_secret_in_idempotency_records(stack: Stack) -> None:
    """The stored answer of an idempotent create is sealed, and a retry still shows the secret."""
    request = {"url": "https://93.184.216.34/hook", "event_types": ["*"]}
    answers = []
    async with stack.client() as http:
        for _ in range(2):
            async with http.post(
                "/v1/webhooks", json=request, headers={"Idempotency-Key": "create-at-rest"}
            ) as resp:
                assert resp.status == 201, await resp.text()
                answers.append(await resp.json())
    assert answers[0] == answers[1] and answers[0]["secret"].startswith("whsec_")
    assert_no_secrets([await database_text(stack.settings.database_url)], [answers[0]["secret"]])


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiver_running() as running:
        yield running


async def test_plaintext_rows_are_sealed_at_start_and_when_the_sender_meets_them(
    database_url: str, tansu: str, topic: str, receiver: Receiver
) -> None:
    """Rows from before encryption (or from an older instance still running) keep signing and
    do not stay plaintext."""
    conn = await asyncpg.connect(database_url)
    try:
        old_id, old_secret, old_previous = uuid.uuid4(), new_secret(), new_secret()
        await conn.execute(
            INSERT_PLAINTEXT, old_id, receiver.url("old"), None, old_secret, old_previous
        )
        settings = stack_settings(database_url, tansu, topic, webhooks_allow_private_targets=True)
        async with running_stack(settings, ["api", "relay", "webhooks"]) as stack:
            sealed, previous = await conn.fetchrow(STORED, old_id)
            assert not sealed.startswith("whsec_") and not previous.startswith("whsec_")
            box = SecretBox.from_setting(TEST_SECRET_KEY)
            assert (open_secret(sealed, box), open_secret(previous, box)) == (
                old_secret,
                old_previous,
            )
            # An older instance writes plaintext after the start: the sender seals it on claim.
            late_id, late_secret = uuid.uuid4(), new_secret()
            await conn.execute(
                INSERT_PLAINTEXT, late_id, receiver.url("late"), None, late_secret, None
            )
            async with stack.client() as http:
                await open_issue(http, await add_vendor(http))
            (old,) = await receiver.wait_for("old", 1)
            (late,) = await receiver.wait_for("late", 1)
            old.verify(old_secret)
            old.verify(old_previous)
            late.verify(late_secret)
            for _ in range(100):
                if not (await conn.fetchval(STORED, late_id)).startswith("whsec_"):
                    break
                await asyncio.sleep(0.05)
            assert open_secret(await conn.fetchval(STORED, late_id), box) == late_secret
        assert_no_secrets([await database_text(database_url)], [])
    finally:
        await conn.close()


async def test_rotate_command_reseals_every_row_under_the_newest_key(database_url: str) -> None:
    old_key, new_key = generate_key(), generate_key()
    old_box = SecretBox([old_key])
    conn = await asyncpg.connect(database_url)
    try:
        plain: dict[uuid.UUID, tuple[str, str | None]] = {}
        for n in range(5):
            secret = new_secret()
            sub = await insert_subscription(
                conn,
                url=f"https://hooks.example.com/{n}",
                event_types=["*"],
                vendor_id=None,
                description=None,
                secret=secret,
                box=old_box,
            )
            plain[sub.id] = (secret, None)
        rotated_id = next(iter(plain))
        fresh = new_secret()
        await rotate_secret(conn, rotated_id, fresh, box=old_box)
        plain[rotated_id] = (fresh, plain[rotated_id][0])
        legacy_id = uuid.uuid4()
        legacy = new_secret()
        await conn.execute(INSERT_PLAINTEXT, legacy_id, "https://x.example/", None, legacy, None)
        plain[legacy_id] = (legacy, None)

        settings = Settings(database_url=database_url, secret_key=f"{new_key},{old_key}")
        assert await rotate_secrets(settings, page=2) == 0

        only_new = SecretBox([new_key])
        for sub_id, (secret, previous) in plain.items():
            stored, stored_previous = await conn.fetchrow(STORED, sub_id)
            assert not stored.startswith("whsec_")
            assert only_new.open(stored) == secret
            assert (None if stored_previous is None else only_new.open(stored_previous)) == (
                previous
            )

        # A row sealed under a key the setting lacks is reported and left as it was.
        stranger = await insert_subscription(
            conn,
            url="https://hooks.example.com/stranger",
            event_types=["*"],
            vendor_id=None,
            description=None,
            secret=new_secret(),
            box=SecretBox([generate_key()]),
        )
        before = await conn.fetchrow(STORED, stranger.id)
        assert await rotate_secrets(settings) == 1
        assert await conn.fetchrow(STORED, stranger.id) == before
    finally:
        await conn.close()


UNREACHABLE_DB = "postgresql://nobody@127.0.0.1:1/none"


@pytest.mark.parametrize("role", ["api", "webhooks"])
async def test_a_role_refuses_to_start_without_a_key(role: str) -> None:
    """Before touching the database: the database URL here leads nowhere."""
    settings = Settings(database_url=UNREACHABLE_DB, secret_key=None)
    with pytest.raises(SecretKeyError, match="TIERLINE_SECRET_KEY is not set"):
        await run_roles(settings, [role], asyncio.Event())
    malformed = Settings(database_url=UNREACHABLE_DB, secret_key="hunter2")
    with pytest.raises(SecretKeyError, match="key 1 of 1 is not a Fernet key") as caught:
        await run_roles(malformed, [role], asyncio.Event())
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("role", ["api", "webhooks"])
def test_the_command_exits_with_one_line_without_a_key(role: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIERLINE_SECRET_KEY"}
    env.update(TIERLINE_DATABASE_URL=UNREACHABLE_DB, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-m", "tierline.cli", role],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"tierline {role}: TIERLINE_SECRET_KEY is not set")
