"""The `tierline` command: one subcommand per role, plus dev, migrate, replay and keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tierline.config import Settings
from tierline.gcpause import freeze_when_settled, time_collections
from tierline.logs import configure_logging
from tierline.secrets_command import add_secrets_parser, run_secrets

ROLE_HELP = {
    "api": "serve the HTTP API",
    "relay": "publish committed events to Kafka (one active at a time)",
    "projector": "build the read models from the log",
    "sla": "run SLA clocks: warnings, breaches, automatic escalation",
    "webhooks": "deliver signed webhooks to vendor systems",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; `--help` lists every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tierline",
        description="Tierline: escalation and issue tracking for outsourcing governance.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = sub.add_parser("dev", help="run the embedded stack (PostgreSQL, broker, every role)")
    dev.add_argument("--demo", action="store_true", help="seed demo vendors and issues")
    dev.add_argument(
        "--port",
        type=int,
        default=None,
        help="API port (default: TIERLINE_API_PORT or 8080; 0 picks a free port)",
    )
    dev.add_argument("--data-dir", type=Path, default=None, help="data directory (.tierline)")
    for name, text in ROLE_HELP.items():
        role = sub.add_parser(name, help=text)
        if name == "api":
            role.add_argument(
                "--workers",
                type=_positive,
                default=None,
                help="API processes sharing the port with SO_REUSEPORT (default: "
                "TIERLINE_API_WORKERS or 1); rate limits and the key cache are per process",
            )
    sub.add_parser("migrate", help="apply pending database migrations")
    replay = sub.add_parser("replay", help="rebuild read models from the Kafka log")
    replay.add_argument("--projection", default=None, help="only this projection")
    replay.add_argument(
        "--scratch",
        action="store_true",
        help="rebuild into schema read_replay and leave it there beside the live tables, "
        "swapping nothing (to compare a from-scratch rebuild with the live read models)",
    )
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument(
        "--role", required=True, choices=["admin", "integration", "vendor", "viewer"]
    )
    create.add_argument("--vendor", default=None, help="vendor id (required for role vendor)")
    create.add_argument("--name", default="cli", help="a label for the key")
    add_secrets_parser(sub)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _run_role(settings: Settings, name: str) -> int:
    from tierline.roles import run_roles

    stop = asyncio.Event()
    _install_stop(stop)
    await run_roles(settings, [name], stop)
    return 0


async def _run_api_workers(settings: Settings, workers: int) -> int:
    """`tierline api --workers N`: check and migrate once here, then supervise N API processes."""
    from tierline.api.role import supervise_api_workers
    from tierline.roles import install_secret_box, seal_plaintext_secrets
    from tierline.store.migrate import migrate_url

    box = install_secret_box(settings, ["api"])
    await migrate_url(settings.database_url)
    if box is not None:
        await seal_plaintext_secrets(settings.database_url, box)
    stop = asyncio.Event()
    _install_stop(stop)
    return await supervise_api_workers(settings, workers, stop)


async def _migrate(settings: Settings) -> int:
    from tierline.store.migrate import migrate_url

    applied = await migrate_url(settings.database_url)
    print(f"applied migrations: {applied}" if applied else "database is up to date")
    return 0


def _database_url_for_tools(settings: Settings) -> str:
    """TIERLINE_DATABASE_URL if set, else the running `tierline dev` stack's (DATA_DIR/dev.json)."""
    if "TIERLINE_DATABASE_URL" in os.environ:
        return settings.database_url
    dev_file = settings.data_dir / "dev.json"
    try:
        url = json.loads(dev_file.read_text())["database_url"]
    except (OSError, ValueError, KeyError, TypeError):
        return settings.database_url
    print(f"using the tierline dev database from {dev_file}", file=sys.stderr)
    return str(url)


def _without_password(url: str) -> str:
    """A database URL fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


async def _create_key(settings: Settings, args: argparse.Namespace) -> int:
    from tierline.store.api_keys import create_api_key
    from tierline.store.migrate import migrate_url
    from tierline.store.pool import create_pool
    from tierline.store.vendors import get_vendor

    if (args.role == "vendor") != (args.vendor is not None):
        print(
            "error: --vendor is required for role vendor and not allowed otherwise", file=sys.stderr
        )
        return 2
    database_url = _database_url_for_tools(settings)
    try:
        await migrate_url(database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        print(
            f"error: cannot reach PostgreSQL at {_without_password(database_url)} ({exc}); "
            "start `tierline dev` or set TIERLINE_DATABASE_URL",
            file=sys.stderr,
        )
        return 1
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        if args.vendor is not None and await get_vendor(pool, args.vendor) is None:
            print(f"error: unknown vendor {args.vendor!r}", file=sys.stderr)
            return 2
        key, secret = await create_api_key(
            pool, name=args.name, role=args.role, vendor_id=args.vendor
        )
    finally:
        await pool.close()
    print(secret)
    print(f"id={key.id} role={key.role} (the key is shown only now)", file=sys.stderr)
    return 0


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from tierline.projector.replay import replay_command

    return await replay_command(settings, args.projection, scratch=args.scratch)


async def _dispatch(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.command == "dev" or args.command in ROLE_HELP:
        freeze_when_settled()
    if args.command == "dev":
        from tierline.devstack.dev import run_dev

        if args.data_dir is not None:
            settings = settings.model_copy(update={"data_dir": args.data_dir})
        if args.port is not None:
            settings = settings.model_copy(update={"api_port": args.port})
        return await run_dev(settings, demo=args.demo)
    if args.command == "api":
        workers = args.workers if args.workers is not None else settings.api_workers
        if workers > 1:
            return await _run_api_workers(settings, workers)
    if args.command in ROLE_HELP:
        return await _run_role(settings, args.command)
    if args.command == "migrate":
        return await _migrate(settings)
    if args.command == "keys":
        return await _create_key(settings, args)
    if args.command == "replay":
        return await _replay(settings, args)
    if args.command == "secrets":
        return await run_secrets(settings, args)
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    time_collections()
    try:
        return asyncio.run(_dispatch(args))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"tierline {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
