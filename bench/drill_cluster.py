"""The production shape as local processes: PostgreSQL, a three-node Apache Kafka cluster, and
each Tierline role as its own `tierline <role>` process (two of each).

Every process is a `ManagedProcess` (own process group, dies with the drill, output to a log
file), so a fault is a plain signal to a known pid: SIGKILL, SIGSTOP/SIGCONT. Restarting a
process starts the same command line again, as a supervisor (systemd, Kubernetes) would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tierline.devstack.postgres import PostgresServer
from tierline.devstack.process import ManagedProcess, free_port
from tierline.secretbox import generate_key

ROOT = Path(__file__).resolve().parents[1]
RUN_KAFKA = ROOT / "deploy" / "kafka" / "run-kafka.sh"
TIERLINE = str(Path(sys.executable).parent / "tierline")
TOPIC = "tierline.issue-events.v1"
# The replication the drill and docker-compose.yml run (tests/unit/test_compose.py checks both).
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2
PARTITIONS = 12
KAFKA_HEAP = "320m"
ROLE_NAMES = ("api", "relay", "projector", "sla", "webhooks")


def rss_kib(pid: int | None) -> int | None:
    """Resident set size of a process in KiB (None when it is gone)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Service:
    """One long-running process of the shape, restartable with the same command line."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_file: Path
    user: str | None = None
    proc: ManagedProcess | None = None
    starts: int = 0
    # Restarts the drill did on purpose (after killing it); anything else would be manual.
    drill_restarts: int = 0
    frozen: bool = False

    @property
    def pid(self) -> int | None:
        """The current process id."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start (or start again after it was killed)."""
        if self.proc is not None:
            self.proc.stop(5)
        self.proc = ManagedProcess(
            self.name, self.argv, env=self.env, log_file=self.log_file, forward=False
        )
        self.proc.start()
        self.starts += 1

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.alive()

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the process itself."""
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.stop(5)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL after 15 s."""
        if self.frozen:
            self.signal(signal.SIGCONT)
            self.frozen = False
        if self.proc is not None:
            self.proc.stop(15)

    def rss_kib(self) -> int | None:
        """Resident set size now."""
        return rss_kib(self.pid) if self.alive() else None


