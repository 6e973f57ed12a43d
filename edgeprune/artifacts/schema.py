"""One JSON Schema per manifest kind (``schemas/<kind>.schema.json``), checked by Python here and by
libedgeprune (native/src) on the same files, so both runtimes accept exactly the same manifests."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgeprune.core.errors import EdgepruneError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
KINDS = ("artifact", "calibration", "engine", "engine-build", "engine-set", "temporal")


@lru_cache(maxsize=None)
def _validator(kind: str) -> Any:
    # jsonschema (with its referencing registry) is imported on first validation: ~50 ms that
    # `import edgeprune.artifacts` should not pay.
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    resources = []
    for name in KINDS:
        document = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
        resources.append((f"{name}.schema.json", Resource.from_contents(document)))
        resources.append((document["$id"], Resource.from_contents(document)))
    registry = Registry().with_resources(resources)
    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    return Draft202012Validator(schema, registry=registry)


def check_manifest(kind: str, data: Any, source: str | Path) -> None:
    """Raise one EdgepruneError line naming the first violation's JSON path when ``data`` does not
    follow the ``kind`` schema."""
    if kind not in KINDS:
        raise ValueError(f"unknown manifest kind {kind!r}")
    error = next(iter(sorted(_validator(kind).iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path) or "(top level)"
        raise EdgepruneError(f"{source}: manifest does not follow the {kind} schema at {where}: {error.message}")
