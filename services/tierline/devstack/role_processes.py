"""`tierline dev`'s background roles, each in its own child process (TIERLINE_DEV_PROCESSES).

In one process the API and four log roles share one event loop, and so one core: at a few
hundred commands/s the relay's and projectors' turns wait behind HTTP requests, and the time from
a command to its read model grows with the rate (bench/README.md, "Freshness"). With `two`
(the default) the dev process keeps the API and starts relay, projector, sla and webhooks
together in one child: one core for HTTP, one for the log path, with the roles' batches as
large as in one process. `per-role` starts each of the four as its own child, as production
runs them (docs/operations.md): freshest at low rates, but every consumer applies smaller
batches and the stack needs more CPU per command, so on 2 cores it fell behind at 500/s. `one`
keeps every role in the dev process (least memory, one PID to profile).

A child is `python -m tierline.devstack.role_processes ROLE[,ROLE...] LOG_FILE`:
- it gets the dev process's settings as TIERLINE_* variables (never on its command line, which
  any local user can read);
- it logs like the dev process: everything to the shared log file, warnings and worse to
  stderr, which the dev process forwards to the terminal with the role's name in front;
- it serves /metrics and /healthz on its own port (dev.json lists them);
- the kernel kills it if the dev process dies (PR_SET_PDEATHSIG, devstack/process.py).

A child that exits on its own stops the whole stack with an error, as a failing role does in
one process: a dev stack with a dead projector would look healthy and show stale read models.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import structlog
from pydantic import SecretStr

from tierline.config import Settings
from tierline.devstack.process import ManagedProcess, free_port
from tierline.supervise import sleep_or_stop

log = structlog.get_logger(__name__)

# The roles that run beside the API, in the order they start.
BACKGROUND_ROLES = ("relay", "projector", "sla", "webhooks")
# TIERLINE_DEV_PROCESSES: which roles share a child process ("one" starts no child).
GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "per-role": tuple((role,) for role in BACKGROUND_ROLES),
    "two": (BACKGROUND_ROLES,),
    "one": (),
}
_ENV_PREFIX = "TIERLINE_"
_WATCH_SECONDS = 0.5
_READY_TIMEOUT = 60.0


def settings_env(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """`base` without its TIERLINE_* variables, plus every setting as the variable it reads.

    Round-trips through Settings() in the child: a field left at None is simply not set.
    """
    env = {k: v for k, v in base.items() if not k.startswith(_ENV_PREFIX)}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = ",".join(str(item) for item in value)
        else:
            text = str(value)
        env[_ENV_PREFIX + name.upper()] = text
    return env


class RoleExited(RuntimeError):
    """A role process ended on its own: the dev stack stops, saying which and why."""


class RoleProcesses:
    """The background roles as child processes: start, wait until each answers, watch, stop."""

    def __init__(
        self, settings: Settings, log_file: Path, groups: tuple[tuple[str, ...], ...]
    ) -> None:
        self._settings = settings
        self._log_file = log_file
        # A child's name: its roles joined by "+" ("relay", or "relay+projector+sla+webhooks").
        self._roles = tuple("+".join(group) for group in groups)
        self.metrics: dict[str, str] = {}
        self._procs: list[ManagedProcess] = []

    def start(self) -> None:
        """Start every child (each on a free metrics port); returns without waiting."""
        for role in self._roles:
            port = free_port()
            settings = self._settings.model_copy(update={"metrics_port": port})
            argv = [sys.executable, "-m", __name__, role.replace("+", ","), str(self._log_file)]
            proc = ManagedProcess(role, argv, env=settings_env(settings, os.environ))
            proc.start()
            self._procs.append(proc)
            self.metrics[role] = f"http://{self._settings.api_host}:{port}/metrics"

    async def wait_ready(self, stop: asyncio.Event, timeout: float = _READY_TIMEOUT) -> bool:
        """True once every child answers /healthz; False if stopped first; raises if one died."""
        deadline = time.monotonic() + timeout
        pending = dict(zip(self._roles, self._procs, strict=True))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while pending:
                if stop.is_set():
                    return False
                self._raise_if_exited()
                for role in list(pending):
                    url = self.metrics[role].removesuffix("/metrics") + "/healthz"
                    try:
                        async with http.get(url) as resp:
                            if resp.status == 200:
                                del pending[role]
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                if pending and time.monotonic() > deadline:
                    raise RoleExited(f"roles not ready after {timeout:g}s: {', '.join(pending)}")
                await asyncio.sleep(0.1)
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Return when `stop` is set; raise RuntimeError as soon as a child exits on its own."""
        while not stop.is_set():
            self._raise_if_exited()
            await sleep_or_stop(stop, _WATCH_SECONDS)

    def _raise_if_exited(self) -> None:
        for proc in self._procs:
            if not proc.alive():
                code = proc.wait(0)
                tail = "\n".join(proc.tail().splitlines()[-20:])
                what = f"the {proc.name} role" + ("s" if "+" in proc.name else "")
                raise RoleExited(f"{what} exited (code {code}); its last lines:\n{tail}")

    def stop(self) -> None:
        """SIGTERM every child, SIGKILL after the timeout; safe to call more than once."""
        for proc in reversed(self._procs):
            proc.stop(timeout=20.0)


async def _child(settings: Settings, roles: list[str]) -> int:
    from tierline.gcpause import freeze_when_settled
    from tierline.roles import run_roles

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    freeze_when_settled()
    await run_roles(settings, roles, stop)
    return 0


def main(argv: list[str]) -> int:
    """Entry point of one child: `ROLE[,ROLE...] LOG_FILE`."""
    from tierline.gcpause import time_collections
    from tierline.logs import configure_logging

    names, log_file = argv
    roles = names.split(",")
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, file=Path(log_file))
    time_collections()
    if len(roles) == 1:
        structlog.contextvars.bind_contextvars(role=roles[0])
    return asyncio.run(_child(settings, roles))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
