"""How long a record takes from `send` to a consumer's `getmany`, by the consumer's fetch wait.

Isolates the broker's part of freshness: one producer (acks=all, linger 2 ms, as the relay)
sends timestamped records at a steady rate to a 12-partition topic, one consumer group member
reads them; latency = receive time - send time, same process and clock. Tansu (the `tierline
dev` broker) by default; `--bootstrap` points it at another broker (e.g. Apache Kafka from
deploy/kafka/run-kafka.sh). Run: `python -m bench.fetch_wait [--waits 500,100,20 --rates 50,200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console

from bench.common import save, summary
from tierline.devstack.tansu import TansuBroker
from tierline.eventlog.kafka import ensure_topic

console = Console()


async def one(bootstrap: str, wait_ms: int, rate: float, seconds: float) -> dict[str, Any]:
    """Send `rate` records/s for `seconds`; latency from send to getmany, per record."""
    topic = f"bench.fetch-wait.{uuid.uuid4().hex[:8]}"
    await ensure_topic(bootstrap, topic, 12)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=wait_ms,
    )
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up", key=b"w")
        while not any((await consumer.getmany(timeout_ms=1000)).values()):
            pass
        total = int(rate * seconds)
        latencies: list[float] = []

        async def receive() -> None:
            while len(latencies) < total:
                batches = await consumer.getmany(timeout_ms=1000)
                now = time.time()
                latencies.extend(now - float(m.value) for ms in batches.values() for m in ms)

        receiver = asyncio.create_task(receive())
        started = time.time()
        for n in range(total):
            delay = started + n / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(topic, repr(time.time()).encode(), key=str(n).encode())
        await asyncio.wait_for(receiver, 60)
        return {"fetch_max_wait_ms": wait_ms, "rate": rate, **summary(latencies)}
    finally:
        await consumer.stop()
        await producer.stop()


async def main(args: argparse.Namespace) -> None:
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = TansuBroker(cluster_id=f"bench-{uuid.uuid4().hex[:8]}", forward_logs=False)
        await asyncio.to_thread(broker.start)
        bootstrap = broker.bootstrap
    try:
        rows = []
        for rate in (float(r) for r in args.rates.split(",")):
            for wait in (int(w) for w in args.waits.split(",")):
                row = await one(bootstrap, wait, rate, args.seconds)
                console.print(row)
                rows.append(row)
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.stop)
    result = {"broker": "tansu" if broker is not None else bootstrap, "send_to_receive": rows}
    console.print(f"saved {save(args.name, result)}")


def parse() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--waits", default="500,100,20", help="fetch_max_wait_ms values")
    parser.add_argument("--rates", default="50,200,500", help="records/s")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--bootstrap", help="an existing broker instead of a fresh Tansu")
    parser.add_argument("--name", default="fetch_wait", help="bench/results/<name>.json")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
