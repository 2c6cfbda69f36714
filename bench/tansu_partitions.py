"""What a topic's partition count costs Tansu (the `tierline dev` broker) with consumers reading.

`tierline dev`'s roles are three consumers of the log (projector, sla, webhooks), each a single
group member, so the topic's partitions give them no parallelism; on Tansu they cost CPU. This
bench shows how much, in the pattern `tierline dev` runs: one producer sending like the relay
(acks=all, linger 2 ms, one batch in flight holding everything that came due meanwhile, keys
spread over 1,000 issues, ~1 kB values) at --rate records/s for --seconds, and --consumers
consumers in a child process, each its own group, fetching with `tierline dev`'s fetch wait
(20 ms) from the log's end. Per configuration, a fresh topic on one Tansu:

* the produce round trip (send of a batch -> its last ack), p50 / p99 / max;
* send -> receive of each record at the first consumer, p50 / p99 (same clock);
* CPU of Tansu, the producer process and the consumers' process, as % of one core.

With `--fill N[,M...]` the topic first gets N records in small batches (20 sent at a time,
linger 0, as a relay at a low rate writes them; `--fill-large-batches`: 2,000 at a time, linger
50 ms), which the consumers read before the timing starts: Tansu's fetch cost grows with the
number of record batches already in the partition.

Run from the repository root: `python -m bench.tansu_partitions` (`--help` for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import struct
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from bench.common import percentile, process_tree, save
from tierline.devstack.tansu import TansuBroker
from tierline.eventlog.kafka import TANSU_FETCH_MAX_WAIT_MS, ensure_topic, producer_options

console = Console(width=150)
VALUE_BYTES = 1000
ISSUES = 1000
TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included)."""
    return process_tree(pid)[pid].ticks / TICKS


def ms(values: list[float], q: float) -> float:
    """The q-th percentile of seconds, in milliseconds."""
    return round(percentile(values, q) * 1000, 2)


def consumers_main(
    bootstrap: str, topic: str, count: int, wait_ms: int, fill: int, pipe: Connection
) -> None:
    """Child process: `count` consumers until told to stop, ready once each read `fill`
    records; sends back the first consumer's send -> receive latencies (of the timed records)
    and the records every consumer received."""
    asyncio.run(_consume(bootstrap, topic, count, wait_ms, fill, pipe))


async def _consume(
    bootstrap: str, topic: str, count: int, wait_ms: int, fill: int, pipe: Connection
) -> None:
    consumers = [
        AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"{topic}.{n}",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=wait_ms,
            enable_auto_commit=False,
        )
        for n in range(count)
    ]
    for consumer in consumers:
        await consumer.start()
    latencies: list[float] = []
    received = [0] * count
    stop = asyncio.Event()

    async def read(index: int, consumer: AIOKafkaConsumer) -> None:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in batches.values():
                received[index] += len(messages)
                if index == 0:
                    for message in messages:
                        (sent,) = struct.unpack_from("!d", message.value or b"")
                        if sent:  # the fill carries 0
                            latencies.append(now - sent)

    tasks = [asyncio.ensure_future(read(n, c)) for n, c in enumerate(consumers)]
    while min(received, default=fill) < fill:
        await asyncio.sleep(0.1)
    pipe.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "stop"
    await asyncio.sleep(0.5)  # the last records' fetches
    stop.set()
    await asyncio.gather(*tasks)
    for consumer in consumers:
        await consumer.stop()
    pipe.send((latencies, received))


