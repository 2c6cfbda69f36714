"""docker-compose.yml stays true: real commands, real settings, healthchecks, the drill's Kafka.

Nobody runs `docker compose up` in CI (there is no Docker engine), so the file is checked
against what it describes: every Tierline service's command parses with the real `tierline`
parser; every `TIERLINE_*` variable on a Tierline service is a field of `Settings`, and on any
other service is read by a file that service mounts; every role has a healthcheck on the port
the role really serves; the Kafka cluster has the replication and min ISR the fault drill
(bench/drill.py) runs with. Each rule is also shown to catch a broken copy of the file.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench.drill_cluster import MIN_INSYNC_REPLICAS, PARTITIONS, REPLICATION_FACTOR

from tierline.cli import ROLE_HELP, build_parser
from tierline.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
TIERLINE_IMAGE = "tierline:latest"
ENV_PREFIX = "TIERLINE_"
SETTINGS = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
PORT_IN_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/(\w+)")


def load(path: Path = COMPOSE) -> dict[str, Any]:
    """The compose file with YAML anchors and merge keys resolved."""
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def tierline_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the Tierline image."""
    return {n: s for n, s in doc["services"].items() if s.get("image") == TIERLINE_IMAGE}


def kafka_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run Apache Kafka."""
    return {
        n: s
        for n, s in doc["services"].items()
        if str(s.get("image", "")).startswith("apache/kafka")
    }


def command_problems(doc: dict[str, Any]) -> list[str]:
    """Tierline commands that the real parser refuses, and roles that no service runs."""
    problems = []
    parser = build_parser()
    run: set[str] = set()
    for name, service in tierline_services(doc).items():
        command = service.get("command")
        if not isinstance(command, list) or not command:
            problems.append(f"{name}: no command")
            continue
        try:
            parser.parse_args([str(part) for part in command])
        except SystemExit:
            problems.append(f"{name}: `tierline {' '.join(map(str, command))}` does not parse")
            continue
        run.add(str(command[0]))
    problems += [f"no service runs `tierline {role}`" for role in sorted(set(ROLE_HELP) - run)]
    return problems


def setting_problems(doc: dict[str, Any]) -> list[str]:
    """TIERLINE_* variables that nothing reads."""
    problems = []
    for name, service in doc["services"].items():
        env = service.get("environment") or {}
        names = [k for k in env if k.startswith(ENV_PREFIX)]
        if service.get("image") == TIERLINE_IMAGE:
            problems += [f"{name}: {k} is not a setting" for k in names if k not in SETTINGS]
            continue
        mounted = "".join(
            _read_mounted(ROOT / str(volume).split(":", 1)[0])
            for volume in service.get("volumes") or []
            if str(volume).startswith("./")
        )
        problems += [f"{name}: {k} is read by none of its files" for k in names if k not in mounted]
    return problems


def _read_mounted(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return "".join(p.read_text(errors="replace") for p in files)


def healthcheck_problems(doc: dict[str, Any]) -> list[str]:
    """Roles without a healthcheck, or one that asks a port the role does not serve."""
    problems = []
    defaults = Settings()
    for name, service in tierline_services(doc).items():
        command = [str(part) for part in service.get("command") or []]
        if not command or command[0] not in ROLE_HELP:
            continue
        test = " ".join(map(str, (service.get("healthcheck") or {}).get("test") or []))
        match = PORT_IN_URL.search(test)
        if match is None:
            problems.append(f"{name}: no HTTP healthcheck")
            continue
        port, path = int(match.group(1)), match.group(2)
        env = service.get("environment") or {}
        if command[0] == "api":
            want = int(env.get("TIERLINE_API_PORT", defaults.api_port))
        else:
            want = int(env.get("TIERLINE_METRICS_PORT", defaults.metrics_port))
        if port != want:
            problems.append(f"{name}: healthcheck asks port {port}, the role serves {want}")
        if path not in ("healthz", "readyz", "metrics"):
            problems.append(f"{name}: healthcheck asks /{path}, which no role serves")
    return problems


def kafka_problems(doc: dict[str, Any]) -> list[str]:
    """Differences from the Kafka shape the drill runs: 3 nodes, replication 3, min ISR 2."""
    problems = []
    nodes = kafka_services(doc)
    if len(nodes) != 3:
        problems.append(f"{len(nodes)} Kafka services, the drill runs 3")
    want = {
        "KAFKA_DEFAULT_REPLICATION_FACTOR": REPLICATION_FACTOR,
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": REPLICATION_FACTOR,
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": REPLICATION_FACTOR,
        "KAFKA_MIN_INSYNC_REPLICAS": MIN_INSYNC_REPLICAS,
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": MIN_INSYNC_REPLICAS,
        "KAFKA_LOG_RETENTION_MS": -1,
    }
    ids, voters = set(), set()
    for name, service in nodes.items():
        env = service.get("environment") or {}
        for key, value in want.items():
            if str(env.get(key)) != str(value):
                problems.append(f"{name}: {key}={env.get(key)}, the drill runs {value}")
        ids.add(str(env.get("KAFKA_NODE_ID")))
        voters.add(str(env.get("KAFKA_CONTROLLER_QUORUM_VOTERS")))
        if "broker" not in str(env.get("KAFKA_PROCESS_ROLES")):
            problems.append(f"{name}: not a broker")
    if len(ids) != len(nodes):
        problems.append(f"node ids repeat: {sorted(ids)}")
    if len(voters) != 1 or any(f"@{n}:" not in next(iter(voters), "") for n in nodes):
        problems.append(f"the nodes disagree on the quorum or leave one out: {sorted(voters)}")
    app_want = {
        "TIERLINE_KAFKA_REPLICATION_FACTOR": REPLICATION_FACTOR,
        "TIERLINE_KAFKA_MIN_INSYNC_REPLICAS": MIN_INSYNC_REPLICAS,
        "TIERLINE_KAFKA_PARTITIONS": PARTITIONS,
        "TIERLINE_KAFKA_IDEMPOTENCE": "true",
    }
    for name, service in tierline_services(doc).items():
        env = service.get("environment") or {}
        if "TIERLINE_KAFKA_BOOTSTRAP" not in env:
            continue
        for key, value in app_want.items():
            if str(env.get(key)) != str(value):
                problems.append(f"{name}: {key}={env.get(key)}, the drill runs {value}")
        listed = {b.split(":")[0] for b in str(env["TIERLINE_KAFKA_BOOTSTRAP"]).split(",")}
        if listed != set(nodes):
            problems.append(f"{name}: bootstrap lists {sorted(listed)}, not every Kafka node")
    return problems


RULES = {
    "commands": command_problems,
    "settings": setting_problems,
    "healthchecks": healthcheck_problems,
    "kafka": kafka_problems,
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_docker_compose_holds(rule: str) -> None:
    assert RULES[rule](load()) == []


def _service(doc: dict[str, Any], command: str) -> dict[str, Any]:
    return next(s for s in tierline_services(doc).values() if s["command"][0] == command)


def _break_command(doc: dict[str, Any]) -> None:
    _service(doc, "sla")["command"] = ["sla-engine"]


def _break_option(doc: dict[str, Any]) -> None:
    _service(doc, "api")["command"] = ["api", "--threads", "4"]


def _drop_role(doc: dict[str, Any]) -> None:
    name = next(n for n, s in tierline_services(doc).items() if s["command"][0] == "webhooks")
    del doc["services"][name]


def _unknown_setting(doc: dict[str, Any]) -> None:
    _service(doc, "relay")["environment"]["TIERLINE_RELAY_BATCH"] = "100"


def _unread_grafana_variable(doc: dict[str, Any]) -> None:
    doc["services"]["grafana"]["environment"]["TIERLINE_GRAFANA_DB_SCHEMA"] = "read"


def _no_healthcheck(doc: dict[str, Any]) -> None:
    del _service(doc, "projector")["healthcheck"]


def _wrong_health_port(doc: dict[str, Any]) -> None:
    _service(doc, "sla")["environment"]["TIERLINE_METRICS_PORT"] = "9200"


def _replication_one(doc: dict[str, Any]) -> None:
    for service in kafka_services(doc).values():
        service["environment"]["KAFKA_DEFAULT_REPLICATION_FACTOR"] = 1


def _min_isr_one(doc: dict[str, Any]) -> None:
    _service(doc, "relay")["environment"]["TIERLINE_KAFKA_MIN_INSYNC_REPLICAS"] = "1"


def _two_brokers(doc: dict[str, Any]) -> None:
    del doc["services"][sorted(kafka_services(doc))[-1]]


def _bootstrap_one_node(doc: dict[str, Any]) -> None:
    node = sorted(kafka_services(doc))[0]
    _service(doc, "projector")["environment"]["TIERLINE_KAFKA_BOOTSTRAP"] = f"{node}:9092"


BREAKAGES = {
    "commands": [_break_command, _break_option, _drop_role],
    "settings": [_unknown_setting, _unread_grafana_variable],
    "healthchecks": [_no_healthcheck, _wrong_health_port],
    "kafka": [_replication_one, _min_isr_one, _two_brokers, _bootstrap_one_node],
}


@pytest.mark.parametrize(
    ("rule", "breakage"),
    [(rule, b) for rule, breaks in BREAKAGES.items() for b in breaks],
    ids=lambda v: v if isinstance(v, str) else v.__name__.lstrip("_"),
)
def test_each_rule_catches_a_broken_compose_file(rule: str, breakage: Any) -> None:
    # Merge keys share one dict between services: break a deep copy of each service alone.
    doc = load()
    doc["services"] = {n: copy.deepcopy(s) for n, s in doc["services"].items()}
    breakage(doc)
    assert RULES[rule](doc), f"{breakage.__name__} went unnoticed by the {rule} rule"
