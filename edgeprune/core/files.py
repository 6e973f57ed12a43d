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
from typing import Any, Callable, Iterator, Optional

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
        return read_json(path)
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
        fsync_directory(parent)  # the rename itself survives a power cut
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_directory(folder: str | os.PathLike) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows, or a folder we may not read: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike, suffix: str = ".tmp", mkdir: bool = False) -> Path:
    """A new, uniquely named empty file beside ``path`` (mkstemp in its folder, 0644 under the umask),
    for a writer that renames it over ``path`` with :func:`commit_temp`; an unwritable folder is one
    EdgepruneError line. ``mkdir`` creates the folder first (a cache's), else it must exist."""
    path = Path(path)
    try:
        if mkdir:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are readable like any other file
    except OSError as exc:
        raise EdgepruneError(f"cannot write {path}: {exc.strerror or exc}") from None
    return Path(tmp)


def commit_temp(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync the finished ``tmp``, rename it over ``path`` and fsync the folder; ``tmp`` is removed
    if any of it fails (one EdgepruneError line for an OSError)."""
    try:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise EdgepruneError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(Path(path).parent)


def write_atomic(path: str | os.PathLike, write: Callable[[str], Any], suffix: str = ".tmp", mkdir: bool = False) -> Path:
    """Call ``write(tmp)`` on a uniquely named temporary file in ``path``'s folder, then fsync it, rename
    it over ``path`` and fsync the folder: readers (and a crash) never see half a file, and two
    concurrent writers never share a temporary file. The temporary file is removed on any failure;
    an OSError (an unwritable place) is one EdgepruneError line, other errors of ``write`` propagate.
    ``suffix`` keeps the extension for writers that pick the format from the name (``.png``);
    ``mkdir`` creates the folder (else a missing folder is an error)."""
    path = Path(path)
    tmp = temp_path(path, suffix, mkdir)
    try:
        write(str(tmp))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgepruneError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit_temp(tmp, path)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mkdir: bool = False) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data), mkdir=mkdir)


def write_text_atomic(path: str | os.PathLike, text: str, mkdir: bool = False) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), mkdir=mkdir)


class _NotStrict(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotStrict(f"non-standard JSON constant {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _NotStrict(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads_strict(text: str | bytes) -> Any:
    """Standard JSON only: a duplicate key or NaN/Infinity is a :class:`json.JSONDecodeError` (as a
    syntax error is), where :func:`json.loads` would keep the last value or read a float no other
    parser accepts."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _NotStrict as exc:
        doc = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        raise json.JSONDecodeError(str(exc), doc, 0) from None


def read_json(path: str | os.PathLike) -> Any:
    """:func:`loads_strict` of a UTF-8 file; OSError and ValueError propagate for the caller to word."""
    return loads_strict(Path(path).read_text(encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, indent: Optional[int] = 2, mkdir: bool = False) -> Path:
    """Write JSON atomically (:func:`write_atomic`); an unwritable place is one EdgepruneError line."""
    return write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=False) + "\n", mkdir)
