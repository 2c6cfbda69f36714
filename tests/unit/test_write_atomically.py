"""dev.json is replaced whole: a reader sees the old file or the new one, never an empty one."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from tierline.devstack.dev import write_atomically


def test_readers_polling_the_file_never_see_it_partly_written(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    seen: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if path.exists():
                seen.append(path.read_text())

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for n in range(300):
            write_atomically(path, json.dumps({"n": n, "pad": "x" * 4096}))
    finally:
        done.set()
        reader.join()
    assert seen, "the reader never saw the file"
    assert all(json.loads(text)["pad"] == "x" * 4096 for text in seen)
    assert json.loads(path.read_text())["n"] == 299
    assert [p.name for p in tmp_path.iterdir()] == ["dev.json"]  # no temporary file left
