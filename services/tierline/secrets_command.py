"""`tierline secrets`: make a key for TIERLINE_SECRET_KEY; re-seal stored secrets after rotation.

Rotation procedure (docs/adr/0007-secrets-at-rest.md): put a new key first in
TIERLINE_SECRET_KEY (`NEW,OLD`) on every process and restart them, run `tierline secrets rotate`,
then drop OLD. Rotation never stops delivery: until the re-seal finishes, OLD still opens.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from tierline.config import Settings
from tierline.inbound.sources import INBOUND_SECRETS, count_sources
from tierline.secretbox import SecretBox, generate_key
from tierline.store.migrate import migrate_url
from tierline.webhooks.subscriptions import (
    WEBHOOK_SECRETS,
    SecretQueries,
    count_subscriptions,
    reseal_secrets_page,
)

PAGE = 500


def add_secrets_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `secrets` subcommand and its actions."""
    secrets = sub.add_parser("secrets", help="manage the key that encrypts secrets at rest")
    actions = secrets.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    actions.add_parser("new-key", help="print a fresh key for TIERLINE_SECRET_KEY")
    actions.add_parser(
        "rotate", help="re-encrypt every stored secret with the first key of TIERLINE_SECRET_KEY"
    )


async def run_secrets(settings: Settings, args: argparse.Namespace) -> int:
    """Run one `secrets` action; the exit status."""
    if args.secrets_command == "new-key":
        print(generate_key())
        return 0
    return await rotate_secrets(settings)


# What holds sealed secrets: webhook subscriptions and inbound sources.
SEALED: tuple[tuple[str, Callable[[asyncpg.Connection], Awaitable[int]], SecretQueries], ...] = (
    ("webhook", count_subscriptions, WEBHOOK_SECRETS),
    ("inbound source", count_sources, INBOUND_SECRETS),
)


async def rotate_secrets(settings: Settings, page: int = PAGE) -> int:
    """Re-seal every webhook and inbound secret under the newest key; 1 when some no key opens."""
    box = SecretBox.from_setting(settings.secret_key)
    await migrate_url(settings.database_url)
    console = Console(stderr=True)
    conn = await asyncpg.connect(settings.database_url)
    unreadable: list[tuple[str, uuid.UUID]] = []
    totals: list[str] = []
    try:
        for what, count, queries in SEALED:
            total = await count(conn)
            totals.append(f"{total} {what}s")
            columns = (TextColumn(f"re-sealing {what} secrets"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task("reseal", total=total)
                cursor: uuid.UUID | None = None
                while True:
                    seen, cursor, failed = await reseal_secrets_page(
                        conn, box, after=cursor, limit=page, queries=queries
                    )
                    unreadable.extend((what, f) for f in failed)
                    progress.advance(task, seen)
                    if cursor is None:
                        break
    finally:
        await conn.close()
    if unreadable:
        listed = ", ".join(f"{what} {row_id}" for what, row_id in unreadable[:20])
        print(
            f"error: {len(unreadable)} secrets open under no key of TIERLINE_SECRET_KEY "
            f"(keep the key they were sealed with): {listed}",
            file=sys.stderr,
        )
        return 1
    print(
        f"re-sealed the secrets of {' and '.join(totals)} with the first key; "
        "keys after it in TIERLINE_SECRET_KEY may now be removed",
        file=sys.stderr,
    )
    return 0
