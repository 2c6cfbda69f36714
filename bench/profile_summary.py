"""Summarise a py-spy profile in raw (collapsed-stack) form: top frames by self and inclusive time.

    py-spy record -d 12 -r 200 -p PID --format raw -o prof.txt --nonblocking
    .venv/bin/python -m bench.profile_summary prof.txt [--top 30] [--only PATTERN]

`--only` keeps the stacks whose text contains PATTERN (e.g. `projector/rebuild.py` to keep a
replay's workers out of a whole-bench recording). Frames are named `function (file)`, with the
virtualenv and standard-library prefixes cut. The summaries in bench/results/profiles/ were
made this way (bench/README.md says from which runs).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

PREFIXES = ("/work/main/.venv/lib/python3.11/site-packages/", "/work/main/services/")


def _frame(raw: str) -> str:
    name = raw.rsplit(":", 1)[0] + ")" if "(" in raw and ":" in raw else raw
    for prefix in PREFIXES:
        name = name.replace(prefix, "")
    return name.replace("/root/.pyenv/versions/3.11.7/lib/python3.11/", "")


def summarise(path: Path, top: int, only: str | None) -> str:
    total = 0
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        if not line.strip() or (only is not None and only not in line):
            continue
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    out = [f"samples {total}", "-- self"]
    out += [f"{100 * n / total:5.1f}% {k}" for k, n in own.most_common(top)]
    out.append("-- inclusive")
    out += [f"{100 * n / total:5.1f}% {k}" for k, n in inclusive.most_common(2 * top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--only", default=None, help="keep stacks containing this text")
    args = parser.parse_args()
    print(summarise(args.path, args.top, args.only))


if __name__ == "__main__":
    main()
