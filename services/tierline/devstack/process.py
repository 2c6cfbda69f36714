"""Dev stack child processes: own process group, die with us, output forwarded by line."""

from __future__ import annotations

import collections
import ctypes
import functools
import os
import pwd
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, TextIO

import structlog

log = structlog.get_logger(__name__)

TAIL_LINES = 50
_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.05


def _load_prctl() -> Callable[..., int] | None:
    """Resolve prctl(2) once in the parent: a child between fork and exec must not dlopen."""
    if sys.platform != "linux":
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent(parent_pid: int) -> None:
    """preexec_fn: have the kernel SIGKILL this child when the thread that forked it dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    # The parent may have died between fork and prctl; the signal would then never come.
    if os.getppid() != parent_pid:
        os._exit(1)


class _Spawner:
    """Forks every child from one daemon thread that lives exactly as long as this process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Forking
    from an asyncio.to_thread worker or a short-lived thread would SIGKILL the child as soon as that
    thread is retired, so all forks happen here instead.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def spawn(self, make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        """Run `make` on the spawner thread and return its Popen (or raise its error)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="devstack-spawner", daemon=True
                )
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((make, future))
        return future.result()

    def _serve(self) -> None:
        """Run spawn jobs forever; the thread must never exit while children are alive."""
        while True:
            make, future = self._jobs.get()
            try:
                future.set_result(make())
            except BaseException as exc:
                future.set_exception(exc)


_SPAWNER = _Spawner()


def _write_quietly(stream: TextIO, text: str) -> None:
    """Write a forwarded line; a closed or swapped stream (pytest capture) must not kill us."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass


class ManagedProcess:
    """A child in its own process group whose output is forwarded line by line with a prefix."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        log_file: Path | None = None,
        forward: bool = True,
        stop_signal: signal.Signals = signal.SIGTERM,
        signal_group: bool = True,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.user = user
        self.log_file = log_file
        self.forward = forward
        self.stop_signal = stop_signal
        self.signal_group = signal_group
        self.pid: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._pump_thread: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._tail_lock = threading.Lock()

    def start(self) -> None:
        """Fork the child in a new session, dropping to `user` if given, and start forwarding."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        sink = self.log_file.open("a", encoding="utf-8", buffering=1) if self.log_file else None
        try:
            popen = _SPAWNER.spawn(self._popen_factory())
        except BaseException:
            if sink is not None:
                sink.close()
            raise
        self._popen = popen
        self.pid = popen.pid
        assert popen.stdout is not None
        self._pump_thread = threading.Thread(
            target=self._pump, args=(popen.stdout, sink), name=f"{self.name}-output", daemon=True
        )
        self._pump_thread.start()
        log.info("process_started", name=self.name, pid=popen.pid, argv=self.argv)

    def _popen_factory(self) -> Callable[[], subprocess.Popen[bytes]]:
        """Bind the Popen call so the spawner thread only forks."""
        account = pwd.getpwnam(self.user) if self.user is not None else None
        preexec = functools.partial(_die_with_parent, os.getpid())

        def make() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                # Popen switches ids in C before preexec_fn runs, which matters: changing
                # credentials clears PDEATHSIG, so prctl has to come after.
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                # Shed root's supplementary groups; only root may change them at all.
                extra_groups=[] if account and os.geteuid() == 0 else None,
                preexec_fn=preexec,
            )

        return make

    def _pump(self, stream: IO[bytes], sink: TextIO | None) -> None:
        """Copy output lines until every process holding the pipe has exited."""
        try:
            with stream:
                for raw in stream:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    with self._tail_lock:
                        self._tail.append(line)
                    text = f"[{self.name}] {line}\n"
                    if self.forward:
                        _write_quietly(sys.stderr, text)
                    if sink is not None:
                        _write_quietly(sink, text)
        finally:
            if sink is not None:
                sink.close()

    def alive(self) -> bool:
        """True while the leader process runs (an exited but unreaped leader counts as dead)."""
        return self._popen is not None and not self._leader_exited()

    def _leader_exited(self) -> bool:
        """Check for exit without reaping, so the leader's pid (the group id) stays reserved."""
        popen = self._popen
        assert popen is not None
        if popen.returncode is not None:
            return True
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, popen.pid, flags) is not None
        except ChildProcessError:
            return popen.poll() is not None

    def _wait_leader(self, timeout: float) -> bool:
        """Poll until the leader exits or `timeout` passes; True if it exited."""
        deadline = time.monotonic() + timeout
        while not self._leader_exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)
        return True

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit on its own and return its exit code."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        if not self._wait_leader(float("inf") if timeout is None else timeout):
            raise subprocess.TimeoutExpired(self.argv, timeout or 0.0)
        return self._finish()

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop gracefully, SIGKILL the group after `timeout`; idempotent; returns the exit code."""
        popen = self._popen
        if popen is None:
            return None
        if popen.returncode is None and not self._leader_exited():
            self._send(self.stop_signal, group=self.signal_group)
            if not self._wait_leader(timeout):
                log.warning("process_killed", name=self.name, pid=popen.pid, timeout=timeout)
                self._send(signal.SIGKILL, group=True)
                self._wait_leader(timeout)
        return self._finish()

    def _finish(self) -> int:
        """Sweep the group, reap the leader and drain the output of an exited process."""
        popen = self._popen
        assert popen is not None
        if popen.returncode is None:
            # The unreaped leader keeps the group id from being reused, so this cannot hit
            # strangers; it catches children the leader left behind in its group.
            self._send(signal.SIGKILL, group=True)
            popen.wait()
            log.info("process_exited", name=self.name, pid=popen.pid, code=popen.returncode)
        if self._pump_thread is not None:
            # EOF needs every holder of the pipe gone; children that left the group (postgres
            # backends call setsid) may keep it open, so don't wait long for them.
            self._pump_thread.join(timeout=1.0)
        return popen.returncode

    def _send(self, sig: signal.Signals, *, group: bool) -> None:
        """Send `sig` to the leader or its whole group, ignoring an already empty group."""
        assert self._popen is not None
        try:
            if group:
                os.killpg(self._popen.pid, sig)
            else:
                os.kill(self._popen.pid, sig)
        except ProcessLookupError:
            pass

    def tail(self) -> str:
        """The last lines of output, for error messages."""
        if self._pump_thread is not None and self._popen is not None and self._leader_exited():
            # A process that just died may still have its last words in the pipe.
            self._pump_thread.join(timeout=1.0)
        with self._tail_lock:
            return "\n".join(self._tail)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """True if nothing is bound to 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so TIME_WAIT leftovers of our last run don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_tcp(host: str, port: int, timeout: float, proc: ManagedProcess | None = None) -> None:
    """Block until host:port accepts a TCP connection; fail early if `proc` dies."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited before listening on {host}:{port}:\n{proc.tail()}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            tail = f":\n{proc.tail()}" if proc is not None else ""
            raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s{tail}")
        time.sleep(_POLL_SECONDS)
