"""Settings from the environment (prefix ``TIERLINE_``), defaults for the embedded dev stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tierline.eventlog.kafka import DEFAULT_FETCH_MAX_WAIT_MS
from tierline.store.group_commit import DEFAULT_MAX_BATCH, DEFAULT_WRITERS

ISSUE_EVENTS_TOPIC = "tierline.issue-events.v1"


class Settings(BaseSettings):
    """Every knob of every role; one instance is built by the composition root."""

    model_config = SettingsConfigDict(env_prefix="TIERLINE_", extra="ignore")

    database_url: str = "postgresql://tierline@127.0.0.1:5432/tierline"
    db_pool_min: int = 2
    db_pool_max: int = 20
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic: str = ISSUE_EVENTS_TOPIC
    kafka_partitions: int = 12
    # Copies of each partition, and how many must hold an acks=all write, when the topic is
    # created (an existing topic keeps its own). Production: 3 and 2 (docs/operations.md).
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)
    # "auto" turns idempotence on unless the broker cannot do it (Tansu answers
    # InitProducerId with an error); true/false force it.
    kafka_idempotence: Literal["auto", "true", "false"] = "auto"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_max_body_bytes: int = 256 * 1024
    # `tierline api` processes sharing api_port (SO_REUSEPORT); `--workers` overrides it.
    api_workers: int = Field(default=1, ge=1)
    # Set by `tierline api --workers N` for its workers: share the port (SO_REUSEPORT).
    api_reuse_port: bool = False
    # Per API key, per API process (docs/adr/0008): 0 turns limiting off. A busy integration
    # stays far below 50/s; a runaway loop reaches it within seconds.
    rate_limit_rps: float = Field(default=50.0, ge=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    # Roles other than the API serve /metrics and /healthz here (0 = off).
    metrics_port: int = 9100
    public_base_url: str | None = None
    # The board's session cookie (/board/): lifetime, and how often the overview refreshes.
    # The cookie is Secure when public_base_url is https (the board sits behind TLS).
    board_session_seconds: int = Field(default=8 * 3600, ge=60)
    board_refresh_seconds: float = Field(default=3.0, gt=0)
    bootstrap_admin_key: str | None = None
    # How the API writes issue commands: "one-statement" reads the head, then writes events,
    # head and idempotency answer in one atomic statement (store/one_statement.py, 2 round
    # trips); "locking" runs BEGIN, lock the head, append, COMMIT (the pre-0.x path, kept for
    # comparison in bench/write_path.py).
    write_path: Literal["one-statement", "locking"] = "one-statement"
    # An API request waits at most this long for a pooled PostgreSQL connection, then gets 503
    # with Retry-After (store/pool.py): a stuck pool turns into errors, not requests that hang.
    db_acquire_timeout_seconds: float = Field(default=10.0, gt=0)
    # Governance and vendors are cached per process and reloaded when older than this; a change
    # made through another process is seen within it (service_layer/reference.py).
    reference_ttl_seconds: float = Field(default=2.0, gt=0)
    # One-statement commands waiting for PostgreSQL at the same time are written together, up
    # to this many per statement and transaction (group commit, store/group_commit.py,
    # docs/adr/0017); 1 writes each command alone on its own connection.
    write_group_commit_max: int = Field(default=DEFAULT_MAX_BATCH, ge=1)
    # Batches written at the same time, each on its own connection.
    write_group_commit_writers: int = Field(default=DEFAULT_WRITERS, ge=1)
    # `tierline dev` only: "two" (default) runs relay, projector, sla and webhooks together in
    # one child process beside the API; "per-role" runs each in its own child, as production
    # does; "one" runs every role in the dev process (devstack/role_processes.py; measured in
    # bench/README.md, "tierline dev's process layouts").
    dev_processes: Literal["per-role", "two", "one"] = "two"
    # Fernet keys, comma-separated, newest first: encrypts webhook signing secrets at rest
    # (tierline/secretbox.py, docs/adr/0007). The api and webhooks roles refuse to start without.
    secret_key: SecretStr | None = None
    data_dir: Path = Path(".tierline")
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    relay_batch_size: int = 500
    # Batches sent and not yet acked: above 1, the next is read and sent while the previous
    # one's acks come back. 1 (one batch at a time) measured better on a quiet machine, 2 under
    # load (bench/README.md, "SLA breaches on the topic").
    relay_max_in_flight: int = Field(default=1, ge=1)
    relay_poll_interval: float = 1.0
    consumer_batch_size: int = 2000
    # Longest a consumer's fetch waits on the broker (see eventlog/kafka.py for why it matters).
    consumer_fetch_max_wait_ms: int = Field(default=DEFAULT_FETCH_MAX_WAIT_MS, ge=0)
    # "off": a consumer's batch transaction does not wait for the WAL flush. Safe because its
    # effects and offsets commit together (docs/adr/0002); never used for the write side. Off
    # by default only where it was measured to help, which it was not here (bench/README.md).
    consumer_synchronous_commit: Literal["off", "on"] = "on"
    # Worker processes for `tierline replay` (None: up to 2, one per core).
    replay_workers: int | None = None
    webhooks_allow_private_targets: bool = False
    # NoDecode: the env value is the comma-separated form, not JSON (see _split_schedule).
    webhooks_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [
            5.0,
            300.0,
            1800.0,
            7200.0,
            18000.0,
            36000.0,
            50400.0,
            72e3,
            86400.0,
        ]
    )
    webhooks_timeout: float = 15.0
    webhooks_per_subscription_concurrency: int = 4
    # Due clocks one scan claims, and the set-based units of work (IssueService.execute_many)
    # it splits them into; measured in bench/README.md (SLA at queue speed): 2000 / 2 drained a
    # 20k burst ~2x faster than 500 split 18 ways, 1 group did no better than 2.
    sla_max_batch: int = Field(default=2000, ge=1)
    sla_groups: int = Field(default=2, ge=1)

    @field_validator("webhooks_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        """Accept the comma-separated form the docs promise."""
        if isinstance(value, str):
            return [float(part) for part in value.split(",") if part.strip()]
        if isinstance(value, int | float):
            return [float(value)]
        return value
