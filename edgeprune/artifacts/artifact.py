"""Artifacts: a directory with ``model.onnx`` and ``manifest.json``, written atomically.

The manifest records what was exported (model, method, plan, inputs/outputs, MACs, versions, the
sha256 of the ONNX file, the parity check) so engines and the runtime never have to guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.core.errors import EdgepruneError
from edgeprune.artifacts.schema import check_manifest
from edgeprune.core.files import read_folder_json, sha256_file
from edgeprune.plan.token_plan import TokenPlan

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
MANIFEST_FORMAT = 1
REQUIRED_KEYS = ("format", "model", "method", "plan", "inputs", "outputs", "onnx")


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
    def precision(self) -> str:
        """``int8`` for a QDQ graph ``edgeprune quantize`` wrote, ``fp32`` for an exported one."""
        return str(self.manifest.get("precision") or "fp32")

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
    check_manifest("artifact", manifest, mpath)
    artifact = Artifact(root, manifest)
    artifact.plan  # validates the plan
    if not artifact.onnx_path.is_file():
        raise EdgepruneError(f"{root}: {artifact.onnx_path.name} is missing")
    if verify:
        artifact.verify()
    return artifact


