"""ONNX Runtime backend: a session loader and a runner; CPU by default, CUDA/TensorRT EPs on request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgeprune.engines.base import Runner
from edgeprune.errors import EdgepruneError, first_line

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
DEFAULT_THREADS = 2


def resolve_providers(names: Sequence[str]) -> list[str]:
    """Short provider names -> ONNX Runtime providers, with a clear error when one is not installed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    resolved = []
    for name in names:
        full = PROVIDER_NAMES.get(name.lower(), name)
        if full not in available:
            hint = " (install onnxruntime-gpu on a machine with CUDA)" if full != "CPUExecutionProvider" else ""
            raise EdgepruneError(
                f"ONNX Runtime provider '{name}' is not available here{hint}; available: {', '.join(available)}"
            )
        resolved.append(full)
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")  # fallback for ops the accelerator EP does not take
    return resolved


class SessionFromOnnx:
    """Loader: builds an ``onnxruntime.InferenceSession`` when called."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("cpu",), threads: Optional[int] = DEFAULT_THREADS,
                 spinning: bool = True) -> None:
        self.path = Path(path)
        self.providers = list(providers)
        self.threads = threads
        # Spinning threads answer the next run sooner, but keep the cores busy for a while after
        # each run; a runtime switching between sessions (or a scheduler step right after a run)
        # then waits for them. Runtimes turn it off.
        self.spinning = spinning

    def __call__(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = resolve_providers(self.providers)
        try:
            return ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported models
            raise EdgepruneError(f"{self.path}: ONNX Runtime cannot load it: {first_line(exc)}") from None


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, session_or_path: Any, providers: Sequence[str] = ("cpu",), threads: Optional[int] = DEFAULT_THREADS,
                 spinning: bool = True) -> None:
        super().__init__()
        if isinstance(session_or_path, (str, os.PathLike)):
            session_or_path = SessionFromOnnx(session_or_path, providers, threads, spinning)
        self.loader = session_or_path
        self.session = None

    def activate_impl(self) -> None:
        self.session = self.loader() if callable(self.loader) else self.loader
        self.output_names = [o.name for o in self.session.get_outputs()]

    def deactivate_impl(self) -> None:
        self.session = None

    def input_metadata(self) -> dict[str, tuple[list[Any], str]]:
        return {i.name: (list(i.shape), i.type) for i in self.session.get_inputs()}

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outputs))

    def run_raw(self, feed: dict[str, np.ndarray]) -> None:
        """Run without building a result dict: the timing loop's hot path."""
        self.session.run(self.output_names, feed)
