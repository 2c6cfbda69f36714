"""How long the cyclic garbage collector stops a process, per collection, in /metrics.

A collection walks every tracked object of its generation and the younger ones while the event
loop waits; a collection of the oldest generation walks them all. In a process holding many
objects (the API's snapshot cache, a claimed batch of SLA clocks) that is tens of milliseconds,
which every request in flight waits out. prometheus_client counts collections
(`python_gc_collections_total`) but does not time them: `tierline_gc_pause_seconds` does.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from prometheus_client import Histogram

GC_PAUSE = Histogram(
    "tierline_gc_pause_seconds",
    "Time one cyclic garbage collection stopped the process, by generation collected",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
_BY_GENERATION = [GC_PAUSE.labels(str(generation)) for generation in range(3)]


class _Timer:
    """The gc callback: collections never nest, so one start time is enough."""

    def __init__(self) -> None:
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started:
            _BY_GENERATION[info["generation"]].observe(time.perf_counter() - self.started)
            self.started = 0.0


_TIMER = _Timer()


def time_collections() -> None:
    """Observe every collection of this process from now on (idempotent)."""
    if _TIMER not in gc.callbacks:
        gc.callbacks.append(_TIMER)


# Roles without the API have created what they keep for good (pools, consumers) by then.
SETTLE_SECONDS = 10.0

# Set by the entry points of long-running processes only: freezing is for good, and a test
# process that starts stacks in-process must not freeze what its tests leave behind.
_freezing = False


def freeze_when_settled() -> None:
    """This process runs until stopped: freeze what it holds once it has started."""
    global _freezing
    _freezing = True


def settled() -> None:
    """The process finished starting (the API listens): freeze now, if it freezes at all."""
    if _freezing:
        freeze_long_lived()


def settle_later(delay: float = SETTLE_SECONDS) -> asyncio.TimerHandle | None:
    """`settled` in `delay` seconds, for processes without an API to say when they started."""
    if not _freezing:
        return None
    return asyncio.get_running_loop().call_later(delay, settled)


def freeze_long_lived() -> None:
    """Collect once, then leave every object alive now out of all later collections.

    What a process holds from its start to its end (modules, routes, models' validators, pools)
    is most of its heap; a collection of generation 2 walked all of it again each time, ~80 ms
    in the API process under load (measured in bench/README.md, "Garbage collector pauses").
    Frozen objects are still freed when their last reference goes; only cycles among them
    would stay, and nothing alive at start-up is expected to become a cycle of garbage.
    """
    gc.collect()
    gc.freeze()