@dataclass
class KafkaCluster:
    """Three combined broker+controller nodes (KRaft, static quorum) on fixed loopback ports."""

    root: Path
    nodes: int = 3
    ports: list[int] = field(default_factory=list)
    controller_ports: list[int] = field(default_factory=list)
    services: dict[int, Service] = field(default_factory=dict)

    def __post_init__(self) -> None:
        taken: set[int] = set()
        while len(taken) < 2 * self.nodes:
            taken.add(free_port())
        ordered = sorted(taken)
        self.ports, self.controller_ports = ordered[: self.nodes], ordered[self.nodes :]
        cluster_id = secrets.token_urlsafe(16)[:22]
        voters = ",".join(
            f"{n}@127.0.0.1:{self.controller_ports[n - 1]}" for n in range(1, self.nodes + 1)
        )
        env = {**os.environ, "TIERLINE_KAFKA_HEAP": KAFKA_HEAP}
        for n in range(1, self.nodes + 1):
            data = self.root / f"kafka-{n}"
            data.mkdir(parents=True, exist_ok=True)
            argv = ["bash", str(RUN_KAFKA), "--port", str(self.ports[n - 1])]
            argv += ["--controller-port", str(self.controller_ports[n - 1])]
            argv += ["--data-dir", str(data), "--node-id", str(n), "--voters", voters]
            argv += ["--cluster-id", cluster_id, "--replication", str(REPLICATION_FACTOR)]
            argv += ["--min-isr", str(MIN_INSYNC_REPLICAS)]
            self.services[n] = Service(f"kafka-{n}", argv, env, data / "run-kafka.log")

    @property
    def bootstrap(self) -> str:
        """Every node, so a client finds the cluster while any one node is down."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node_bootstrap(self, node: int) -> str:
        """One node's listener."""
        return f"127.0.0.1:{self.ports[node - 1]}"

    async def start(self, timeout: float = 180.0) -> None:
        """Assemble the jars if needed, start every node, wait until all brokers registered."""
        assemble = await asyncio.create_subprocess_exec(
            "bash",
            str(RUN_KAFKA),
            "--assemble-only",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await assemble.communicate()
        if assemble.returncode != 0:
            raise RuntimeError(f"run-kafka.sh --assemble-only failed: {err.decode()}")
        for service in self.services.values():
            service.start()
        await self.wait_brokers(self.nodes, timeout)

    async def wait_brokers(self, count: int, timeout: float = 120.0) -> None:
        """Until `count` brokers are registered and the group coordinator answers."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for n, service in self.services.items():
                if not service.frozen and not service.alive():
                    tail = service.proc.tail() if service.proc else ""
                    raise RuntimeError(f"kafka node {n} exited:\n{tail}")
            try:
                if len(await self.brokers()) >= count:
                    return
            except Exception as exc:
                last = exc
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the Kafka cluster did not reach {count} brokers: {last!r}")

    async def _admin(self) -> AIOKafkaAdminClient:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        await asyncio.wait_for(admin.start(), 10)
        return admin

    async def brokers(self) -> list[int]:
        """Node ids of the brokers the cluster metadata lists now."""
        admin = await self._admin()
        try:
            info: dict[str, Any] = await asyncio.wait_for(admin.describe_cluster(), 10)
            await asyncio.wait_for(admin.find_coordinator("tierline-drill-probe", 0), 10)
        finally:
            await admin.close()
        return sorted(int(b["node_id"]) for b in info["brokers"])

    async def partitions(self, topic: str = TOPIC) -> list[dict[str, Any]]:
        """Per partition: leader and in-sync replicas."""
        admin = await self._admin()
        try:
            described = await asyncio.wait_for(admin.describe_topics([topic]), 10)
        finally:
            await admin.close()
        out = []
        for part in described[0]["partitions"]:
            out.append(
                {
                    "partition": int(part["partition"]),
                    "leader": int(part["leader"]),
                    "replicas": list(part["replicas"]),
                    "isr": list(part["isr"]),
                }
            )
        return sorted(out, key=lambda p: p["partition"])

    async def topic_config(self, name: str, topic: str = TOPIC) -> str | None:
        """One configuration value of the topic as the brokers report it."""
        admin = await self._admin()
        try:
            resource = ConfigResource(ConfigResourceType.TOPIC, topic)
            responses = await asyncio.wait_for(admin.describe_configs([resource]), 10)
        finally:
            await admin.close()
        for response in responses:
            for *_, entries in response.resources:
                for entry in entries:
                    if entry[0] == name:
                        return str(entry[1])
        return None

    async def leader_of(self, partition: int = 0, topic: str = TOPIC) -> int:
        """The node that leads `partition` of `topic`."""
        for part in await self.partitions(topic):
            if part["partition"] == partition:
                return int(part["leader"])
        raise RuntimeError(f"{topic} has no partition {partition}")

    async def fully_replicated(self, topic: str = TOPIC) -> bool:
        """Every partition has all replicas in sync again."""
        parts = await self.partitions(topic)
        return all(len(p["isr"]) == REPLICATION_FACTOR for p in parts)

    def stop(self) -> None:
        """Stop every node at once: the last node of a quorum would wait for the others."""
        for service in self.services.values():
            if service.alive():
                if service.frozen:
                    service.signal(signal.SIGCONT)
                    service.frozen = False
                service.signal(signal.SIGTERM)
        for service in self.services.values():
            if service.proc is not None:
                service.proc.stop(10)


class Postgres:
    """The drill's PostgreSQL: a cluster under the run directory, and database `tierline`."""

    def __init__(self, root: Path) -> None:
        self.server = PostgresServer(
            root / "pg",
            port=free_port(),
            forward_logs=False,
            settings={"max_connections": "300", "shared_buffers": "128MB"},
            log_file=root / "postgres.log",
        )

    @property
    def url(self) -> str:
        """The database the roles use."""
        return f"postgresql://tierline@127.0.0.1:{self.server.port}/tierline"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid."""
        return self.server.pid

    async def start(self) -> None:
        """Start the server and create the database."""
        await asyncio.to_thread(self.server.start, 60.0)
        conn = await asyncpg.connect(self.server.dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'tierline'"):
                await conn.execute("CREATE DATABASE tierline")
        finally:
            await conn.close()

    async def fast_restart(self) -> None:
        """`pg_ctl restart -m fast`: SIGINT to the postmaster, then start on the same port."""
        await asyncio.to_thread(self.server.stop)
        await asyncio.to_thread(self.server.start, 60.0)

    def stop(self) -> None:
        """Fast shutdown."""
        self.server.stop()


@dataclass
class Shape:
    """PostgreSQL, the Kafka cluster and every role process, with their shared settings."""

    root: Path
    copies: int = 2
    rate_limit_off: bool = True
    postgres: Postgres = field(init=False)
    kafka: KafkaCluster = field(init=False)
    roles: dict[str, Service] = field(default_factory=dict)
    api_ports: list[int] = field(default_factory=list)
    secret_key: str = field(default_factory=generate_key)
    extra: dict[str, Service] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.postgres = Postgres(self.root)
        self.kafka = KafkaCluster(self.root)

    def role_env(self) -> dict[str, str]:
        """The settings every role process gets (what docker-compose.yml sets, plus ports)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIERLINE_")} | {
            "TIERLINE_DATABASE_URL": self.postgres.url,
            "TIERLINE_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "TIERLINE_KAFKA_TOPIC": TOPIC,
            "TIERLINE_KAFKA_PARTITIONS": str(PARTITIONS),
            "TIERLINE_KAFKA_REPLICATION_FACTOR": str(REPLICATION_FACTOR),
            "TIERLINE_KAFKA_MIN_INSYNC_REPLICAS": str(MIN_INSYNC_REPLICAS),
            "TIERLINE_KAFKA_IDEMPOTENCE": "true",
            "TIERLINE_SECRET_KEY": self.secret_key,
            "TIERLINE_LOG_FORMAT": "json",
            "TIERLINE_LOG_LEVEL": "INFO",
            "TIERLINE_DB_POOL_MAX": "8",
            "TIERLINE_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
            "TIERLINE_WEBHOOKS_RETRY_SCHEDULE": "1,2,3,5,8,13",
            "TIERLINE_WEBHOOKS_TIMEOUT": "5",
        }
        if self.rate_limit_off:
            env["TIERLINE_RATE_LIMIT_RPS"] = "0"
        return env

    def role_service(self, role: str, index: int) -> Service:
        """`tierline <role>` number `index`, with its own API or metrics port."""
        env = self.role_env()
        port = free_port()
        if role == "api":
            env["TIERLINE_API_PORT"] = str(port)
            self.api_ports.append(port)
        else:
            env["TIERLINE_METRICS_PORT"] = str(port)
        name = f"{role}-{index}"
        return Service(name, [TIERLINE, role], env, self.root / "logs" / f"{name}.log")

    async def start(self) -> None:
        """PostgreSQL and Kafka, then the roles; returns once every API answers /readyz."""
        await asyncio.gather(self.postgres.start(), self.kafka.start())
        # Migrate once up front, so the role processes do not queue on the migration lock.
        migrate = await asyncio.create_subprocess_exec(
            TIERLINE,
            "migrate",
            env=self.role_env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await migrate.communicate()
        if migrate.returncode != 0:
            raise RuntimeError(f"tierline migrate failed: {err.decode()[-2000:]}")
        for role in ROLE_NAMES:
            for index in range(1, self.copies + 1):
                service = self.role_service(role, index)
                self.roles[service.name] = service
                service.start()
        await self.wait_ready()

    async def wait_ready(self, timeout: float = 120.0) -> None:
        """Every role process answers /healthz; every API answers /readyz."""
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            for service in self.roles.values():
                url = self.health_url(service)
                while True:
                    if not service.alive():
                        tail = service.proc.tail() if service.proc else ""
                        raise RuntimeError(f"{service.name} exited during start:\n{tail}")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(url) as resp:
                            if resp.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{service.name} not ready at {url}")
                    await asyncio.sleep(0.2)

    def health_url(self, service: Service) -> str:
        """/readyz of an API process, /healthz of any other role process."""
        if service.name.startswith("api-"):
            return f"http://127.0.0.1:{service.env['TIERLINE_API_PORT']}/readyz"
        return f"http://127.0.0.1:{service.env['TIERLINE_METRICS_PORT']}/healthz"

    @property
    def api_urls(self) -> list[str]:
        """Every API process's base URL."""
        return [f"http://127.0.0.1:{p}" for p in self.api_ports]

    def stop(self) -> None:
        """Stop the roles, then Kafka and PostgreSQL."""
        for service in [*self.extra.values(), *self.roles.values()]:
            with contextlib.suppress(Exception):
                service.stop()
        with contextlib.suppress(Exception):
            self.kafka.stop()
        with contextlib.suppress(Exception):
            self.postgres.stop()
