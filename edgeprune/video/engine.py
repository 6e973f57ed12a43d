"""One frame in, logits and timings out — whether an engine set, a temporal artifact, one model, or the
native library (``--native``) runs it."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.core.console import console
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json
from edgeprune.video.segmenter import load_segmenter_model, prepare_batch


@dataclass
class Step:
    engine: str
    budget: float
    logits: Optional[np.ndarray]  # [K, h, w] at the model's input size; None when ``labels`` came instead
    engine_ms: float
    total_ms: float  # pre + scheduler + engine
    pre_ms: float = 0.0
    scheduler_ms: float = 0.0
    provider: str = "CPUExecutionProvider"
    reason: str = ""
    labels: Optional[np.ndarray] = None  # [H, W] at the frame's size when the engine made them (native)
    post_ms: float = 0.0  # time spent making ``labels``


def _palette(info: dict[str, Any]) -> np.ndarray:
    from edgeprune.imaging.images import palette_array

    k = int(info.get("num_classes") or len(info.get("classes") or []) or 1)
    return palette_array(info.get("palette"), k)


class FrameEngine:
    """Runs one frame of the demo; ``new_source`` starts a new video (temporal caches reset)."""

    def __init__(self, model: Path, target_ms: float, policy: str, threads: int, provider: str,
                 engines: Optional[Path] = None, native: bool = False, precision: Optional[str] = None,
                 device: Optional[str] = None) -> None:
        from edgeprune.artifacts.engine_set import is_engine_set
        from edgeprune.backends.runners import ORT_PROVIDERS, auto_line
        from edgeprune.runtime.temporal import is_temporal

        self._runtime: Any = None
        self._temporal: Any = None
        self._native: Any = None
        self._net: Any = None
        self._source = 0
        auto: tuple[Any, str] = (None, "")  # the engine --provider auto picked, and why
        if engines is not None and not is_engine_set(model):
            raise EdgepruneError("--engines runs the built engines of an engine set; --model must be that set")
        if native:
            if provider not in ORT_PROVIDERS or precision is not None or device is not None:
                raise EdgepruneError("--native takes ONNX Runtime's providers (cpu, cuda, tensorrt): drop --provider "
                                     "openvino/auto, --precision and --device, or --native (OpenVINO in the native "
                                     "library: build the set with `edgeprune build --backend openvino`, pass --engines)")
            if not (is_engine_set(model) or is_temporal(model)):
                raise EdgepruneError("--native runs engine sets and temporal artifacts; --model is neither")
            from edgeprune.native import NativeRuntime, build_native, is_available

            with console.status("loading the native runtime"):
                if not is_available():
                    build_native()
                self._native = NativeRuntime(model, target_ms, policy, threads=threads, provider=provider, engines=engines)
            if is_temporal(model):
                from edgeprune.runtime.temporal import load_temporal

                self.kind, info = "temporal reuse", load_temporal(model, verify=False).model
            else:
                from edgeprune.artifacts.engine_set import load_engine_set

                self.kind = f"engine set, policy {policy}, native"
                info = load_engine_set(model, verify=False).manifest.get("model") or {}
            self.palette = _palette(info)
            self.budgets = list(self._native.budgets)
            self.provider_name = self._native.provider
        elif is_temporal(model):
            from edgeprune.runtime.temporal import TemporalRuntime

            with console.status("loading temporal artifact"):
                self._temporal = TemporalRuntime(model, threads=threads, provider=provider, precision=precision,
                                                 device=device)
            self.kind, self.palette = "temporal reuse", _palette(self._temporal.artifact.model)
            self.provider_name, auto = self._temporal.provider_name, (self._temporal.engine, self._temporal.engine_reason)
            self.budgets = [1.0, round(self._temporal.recompute_share, 4)]
        elif is_engine_set(model):
            from edgeprune.runtime.runtime import Runtime

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                with console.status("loading engine set"):
                    self._runtime = Runtime(model, target_ms, policy, threads=threads, provider=provider,
                                            precision=precision, device=device, engines=engines)
            for w in caught:
                console.print(f"warning: {w.message}", highlight=False, soft_wrap=True)
            self.kind = f"engine set, policy {policy}"
            self.palette = _palette(self._runtime.set.manifest.get("model") or {})
            self.budgets = self._runtime.budgets
            self.provider_name, auto = self._runtime.provider_name, (self._runtime.engine, self._runtime.engine_reason)
        else:
            self._net = load_segmenter_model(model, threads, provider, precision, device)
            self.kind, self.palette = self._net.kind, self._net.palette
            self.provider_name, auto = self._net.provider, (self._net.engine, self._net.engine_reason)
            self.budgets = [_budget_of(model)]
            self._name = model.name
            self._net.run(np.zeros((self._net.batch or 1, 3, *self._net.size), np.float32))  # warm-up, untimed
        if auto[1]:
            console.print(auto_line(*auto), highlight=False, soft_wrap=True)

    def new_source(self) -> None:
        """A new video starts: temporal caches of the last one must not leak into it."""
        self._source += 1

    def step(self, frame: np.ndarray, deadline_ms: Optional[float] = None) -> Step:
        if self._native is not None:
            # Labels at the frame's (output) size come from the library's exact fast path, in this thread.
            r = self._native.infer(frame, stream=self._source, deadline_ms=deadline_ms, labels="input")
            return Step(r.engine, r.budget, None, r.engine_ms, r.total_ms - r.post_ms, r.pre_ms, r.scheduler_ms,
                        r.provider, r.reason, labels=r.labels, post_ms=r.post_ms)
        if self._temporal is not None:
            t = self._temporal.infer(frame, stream=self._source)
            name = f"refresh ({t.reason})" if t.refreshed else f"update {t.recomputed:.0%} of patches"
            return Step(name, t.recomputed, t.logits[0], t.engine_ms, t.total_ms, t.total_ms - t.engine_ms,
                        provider=self.provider_name)
        if self._runtime is not None:
            r = self._runtime.infer(frame, deadline_ms=deadline_ms)
            pre = max(0.0, r.total_ms - r.engine_ms - r.scheduler_ms)
            return Step(r.engine, r.budget, r.outputs["logits"][0], r.engine_ms, r.total_ms, pre, r.scheduler_ms,
                        self.provider_name, r.decision.reason)
        t0 = time.perf_counter()
        pixels = prepare_batch([frame], self._net)
        t1 = time.perf_counter()
        logits = self._net.run(pixels)[0]
        t2 = time.perf_counter()
        return Step(self._name, self.budgets[0], logits, (t2 - t1) * 1e3, (t2 - t0) * 1e3, (t1 - t0) * 1e3,
                    provider=self.provider_name)

    def close(self) -> None:
        for runtime in (self._native, self._temporal, self._runtime, self._net):
            if runtime is not None:
                runtime.close()


def _budget_of(model: Path) -> float:
    """An artifact's MACs ratio; an eager segmenter folder is the unreduced model (1.0)."""
    try:
        return float(read_json(model / "manifest.json")["flops"]["macs_ratio"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1.0


__all__ = ["FrameEngine", "Step"]
