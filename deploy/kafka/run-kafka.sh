#!/usr/bin/env bash
# Run a real Apache Kafka node (KRaft, combined broker+controller) assembled
# from Maven Central jars: a single-node broker for the test suite
# (tests/fixtures/apache_kafka.py), or one node of a three-node cluster for the
# fault drill (bench/drill_cluster.py); handy by hand too.
#
#   run-kafka.sh --port PORT --data-dir DIR [--controller-port PORT2]
#                [--node-id N --voters 1@127.0.0.1:C1,2@127.0.0.1:C2,... --cluster-id ID]
#                [--replication R] [--min-isr M]
#   run-kafka.sh --assemble-only
#
# Without --voters the node is a cluster of one (replication 1, min ISR 1).
# With --voters every node of the cluster gets the same --voters and
# --cluster-id; --replication (default: the number of voters) is the
# replication factor of new and internal topics, --min-isr (default:
# replication - 1, at least 1) their min.insync.replicas.
#
# The broker runs in the foreground (the script ends with `exec java`, so the
# PID of this script becomes the broker's PID); stop it with SIGTERM.
#
# Environment:
#   TIERLINE_KAFKA_CACHE      cache root (default $HOME/.cache/tierline); jars go to
#                             $TIERLINE_KAFKA_CACHE/kafka-<version>/libs
#   TIERLINE_KAFKA_LOG_LEVEL  root log level of the broker (default WARN)
#   TIERLINE_KAFKA_HEAP       max heap (default 512m)
#   TIERLINE_KAFKA_JAVA_OPTS  extra JVM flags, appended (so they override ours)
#   JAVA / MVN                java / mvn executables (default: from PATH)
set -euo pipefail

KAFKA_VERSION=4.1.1
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/pom.xml"

die() { echo "run-kafka.sh: error: $*" >&2; exit 2; }
log() { echo "run-kafka.sh: $*" >&2; }

usage() {
    # The comment block at the top of this file, up to `set -euo pipefail`.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

PORT=""
DATA_DIR=""
CONTROLLER_PORT=""
NODE_ID=1
VOTERS=""
CLUSTER_ID=""
REPLICATION=""
MIN_ISR=""
ASSEMBLE_ONLY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) PORT="${2:-}"; shift 2 || die "--port needs a value" ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --data-dir) DATA_DIR="${2:-}"; shift 2 || die "--data-dir needs a value" ;;
        --data-dir=*) DATA_DIR="${1#*=}"; shift ;;
        --controller-port) CONTROLLER_PORT="${2:-}"; shift 2 || die "--controller-port needs a value" ;;
        --controller-port=*) CONTROLLER_PORT="${1#*=}"; shift ;;
        --node-id) NODE_ID="${2:-}"; shift 2 || die "--node-id needs a value" ;;
        --voters) VOTERS="${2:-}"; shift 2 || die "--voters needs a value" ;;
        --cluster-id) CLUSTER_ID="${2:-}"; shift 2 || die "--cluster-id needs a value" ;;
        --replication) REPLICATION="${2:-}"; shift 2 || die "--replication needs a value" ;;
        --min-isr) MIN_ISR="${2:-}"; shift 2 || die "--min-isr needs a value" ;;
        --assemble-only) ASSEMBLE_ONLY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"
command -v "$JAVA" >/dev/null 2>&1 \
    || die "java not found (need a Java 17+ runtime on PATH, or set JAVA=...)"

CACHE_ROOT="${TIERLINE_KAFKA_CACHE:-${HOME:?HOME is not set}/.cache/tierline}"
KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
STAMP="$KAFKA_HOME/.assembled"
# The stamp records the pom's checksum: editing the pom re-assembles.
STAMP_CONTENT="kafka=$KAFKA_VERSION pom-sha256=$(sha256sum "$POM" | cut -d' ' -f1)"

