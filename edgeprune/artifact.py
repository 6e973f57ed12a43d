"""Artifacts: a directory with ``model.onnx`` and ``manifest.json``, written atomically.

The manifest records what was exported (model, method, plan, inputs/outputs, MACs, versions, the
sha256 of the ONNX file, the parity check) so engines and the runtime never have to guess.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from edgeprune.errors import EdgepruneError
from edgeprune.plan import TokenPlan

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
MANIFEST_FORMAT = 1
REQUIRED_KEYS = ("format", "model", "method", "plan", "inputs", "outputs", "onnx")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest["onnx"]["file"]

    @property
    def plan(self) -> TokenPlan:
        return TokenPlan.from_dict(self.manifest["plan"])

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def macs(self) -> int:
        return int(self.manifest["plan"]["macs"])

    def input_shape(self, batch: int | None = None) -> list[int]:
        """Shape of the pixel input; a dynamic batch axis takes ``batch`` (default 1)."""
        shape = list(self.manifest["inputs"][0]["shape"])
        if not isinstance(shape[0], int):
            shape[0] = batch or 1
        elif batch is not None and batch != shape[0]:
            raise EdgepruneError(
                f"{self.path} was exported for batch {shape[0]}; re-export with --batch {batch} or --dynamic-batch"
            )
        return shape

    def verify(self) -> None:
        """Check the ONNX file is the one the manifest describes."""
        digest = sha256_file(self.onnx_path)
        if digest != self.manifest["onnx"]["sha256"]:
            raise EdgepruneError(f"{self.onnx_path}: sha256 does not match the manifest (file changed or corrupt)")


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
        label = "manifest" if name == MANIFEST else name
        raise EdgepruneError(f"{path}: corrupt {label} ({exc})") from None


def load_artifact(path: str | os.PathLike, verify: bool = True) -> Artifact:
    """Read and validate an artifact directory; any defect is one EdgepruneError line."""
    root = Path(path)
    mpath = root / MANIFEST
    manifest = read_folder_json(root, MANIFEST, "artifact")
    if isinstance(manifest, dict) and manifest.get("kind") == "edgeprune-temporal":
        raise EdgepruneError(f"{root} is a temporal artifact (two graphs with caches): run it with `edgeprune demo "
                             f"--model {root}` or edgeprune.runtime.temporal.TemporalRuntime")
    if isinstance(manifest, dict) and manifest.get("kind") == "mllm-visual":
        raise EdgepruneError(f"{root} is a multimodal vision artifact (K visual tokens for an LLM): run it with "
                             f"edgeprune.mllm.runtime.VisualEncoder, or `edgeprune inspect {root}`")
    if not isinstance(manifest, dict) or any(k not in manifest for k in REQUIRED_KEYS):
        raise EdgepruneError(f"{mpath}: manifest lacks required keys {', '.join(REQUIRED_KEYS)}")
    if manifest["format"] != MANIFEST_FORMAT:
        raise EdgepruneError(f"{mpath}: unsupported manifest format {manifest['format']!r}")
    artifact = Artifact(root, manifest)
    artifact.plan  # validates the plan
    if not artifact.onnx_path.is_file():
        raise EdgepruneError(f"{root}: {artifact.onnx_path.name} is missing")
    if verify:
        artifact.verify()
    return artifact


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
