"""Files and folders written so that readers never see half of them, and read with one clear error.

Every write in edgeprune goes through here: a folder (artifact, engine set, cache entry) is built in
a temporary sibling and renamed into place; a file is written to a uniquely named temporary file in
its own folder and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgeprune.core.errors import EdgepruneError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_folder_json(root: Path, name: str, noun: str) -> Any:
    """The JSON file ``name`` of an edgeprune folder (artifact, engine set, ...); a missing folder,
    missing file or corrupt JSON is one EdgepruneError line naming what was expected."""
    if not root.is_dir():
        raise EdgepruneError(f"{root}: not an {noun} directory")
    path = root / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgepruneError(f"{root}: no {name} (not an edgeprune {noun})") from None
    except (OSError, ValueError) as exc:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        label = "manifest" if name == "manifest.json" else name
        raise EdgepruneError(f"{path}: corrupt {label} ({exc})") from None


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty ``target`` unless asked to."""
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise EdgepruneError(f"{target} already exists; choose another --out or pass --force")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target`` that becomes ``target`` only on success."""
    target = Path(target)
    check_target(target, overwrite)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a shipped artifact is readable like any folder
    except OSError as exc:
        raise EdgepruneError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.replace(target, old / "prev")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file + rename; an unwritable place is one EdgepruneError line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgepruneError(f"cannot write {path}: {exc.strerror or exc}") from None