assembled() {
    [[ -f "$STAMP" && "$(cat "$STAMP" 2>/dev/null)" == "$STAMP_CONTENT" \
        && -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]]
}

assemble() {
    assembled && return 0
    command -v "$MVN" >/dev/null 2>&1 \
        || die "mvn not found (Maven is needed once, to fetch the Kafka $KAFKA_VERSION jars into $LIBS)"
    mkdir -p "$KAFKA_HOME"
    # Serialise concurrent first runs; fd 9 is closed again before exec java.
    exec 9>"$KAFKA_HOME/.lock"
    flock -w 900 9 || die "timed out waiting for the lock on $KAFKA_HOME/.lock"
    if ! assembled; then
        log "assembling Kafka $KAFKA_VERSION jars into $LIBS (first run only)..."
        local tmp="$KAFKA_HOME/libs.tmp.$$"
        rm -rf "$tmp" "$STAMP"
        # (sed strips the stray ANSI resets Maven 3.8 prints even in batch mode;
        # pipefail keeps mvn's exit status.)
        if ! "$MVN" -q -B -Dstyle.color=never -f "$POM" \
                -Dkafka.version="$KAFKA_VERSION" \
                dependency:copy-dependencies \
                -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 \
                | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2; then
            rm -rf "$tmp"
            die "mvn dependency:copy-dependencies failed (see output above)"
        fi
        [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] \
            || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"; }
        rm -rf "$LIBS"
        mv "$tmp" "$LIBS"
        # Any stale temp dirs from killed runs (we hold the lock, so they're dead).
        rm -rf "$KAFKA_HOME"/libs.tmp.*
        echo "$STAMP_CONTENT" > "$STAMP"
        log "assembled $(ls "$LIBS" | wc -l) jars"
    fi
    exec 9>&-
}

assemble
if [[ $ASSEMBLE_ONLY -eq 1 ]]; then
    echo "$LIBS"
    exit 0
fi

