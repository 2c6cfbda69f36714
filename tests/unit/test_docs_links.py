"""The README and docs speak to a user of a clone: every link resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:\.\./)+[\w./-]+)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_to_files_in_the_repository(doc: Path) -> None:
    text = doc.read_text()
    broken = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or ROOT not in (path, *path.parents):
            broken.append(target)
    # Paths in code spans that climb out of the repository (`../shared/...`) are links too.
    for target in CODE_PATH.findall(text):
        if ROOT not in (doc.parent / target).resolve().parents:
            broken.append(target)
    assert not broken, f"{doc.name}: {broken}"


def test_where_things_are_matches_the_tree() -> None:
    """Every folder and module the README's map names exists, and it names every one."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Where things are", 1)[1].split("```")[1]
    package_block = block.split("services/tierline/", 1)[1].split("\nschemas/", 1)[0]
    package = ROOT / "services" / "tierline"
    # The path column: what a line starts with, up to the two spaces before its description.
    columns = [re.split(r"\s{2,}", line.strip())[0] for line in package_block.splitlines()]
    named = {token for column in columns if column for token in column.split()}
    named = {n for n in named if n.endswith(("/", ".py", ".sql"))}
    present = {
        p.name + "/" if p.is_dir() else p.name
        for p in package.iterdir()
        if p.name not in {"__init__.py", "__pycache__", "py.typed"}
    }
    top = {"services/", "schemas/", "deploy/", "docker-compose.yml", "tests/", "bench/", "docs/"}
    for name in named - {"*/", "*/queries.sql", "role.py", "queries.sql"}:
        assert name in present, f"the README names {name}, which services/tierline lacks"
    unnamed = present - named - {"cli.py", "config.py", "logs.py", "schemagen.py", "sqlfile.py"}
    assert not unnamed, f"services/tierline has {sorted(unnamed)} the README does not name"
    for name in top:
        assert name in block and (ROOT / name.rstrip("/")).exists(), name
    for folder in ("relay", "projector", "sla", "webhooks", "api"):
        assert (package / folder / "role.py").exists(), folder
