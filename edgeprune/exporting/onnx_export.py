"""Export a reduced ViT to a static-shape ONNX artifact and prove it equals eager PyTorch."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.artifacts.artifact import MANIFEST, MANIFEST_FORMAT, ONNX_FILE, Artifact
from edgeprune.core.files import atomic_directory, sha256_file, write_json_atomic
from edgeprune.backends.feeds import random_pixels, relative_error
from edgeprune.core.machine import library_versions
from edgeprune.core.progress import Progress, say
from edgeprune.core.errors import EdgepruneError, ParityError, first_line
from edgeprune.families import adapter_for
from edgeprune.backends.graph import load_graph, op_counts, safety_problems
from edgeprune.plan.token_plan import TokenPlan

DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME = "pixel_values"


def fresh_pixels(shape: list[int]) -> torch.Tensor:
    """Random pixels from an unpredictable seed, so parity is never checked on one lucky input."""
    return torch.from_numpy(random_pixels(shape))


PARITY_RECHECKS = 2


def check_parity(
    module: nn.Module, onnx_path: Path, input_shape: list[int], batches: list[int], tolerance: float,
    make_inputs: Optional[Callable[[int], tuple[torch.Tensor, ...]]] = None, input_names: Optional[list[str]] = None,
    exact: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ONNX Runtime and eager PyTorch on fresh inputs; raise ParityError above ``tolerance``.

    Inputs are fresh random pixels of ``input_shape`` at each batch size, or ``make_inputs(batch)``
    (tensors in the order of ``input_names``) for graphs that take more than pixels. Outputs named in
    ``exact`` (token indices) must be identical whatever the tolerance: their error is 0 or 1.

    A reducer ranks tokens, and when two scores on a random input are equal to the last bit or
    two, float rounding in ONNX Runtime and PyTorch can order them differently: one token's fate
    flips and the output differs a lot. That is a property of that one input, not of the graph, so
    a miss is re-checked on ``PARITY_RECHECKS`` more fresh inputs at the same batch size; it passes
    only if all of them are within tolerance, and the miss stays in the report (``"rechecked"``).
    A graph that really differs misses again.
    """
    from edgeprune.backends.ort import OrtRunner

    names = input_names or [INPUT_NAME]
    make = make_inputs or (lambda batch: (fresh_pixels([batch, *input_shape[1:]]),))
    report: dict[str, Any] = {"tolerance": tolerance, "metric": "max_abs_diff / max_abs_reference", "batches": {}}

    def errors_at(runner: Any, batch: int) -> dict[str, float]:
        inputs = make(batch)
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        actual = runner.infer({name: t.numpy() for name, t in zip(names, inputs)})
        return {name: float(not np.array_equal(actual[name], ref.numpy())) if name in exact
                else relative_error(actual[name], ref.numpy()) for name, ref in zip(module.output_names, expected)}

    def misses(errors: dict[str, float]) -> list[str]:
        return [name for name, e in errors.items() if not e <= (0.0 if name in exact else tolerance)]

    def describe(name: str, error: float) -> str:
        return "indices not identical" if name in exact else f"relative error {error:.2e} > {tolerance:.0e}"

    with OrtRunner(onnx_path) as runner:
        for batch in batches:
            errors = errors_at(runner, batch)
            missed = misses(errors)
            if missed:
                worst = missed[0]
                report.setdefault("rechecked", []).append({"batch": batch, "output": worst, "error": errors[worst]})
                for _ in range(PARITY_RECHECKS):
                    again = errors_at(runner, batch)
                    bad = misses(again)
                    if bad:
                        raise ParityError(
                            f"{onnx_path.name}: ONNX output '{bad[0]}' differs from eager PyTorch at batch {batch}: "
                            f"{describe(bad[0], again[bad[0]])} (also on another input)"
                        )
                errors = again
            report["batches"][str(batch)] = errors
    report["max"] = max(e for b in report["batches"].values() for name, e in b.items() if name not in exact)
    if exact:
        report["identical"] = list(exact)
    return report


