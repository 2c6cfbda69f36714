"""Named SQL blocks from an adapter's `queries.sql`, as procrastinate keeps its queries.

A block starts with a `-- name --` line, then one `-- description` line, then the SQL up to
the next block. Files are read with importlib.resources, so they load from an installed wheel.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

FILE_NAME = "queries.sql"
_HEADER = re.compile(r"^-- ([a-z][a-z0-9_]*) --$")


class QueryFileError(ValueError):
    """A queries.sql file that does not parse into named, described, non-empty blocks."""


class UnknownQuery(KeyError):
    """A query name that the adapter's queries.sql does not define."""


class Queries(dict[str, str]):
    """The blocks of one queries.sql by name; an unknown name raises UnknownQuery."""

    def __init__(self, source: str, blocks: dict[str, str]) -> None:
        super().__init__(blocks)
        self.source = source

    def __missing__(self, name: str) -> str:
        raise UnknownQuery(f"{self.source} has no query named {name!r}")


def parse_queries(text: str, source: str = "<string>") -> dict[str, str]:
    """Split the text of a queries.sql into {name: sql}; QueryFileError on a malformed file."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    lines = iter(enumerate(text.splitlines(), start=1))
    for number, line in lines:
        header = _HEADER.match(line)
        if header is None:
            if current is not None:
                current.append(line)
            elif line.strip() and not line.startswith("--"):
                raise QueryFileError(f"{source}:{number}: SQL before the first named block")
            continue
        name = header[1]
        if name in blocks:
            raise QueryFileError(f"{source}:{number}: duplicate query name {name!r}")
        description = next(lines, (number, ""))[1]
        if not description.startswith("-- ") or _HEADER.match(description):
            raise QueryFileError(f"{source}:{number}: {name!r} needs a '-- description' line")
        current = blocks[name] = []
    parsed = {name: "\n".join(body).strip() for name, body in blocks.items()}
    if empty := [name for name, sql in parsed.items() if not sql]:
        raise QueryFileError(f"{source}: blocks without SQL: {', '.join(empty)}")
    return parsed


@functools.cache
def load_queries(package: str) -> Queries:
    """The named blocks of `package`'s queries.sql (each file is read once per process)."""
    source = f"{package}/{FILE_NAME}"
    text = resources.files(package).joinpath(FILE_NAME).read_text(encoding="utf-8")
    return Queries(source, parse_queries(text, source))
