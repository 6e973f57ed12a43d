"""Engine cache: a built engine is reused only for exactly what it was built from and for.

The key hashes everything an engine depends on: the ONNX graph it was built from (sha256), the
backend, the precision, the builder settings, the TensorRT / ONNX Runtime version and the GPU with
its compute capability. An entry is a folder named by the key holding the engine and its manifest;
it is written through a temporary folder and a rename, so a crash never leaves half an engine. An
entry whose files no longer match its manifest, or whose manifest was written for another key, is
stale: it is deleted and rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Optional

from edgeprune.core.cache import CACHE_ENV, cache_dir
from edgeprune.core.files import atomic_directory, read_json, sha256_file

ENGINE_MANIFEST = "engine.json"


def default_cache_dir() -> Path:
    """``cache_dir("engines")``: ``$EDGEPRUNE_CACHE_DIR/engines``, else the user cache folder's."""
    return cache_dir("engines")


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``fields`` (graph sha256, backend, precision, settings, versions, device)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class EngineCache:
    """A folder of engine folders, one per cache key."""

    def __init__(self, root: Optional[Path] = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry(self, key: str) -> Path:
        return self.root / key[:32]

    def lookup(self, key: str) -> Optional[Path]:
        """The entry folder for ``key`` when it is intact, else None (a stale entry is removed)."""
        folder = self.entry(key)
        if not folder.is_dir():
            return None
        why = entry_problem(folder, key)
        if why is None:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        return None

    def store(self, key: str, built: Path) -> Path:
        """Copy the engine folder ``built`` into the cache under ``key`` (atomically; replaces a stale entry)."""
        folder = self.entry(key)
        with atomic_directory(folder, overwrite=True) as tmp:
            copy_entry(built, tmp)
        return folder


def entry_problem(folder: Path, key: str) -> Optional[str]:
    """Why a cache entry cannot be used for ``key``, or None when it can."""
    try:
        manifest = read_json(folder / ENGINE_MANIFEST)
    except (OSError, ValueError):
        return "no readable engine.json"
    if not isinstance(manifest, dict) or manifest.get("cache_key") != key:
        return "built for another key"
    engine = manifest.get("engine") or {}
    path = folder / str(engine.get("file", ""))
    if not path.is_file():
        return "engine file missing"
    if sha256_file(path) != engine.get("sha256"):
        return "engine file changed"
    return None


def copy_entry(entry: Path, target: Path) -> None:
    """Copy an engine folder's files (a cache entry, or a fresh build) into the folder ``target``."""
    for item in entry.iterdir():
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target / item.name)


__all__ = ["CACHE_ENV", "ENGINE_MANIFEST", "EngineCache", "cache_key", "copy_entry", "default_cache_dir", "entry_problem"]
