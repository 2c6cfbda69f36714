"""Every cyclic garbage collection of a process is timed into `tierline_gc_pause_seconds`."""

from __future__ import annotations

import gc
import subprocess
import sys

from prometheus_client import REGISTRY

from tierline.gcpause import time_collections


def _observed(generation: int) -> tuple[float, float]:
    labels = {"generation": str(generation)}
    count = REGISTRY.get_sample_value("tierline_gc_pause_seconds_count", labels)
    total = REGISTRY.get_sample_value("tierline_gc_pause_seconds_sum", labels)
    assert count is not None and total is not None
    return count, total


def test_each_collection_is_observed_once_under_its_generation() -> None:
    time_collections()
    time_collections()  # a second install must not time collections twice
    enabled = gc.isenabled()
    gc.disable()  # no automatic collection between the reads and the explicit ones
    try:
        before = {generation: _observed(generation) for generation in range(3)}
        cycles = []
        for _ in range(2000):
            node: dict[str, object] = {}
            node["self"] = node
            cycles.append(node)
        del cycles, node
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        after = {generation: _observed(generation) for generation in range(3)}
    finally:
        if enabled:
            gc.enable()
    assert after[0][0] - before[0][0] == 1
    assert after[1][0] - before[1][0] == 0
    assert after[2][0] - before[2][0] == 2
    # Walking the whole heap takes time: the pauses are measured, not recorded as zero.
    assert after[2][1] > before[2][1]


FREEZE_PROBE = """
import gc, weakref
from tierline.gcpause import freeze_long_lived

class Node:
    pass

kept = [Node() for _ in range(5000)]
garbage = Node(); garbage.self = garbage; dead = weakref.ref(garbage); del garbage
freeze_long_lived()
frozen = gc.get_freeze_count()
later = Node(); later.self = later; later_dead = weakref.ref(later); del later
gc.collect()
print(frozen, dead() is None, later_dead() is None, len(kept))
"""


def test_freezing_leaves_what_lives_now_out_and_still_collects_later_cycles() -> None:
    # In a child process: freezing is for good, and this test process must not keep it.
    out = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE], capture_output=True, text=True, check=True
    )
    frozen, old_cycle_freed, new_cycle_freed, kept = out.stdout.split()
    assert int(frozen) >= int(kept) == 5000
    # Garbage alive before the freeze is collected first, not frozen for good.
    assert old_cycle_freed == "True"
    assert new_cycle_freed == "True"