[[ -n "$PORT" ]] || die "--port is required"
[[ -n "$DATA_DIR" ]] || die "--data-dir is required"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
if [[ -z "$CONTROLLER_PORT" ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 needed to pick a free --controller-port (or pass one)"
    CONTROLLER_PORT="$(free_port)"
fi
[[ "$CONTROLLER_PORT" =~ ^[0-9]+$ ]] || die "--controller-port must be a number"
[[ "$CONTROLLER_PORT" != "$PORT" ]] || die "--controller-port must differ from --port"
[[ "$NODE_ID" =~ ^[0-9]+$ ]] || die "--node-id must be a number"
if [[ -z "$VOTERS" ]]; then
    VOTERS="$NODE_ID@127.0.0.1:$CONTROLLER_PORT"
else
    [[ "$VOTERS" =~ ^[0-9]+@[^,]+:[0-9]+(,[0-9]+@[^,]+:[0-9]+)*$ ]] \
        || die "--voters must look like 1@HOST:PORT,2@HOST:PORT,..."
    [[ ",$VOTERS" == *",$NODE_ID@"*":$CONTROLLER_PORT"* ]] \
        || die "--voters must name this node ($NODE_ID@...:$CONTROLLER_PORT)"
    [[ -n "$CLUSTER_ID" ]] || die "--cluster-id is required with --voters (the same on every node)"
fi
VOTER_COUNT="$(tr ',' '\n' <<< "$VOTERS" | wc -l)"
REPLICATION="${REPLICATION:-$VOTER_COUNT}"
[[ "$REPLICATION" =~ ^[1-9][0-9]*$ ]] || die "--replication must be a positive number"
(( REPLICATION <= VOTER_COUNT )) || die "--replication $REPLICATION exceeds the $VOTER_COUNT nodes"
if [[ -z "$MIN_ISR" ]]; then
    MIN_ISR=$(( REPLICATION > 1 ? REPLICATION - 1 : 1 ))
fi
[[ "$MIN_ISR" =~ ^[1-9][0-9]*$ ]] && (( MIN_ISR <= REPLICATION )) \
    || die "--min-isr must be between 1 and the replication factor"

mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
LOG_DIRS="$DATA_DIR/kraft-logs"
CONFIG="$DATA_DIR/server.properties"
LOG4J_CONFIG="$DATA_DIR/log4j2.xml"
mkdir -p "$LOG_DIRS" "$DATA_DIR/logs"

cat > "$CONFIG" <<EOF
# Generated by run-kafka.sh; overwritten on every start.
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$VOTERS
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$LOG_DIRS

# Replication of new and internal topics: 1 for a single node; for the drill's
# three-node cluster 3 with min ISR 2 (an acks=all write survives one lost node).
num.partitions=1
default.replication.factor=$REPLICATION
min.insync.replicas=$MIN_ISR
offsets.topic.replication.factor=$REPLICATION
transaction.state.log.replication.factor=$REPLICATION
transaction.state.log.min.isr=$MIN_ISR
share.coordinator.state.topic.replication.factor=$REPLICATION
share.coordinator.state.topic.min.isr=$MIN_ISR
# Fewer internal partitions: the first consumer group / transaction comes up
# much faster than with the default 50.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1

# Fast test turnaround.
group.initial.rebalance.delay.ms=0
# A restart after a crash (SIGKILL) on the same data dir waits for the old
# broker session to expire before re-registering: keep that short (default 9 s).
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=5000
auto.create.topics.enable=true
delete.topic.enable=true

# Small machine (2 cores): fewer threads.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=4
EOF

cat > "$LOG4J_CONFIG" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="${TIERLINE_KAFKA_LOG_LEVEL:-WARN}">
      <AppenderRef ref="STDOUT"/>
    </Root>
    <!-- Always show start-up / shut-down milestones. -->
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Logger name="kafka.Kafka\$" level="INFO"/>
    <Logger name="kafka.server.BrokerServer" level="INFO"/>
    <Logger name="kafka.server.ControllerServer" level="INFO"/>
  </Loggers>
</Configuration>
EOF

CLASSPATH="$LIBS/*"
JAVA_OPTS=(
    -Xms64m "-Xmx${TIERLINE_KAFKA_HEAP:-512m}"
    # Start-up speed over peak throughput: C1 only, serial GC, no perf files.
    -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:-UsePerfData
    -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$LOG4J_CONFIG"
    "-Dkafka.logs.dir=$DATA_DIR/logs"
)
# Extra JVM flags (e.g. "-XX:TieredStopAtLevel=4" for long soaks); later flags win.
if [[ -n "${TIERLINE_KAFKA_JAVA_OPTS:-}" ]]; then
    read -r -a EXTRA_JAVA_OPTS <<< "$TIERLINE_KAFKA_JAVA_OPTS"
    JAVA_OPTS+=("${EXTRA_JAVA_OPTS[@]}")
fi

# Format storage once per data dir (a restart on the same dir keeps its data).
if [[ ! -f "$LOG_DIRS/meta.properties" ]]; then
    CLUSTER_ID="${CLUSTER_ID:-$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')}"
    log "formatting $LOG_DIRS (cluster id $CLUSTER_ID)"
    "$JAVA" "${JAVA_OPTS[@]}" -cp "$CLASSPATH" kafka.tools.StorageTool \
        format "--cluster-id=$CLUSTER_ID" -c "$CONFIG" \
        || die "kafka.tools.StorageTool format failed"
fi

log "starting Kafka $KAFKA_VERSION node $NODE_ID on 127.0.0.1:$PORT (controller 127.0.0.1:$CONTROLLER_PORT, voters $VOTERS, replication $REPLICATION, min ISR $MIN_ISR, data $DATA_DIR)"
exec "$JAVA" "${JAVA_OPTS[@]}" -cp "$CLASSPATH" kafka.Kafka "$CONFIG"