def trace_to_onnx(
    module: nn.Module,
    args: tuple,
    path: Path,
    *,
    input_names: list[str],
    output_names: Optional[list[str]] = None,
    dynamic_shapes: Optional[tuple] = None,
    opset: int = DEFAULT_OPSET,
) -> None:
    """torch.onnx.export (dynamo) to one file, quietly; errors come back as one EdgepruneError line."""
    # The exporter narrates every stage on stdout/stderr and warns about internals; edgeprune reports instead.
    sink = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                args,
                dynamo=True,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                external_data=False,
            )
        program.save(str(path), external_data=False)
    except EdgepruneError:
        raise
    except Exception as exc:
        raise EdgepruneError(f"ONNX export of {path.stem} failed: {first_line(exc)}") from exc


def export(
    model: nn.Module,
    plan: TokenPlan,
    out_dir: str | os.PathLike,
    *,
    batch: int = 1,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    model_info: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
    progress: Optional[Progress] = None,
) -> Artifact:
    """Export ``model`` under ``plan`` to ``out_dir`` (model.onnx + manifest.json), parity-checked.

    The batch axis is fixed to ``batch`` unless ``dynamic_batch``; token counts are always static.
    Nothing is left at ``out_dir`` unless every step succeeds.
    """
    if opset < 17:
        raise EdgepruneError(f"opset {opset} is too old: edgeprune needs opset >= 17 (one LayerNormalization node)")
    if batch < 1:
        raise EdgepruneError(f"--batch must be >= 1, got {batch}")
    adapter = adapter_for(model)
    reduced = adapter.reduced(plan)
    spec = plan.spec
    shape = [batch, spec.in_chans, *spec.img_size]
    started = time.perf_counter()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        onnx_path = tmp / ONNX_FILE
        say(progress, "tracing and converting to ONNX")
        # Tracing at batch 1 lets the tracer specialize the batch axis; trace a dynamic one at 2.
        trace_shape = [2, *shape[1:]] if dynamic_batch else shape
        trace_to_onnx(
            reduced, (fresh_pixels(trace_shape),), onnx_path, input_names=[INPUT_NAME],
            output_names=list(reduced.output_names), opset=opset,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None,
        )
        graph = load_graph(onnx_path)
        problems = safety_problems(graph)
        batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
        if dynamic_batch and batch_dim.HasField("dim_value"):
            problems.append("the batch axis was specialized to a constant during tracing")
        if problems:
            raise EdgepruneError(f"exported graph breaks edgeprune's export rules: {problems[0]}")
        say(progress, "checking ONNX Runtime against eager PyTorch")
        batches = [1, 2] if dynamic_batch else [batch]
        parity = check_parity(reduced, onnx_path, shape, batches, tolerance)
        manifest = {
            "format": MANIFEST_FORMAT,
            "model": {**adapter.describe(), **(model_info or {}), "spec": spec.to_dict()},
            "method": plan.method,
            "plan": plan.to_dict(),
            "inputs": [{"name": INPUT_NAME, "shape": ["batch" if dynamic_batch else batch, *shape[1:]], "dtype": "float32"}],
            "outputs": [{"name": n} for n in reduced.output_names],
            "flops": {"macs": plan.macs, "baseline_macs": plan.baseline_macs, "macs_ratio": round(plan.macs_ratio, 6)},
            "onnx": {"file": ONNX_FILE, "opset": opset, "sha256": sha256_file(onnx_path), "ops": op_counts(graph)},
            "parity": parity,
            "trt_lint": trt_lint_report(graph),
            "versions": library_versions(),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        _record_output_shapes(manifest, graph)
        write_json_atomic(tmp / MANIFEST, manifest)
    return Artifact(Path(out_dir), manifest)


def trt_lint_report(graph) -> dict[str, Any]:
    """The TensorRT-compatibility lint of an exported graph, for its manifest (see ``edgeprune lint``)."""
    from edgeprune.backends.trt_lint import DEFAULT_TRT, lint_model, summarize

    findings = lint_model(graph, DEFAULT_TRT)
    return {"trt": DEFAULT_TRT, **summarize(findings), "findings": [f.to_dict() for f in findings]}


def _record_output_shapes(manifest: dict[str, Any], graph) -> None:
    shapes = {}
    for value in graph.graph.output:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    for out in manifest["outputs"]:
        out["shape"] = shapes.get(out["name"])
