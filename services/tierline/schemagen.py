"""Write the generated contracts: `schemas/openapi.json` and one JSON Schema per event type.

Run `python -m tierline.schemagen` (or `make schemas`); the tests fail when the files drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tierline.domain.events import EVENT_CLASSES

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema of the event's `data`, for every event type."""
    schemas = {}
    for event_type, cls in sorted(EVENT_CLASSES.items()):
        schema = cls.model_json_schema(mode="serialization")
        schema = {"$schema": SCHEMA_DIALECT, "$id": f"urn:tierline:event:{event_type}", **schema}
        schema["title"] = event_type
        schemas[f"{event_type}.json"] = schema
    return schemas


def render(document: Any) -> str:
    """Stable JSON text for a generated document."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def generated_files() -> dict[str, str]:
    """Relative path → content of every generated contract file."""
    from tierline.api.app import openapi_document

    files = {"openapi.json": render(openapi_document())}
    for name, schema in event_schemas().items():
        files[f"events/{name}"] = render(schema)
    return files


def main(root: Path = Path("schemas")) -> int:
    """Write the files and remove event schemas that no longer exist."""
    files = generated_files()
    (root / "events").mkdir(parents=True, exist_ok=True)
    for old in (root / "events").glob("*.json"):
        if f"events/{old.name}" not in files:
            old.unlink()
    for rel, text in files.items():
        (root / rel).write_text(text)
    print(f"wrote {len(files)} files under {root}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
