"""ONNX Runtime backend: a session loader and a runner; CPU by default, CUDA/TensorRT EPs on request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from edgeprune.backends.base import Runner
from edgeprune.core.errors import EdgepruneError, first_line

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


def accelerator_options(provider: str, *, cache_dir: Optional[Path] = None, precision: str = "fp32",
                        workspace_mb: Optional[int] = None, optimization_level: Optional[int] = None,
                        timing_cache_dir: Optional[Path] = None, hardware_compatible: bool = False) -> dict[str, str]:
    """Provider options for the CUDA and TensorRT execution providers, set from the same builder
    settings as ``edgeprune build --backend trt``: the TensorRT EP keeps its engines and timing cache
    in folders next to the built engine, so a second session loads instead of rebuilding."""
    if provider == "tensorrt":
        options = {"trt_engine_cache_enable": "True", "trt_timing_cache_enable": "True",
                   # LayerNorm in fp16 overflows on ViT activations (see docs/engines.md)
                   "trt_layer_norm_fp32_fallback": "True"}
        if cache_dir is not None:
            options["trt_engine_cache_path"] = str(cache_dir)
        if timing_cache_dir is not None:
            options["trt_timing_cache_path"] = str(timing_cache_dir)
        if precision == "fp16":
            options["trt_fp16_enable"] = "True"
        if workspace_mb:
            options["trt_max_workspace_size"] = str(int(workspace_mb) << 20)
        if optimization_level is not None:
            options["trt_builder_optimization_level"] = str(optimization_level)
        if hardware_compatible:
            options["trt_engine_hw_compatible"] = "True"
        return options
    if provider == "cuda":
        # Static shapes: the exhaustive cuDNN search runs once per session and pays off on every frame.
        return {"cudnn_conv_algo_search": "EXHAUSTIVE", "arena_extend_strategy": "kSameAsRequested"}
    return {}


class SessionFromOnnx:
    """Loader: builds an ``onnxruntime.InferenceSession`` when called."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("cpu",), threads: Optional[int] = DEFAULT_THREADS,
                 spinning: bool = True, provider_options: Optional[Mapping[str, Mapping[str, str]]] = None,
                 optimized_path: Optional[Path] = None) -> None:
        self.path = Path(path)
        self.providers = list(providers)
        # short provider name ("tensorrt", "cuda") -> that provider's options
        self.provider_options = {k: dict(v) for k, v in (provider_options or {}).items()}
        # where ORT writes the graph after its optimisations (``edgeprune build`` for ORT backends)
        self.optimized_path = optimized_path
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
        if self.optimized_path is not None:
            # EXTENDED fusions are ORT's own ops but not tied to this CPU's instruction set (ALL is)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.optimized_model_filepath = str(self.optimized_path)
        providers = resolve_providers(self.providers)
        short = {full: short for short, full in PROVIDER_NAMES.items()}
        provider_options = [self.provider_options.get(short.get(p, p), {}) for p in providers]
        try:
            return ort.InferenceSession(str(self.path), options, providers=providers, provider_options=provider_options)
        except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported models
            raise EdgepruneError(f"{self.path}: ONNX Runtime cannot load it: {first_line(exc)}") from None


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, session_or_path: Any, providers: Sequence[str] = ("cpu",), threads: Optional[int] = DEFAULT_THREADS,
                 spinning: bool = True, provider_options: Optional[Mapping[str, Mapping[str, str]]] = None) -> None:
        super().__init__()
        if isinstance(session_or_path, (str, os.PathLike)):
            session_or_path = SessionFromOnnx(session_or_path, providers, threads, spinning, provider_options)
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