async def fill_topic(bootstrap: str, topic: str, records: int, *, large: bool = False) -> None:
    """`records` records in small batches (20 sent at a time, linger 0, as a relay at a low
    rate writes them) or, if `large`, in large ones (2,000 at a time, linger 50 ms, as the
    relay refills a new log from the store); keys as below."""
    group, linger = (2000, 50) if large else (20, 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=linger, max_batch_size=1024 * 1024
    )
    await producer.start()
    try:
        value = bytes(VALUE_BYTES)  # send time 0: not timed
        for start in range(0, records, group):
            futures = []
            for n in range(start, min(start + group, records)):
                key = f"issue-{n % ISSUES}".encode()
                futures.append(await producer.send(topic, value=value, key=key))
                if not large:
                    await asyncio.sleep(0)  # let the sender take each record on its own
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def one(
    bootstrap: str,
    tansu_pid: int,
    partitions: int,
    consumers: int,
    rate: float,
    seconds: float,
    fill: int = 0,
    large_batches: bool = False,
) -> dict[str, Any]:
    """Produce at `rate` for `seconds` to a fresh topic of `partitions` (holding `fill` records
    first), `consumers` reading."""
    topic = f"bench.tansu-partitions.{uuid.uuid4().hex[:8]}"
    await ensure_topic(bootstrap, topic, partitions)
    if fill:
        await fill_topic(bootstrap, topic, fill, large=large_batches)
    parent, child = multiprocessing.get_context("spawn").Pipe()
    reader = multiprocessing.get_context("spawn").Process(
        target=consumers_main,
        args=(bootstrap, topic, consumers, TANSU_FETCH_MAX_WAIT_MS, fill, child),
    )
    reader.start()
    producer = AIOKafkaProducer(**producer_options(bootstrap, idempotent=False))
    await producer.start()
    rng = random.Random(partitions * 100 + consumers)
    try:
        await asyncio.get_running_loop().run_in_executor(None, parent.recv)  # "ready"
        await asyncio.sleep(2.0)  # groups joined, fetching
        assert reader.pid is not None
        pids = {"tansu": tansu_pid, "producer": os.getpid(), "consumers": reader.pid}
        cpu_before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        round_trips: list[float] = []
        sent = 0
        padding = bytes(VALUE_BYTES - 8)
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) - sent
            if due <= 0:
                await asyncio.sleep(0.001)
                continue
            send_started = time.perf_counter()
            futures = []
            for _ in range(due):
                value = struct.pack("!d", time.time()) + padding
                key = f"issue-{rng.randrange(ISSUES)}".encode()
                futures.append(await producer.send(topic, value=value, key=key))
            await asyncio.gather(*futures)
            round_trips.append(time.perf_counter() - send_started)
            sent += due
        wall = time.perf_counter() - started
        cpu = {name: process_cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        parent.send("stop")
        latencies, received = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
    finally:
        await producer.stop()
        reader.join(timeout=30)
    return {
        "partitions": partitions,
        "consumers": consumers,
        "filled_records": fill,
        "fill_batches": "large" if large_batches else "small",
        "fetch_max_wait_ms": TANSU_FETCH_MAX_WAIT_MS,
        "rate": rate,
        "seconds": round(wall, 2),
        "records": sent,
        "produce_requests": len(round_trips),
        "received_per_consumer": received,
        "produce_round_trip": (
            {
                "p50_ms": ms(round_trips, 50),
                "p99_ms": ms(round_trips, 99),
                "max_ms": round(max(round_trips) * 1000, 2),
            }
            if round_trips
            else None  # --rate 0: idle consumers only
        ),
        "send_to_receive": (
            {"p50_ms": ms(latencies, 50), "p99_ms": ms(latencies, 99)} if latencies else None
        ),
        "cpu_percent_of_a_core": {name: round(s / wall * 100, 1) for name, s in cpu.items()},
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every configuration, `--runs` times, interleaved, on one Tansu."""
    broker = TansuBroker(cluster_id=f"bench-{uuid.uuid4().hex[:8]}", forward_logs=False)
    await asyncio.to_thread(broker.start)
    try:
        assert broker.pid is not None
        rows = []
        for run_index in range(args.runs):
            for fill in args.fill:
                for consumers in args.consumers:
                    for partitions in args.partitions:
                        row = await one(
                            broker.bootstrap,
                            broker.pid,
                            partitions,
                            consumers,
                            args.rate,
                            args.seconds,
                            fill,
                            args.fill_large_batches,
                        )
                        rows.append({"run": run_index + 1, **row})
                        console.print(row)
        return rows
    finally:
        await asyncio.to_thread(broker.stop)


def render(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Tansu: partitions x consumers at a steady produce rate")
    for column in (
        "run", "filled", "partitions", "consumers", "produce p50 / p99 ms",
        "send -> receive p50 / p99 ms", "Tansu % core", "producer % core", "consumers % core",
    ):  # fmt: skip
        table.add_column(column)
    for row in rows:
        trip, fresh = row["produce_round_trip"], row["send_to_receive"]
        cpu = row["cpu_percent_of_a_core"]
        table.add_row(
            str(row["run"]),
            f"{row['filled_records']} ({row['fill_batches']})",
            str(row["partitions"]),
            str(row["consumers"]),
            "-" if trip is None else f"{trip['p50_ms']} / {trip['p99_ms']}",
            "-" if fresh is None else f"{fresh['p50_ms']} / {fresh['p99_ms']}",
            str(cpu["tansu"]),
            str(cpu["producer"]),
            str(cpu["consumers"]),
        )
    console.print(table)


def parse() -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(part) for part in text.split(",")]

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", type=ints, default=[12, 4, 1])
    parser.add_argument("--consumers", type=ints, default=[3, 0])
    parser.add_argument(
        "--fill", type=ints, default=[0], help="records in the topic (small batches) before timing"
    )
    parser.add_argument(
        "--fill-large-batches", action="store_true", help="fill in large batches instead"
    )
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="records per second (0: idle consumers)"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=2, help="interleaved runs of each")
    parser.add_argument("--name", default="tansu_partitions", help="bench/results/<name>.json")
    return parser.parse_args()


def main() -> None:
    args = parse()
    rows = asyncio.run(run(args))
    render(rows)
    result = {"args": vars(args), "runs": rows, "percentile_method": "nearest rank"}
    console.print(f"saved {save(args.name, result)}")


if __name__ == "__main__":
    main()
