"""Parity across backends: run one artifact on several backends and precisions on the same fresh
random inputs, and compare every output to the first backend with Polygraphy's comparator.

A backend is named ``BACKEND[:PRECISION]`` (``ort-cpu``, ``ort-cpu:fp16``, ``trt:fp16``) and is
built on the fly through the engine cache, or is the path of an engine folder built before. The
tolerance is relative to the reference's largest magnitude, as in export's parity check: 1e-4 when
both sides are fp32, 1e-2 when either is reduced precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.artifacts.artifact import Artifact
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, say

FP32_TOLERANCE = 1e-4
LOW_TOLERANCE = 1e-2
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "float32": np.float32, "float16": np.float16, "int64": np.int64,
               "int32": np.int32, "bool": np.bool_}


@dataclass(frozen=True)
class BackendSpec:
    label: str
    backend: str
    precision: str
    engine: Optional[Path] = None  # a prebuilt engine folder


def parse_backends(text: str) -> list[BackendSpec]:
    """``"ort-cpu,ort-cpu:fp16,trt:fp16"`` (or engine folder paths) -> specs; at least two."""
    from edgeprune.engines.build import BACKENDS, load_engine
    from edgeprune.backends.trt import PRECISIONS

    specs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if os.sep in item or Path(item).is_dir():
            engine = load_engine(item)
            specs.append(BackendSpec(item, engine.backend, engine.manifest["precision"], Path(item)))
            continue
        backend, _, precision = item.partition(":")
        precision = precision or "fp32"
        if backend not in BACKENDS:
            raise EdgepruneError(f"--backends: unknown backend {backend!r} (known: {', '.join(BACKENDS)}, or an engine folder)")
        if precision not in PRECISIONS:
            raise EdgepruneError(f"--backends: unknown precision {precision!r} in {item!r} (known: {', '.join(PRECISIONS)})")
        specs.append(BackendSpec(item, backend, precision))
    if len(specs) < 2:
        raise EdgepruneError("--backends needs at least two backends to compare, e.g. ort-cpu,ort-cpu:fp16")
    if len({s.label for s in specs}) != len(specs):
        raise EdgepruneError("--backends lists a backend twice")
    return specs


def open_runner(artifact: Artifact, spec: BackendSpec, workdir: Path, *, cache: Any = None, threads: int = 2,
                progress: Optional[Progress] = None) -> Any:
    """A runner for ``spec``: the exported graph itself for plain ort-cpu fp32, else a built engine."""
    from edgeprune.engines.build import build_engine, load_engine
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.backends.trt import BuilderSettings

    if spec.engine is not None:
        engine = load_engine(spec.engine)
        if engine.manifest["source"]["onnx_sha256"] != artifact.manifest["onnx"]["sha256"]:
            raise EdgepruneError(f"{spec.engine}: built from another ONNX than {artifact.path}")
        return engine.runner(threads)
    if spec.backend == "ort-cpu" and spec.precision == "fp32":
        return OrtRunner(artifact.onnx_path, ["cpu"], threads)
    folder = workdir / spec.label.replace(":", "-")
    engine = build_engine(artifact, spec.backend, BuilderSettings(precision=spec.precision), folder, cache=cache,
                          force=True, progress=progress)
    return engine.runner(threads)


def as_polygraphy(runner: Any, name: str) -> Any:
    """An edgeprune runner seen through Polygraphy's runner interface, for its Comparator."""
    import time

    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class Adapter(BaseRunner):
        def activate_impl(self) -> None:
            runner.activate()

        def get_input_metadata_impl(self) -> TensorMetadata:
            meta = TensorMetadata()
            for input_name, (shape, dtype) in runner.input_metadata().items():
                meta.add(input_name, NUMPY_TYPES.get(str(dtype), np.float32), shape)
            return meta

        def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            start = time.perf_counter()
            outputs = runner.infer(dict(feed_dict))
            self.inference_time = time.perf_counter() - start
            return outputs

        def deactivate_impl(self) -> None:
            runner.deactivate()

    return Adapter(name=name)


def label_agreement(reference: list[Any], got: list[Any], output: str = "logits") -> Optional[float]:
    """Share of identical predicted classes (argmax over axis 1: per image, or per pixel for a
    segmenter) in ``output``; None when there is no such output. A max-norm error says how far the
    worst value moved, this says whether the answer changed."""
    if output not in reference[0] or np.asarray(reference[0][output]).ndim < 2:
        return None
    same = total = 0
    for ref, other in zip(reference, got):
        a, b = np.asarray(ref[output]).argmax(axis=1), np.asarray(other[output]).argmax(axis=1)
        same, total = same + int((a == b).sum()), total + a.size
    return same / total if total else None


def compare_backends(artifact: Artifact, specs: list[BackendSpec], workdir: Path, *, inputs: int = 4,
                     batch: Optional[int] = None, tolerance: Optional[float] = None, cache: Any = None,
                     threads: int = 2, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Run ``specs`` on the same ``inputs`` random feeds; every backend is compared with the first."""
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    from edgeprune.backends.feeds import random_feed
    from edgeprune.backends.feeds import relative_error

    # Polygraphy logs every run at INFO and each mismatch at ERROR; the report below says it once
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    G_LOGGER.colors = False
    if batch is not None:
        artifact.input_shape(batch)  # a static batch other than ``batch`` is one clear error
    feeds = [random_feed(artifact.manifest["inputs"], batch or 1) for _ in range(inputs)]
    runners = []
    for spec in specs:
        say(progress, f"{artifact.name}: preparing {spec.label}")
        runners.append(as_polygraphy(open_runner(artifact, spec, workdir, cache=cache, threads=threads, progress=progress),
                                     spec.label))
    say(progress, f"{artifact.name}: running {len(specs)} backends on {inputs} inputs")
    results = Comparator.run(runners, data_loader=feeds)
    reference = results[0][1]
    outputs = list(reference[0].keys())
    scale = {name: max(float(np.abs(it[name]).max()) for it in reference) or 1.0 for name in outputs}
    rows = []
    for index, spec in enumerate(specs[1:], start=1):
        low = spec.precision != "fp32" or specs[0].precision != "fp32"
        tol = tolerance if tolerance is not None else (LOW_TOLERANCE if low else FP32_TOLERANCE)
        compare_func = CompareFunc.simple(atol={n: tol * scale[n] for n in outputs}, rtol=0.0, check_error_stat="max")
        verdict = Comparator.compare_accuracy(results, comparisons=[(0, index)], compare_func=compare_func)
        errors = {n: max(relative_error(np.asarray(got[n], dtype=np.float32), np.asarray(ref[n], dtype=np.float32))
                         for ref, got in zip(reference, results[index][1])) for n in outputs}
        rows.append({"backend": spec.label, "reference": specs[0].label, "tolerance": tol, "relative_error": errors,
                     "max_relative_error": max(errors.values()), "passed": bool(verdict),
                     "label_agreement": label_agreement(reference, results[index][1])})
    return {"artifact": str(artifact.path), "inputs": inputs, "batch": batch or artifact.input_shape()[0],
            "comparisons": rows, "passed": all(r["passed"] for r in rows)}


__all__ = ["BackendSpec", "FP32_TOLERANCE", "LOW_TOLERANCE", "as_polygraphy", "compare_backends", "label_agreement",
           "open_runner", "parse_backends"]
