"""``edgeprune quantize``: an int8 QDQ artifact (or engine set) from an fp32 one and calibration images.

NNCF's post-training quantization of the ONNX graph (``nncf.quantize`` with ``ModelType.TRANSFORMER``:
min/max ranges from the calibration inputs, then fast bias correction) writes QuantizeLinear/
DequantizeLinear pairs: weights int8, symmetric, one scale per output channel; activations int8 with
NNCF's "mixed" transformer preset. OpenVINO compiles such a graph to int8 kernels and ONNX Runtime
runs it as it is, so one artifact serves both (``edgeprune build --precision int8``).

**Token decisions stay float**: the nodes of the shared rule in :mod:`edgeprune.backends.precision`
(:func:`~edgeprune.backends.precision.decision_nodes`: TopK/ArgMax and the metric they rank, back to
the nearest LayerNorm or residual, the same nodes the fp16 conversion keeps fp32) are NNCF's ignored
scope, and the result is checked: no node of that subgraph may read a DequantizeLinear output.
SmoothQuant (on by default for transformers) is off: NNCF 3.4 applies it without the ignored scope
(nncf issue #4172), so it would rescale the weights of the decision subgraph's qkv projection and put
a multiply before it. Without it the subgraph is the fp32 graph's own, node for node and weight for
weight, and makes the fp32 choices from the tensors it reads (tested). Measured cost (once, the MNIST
ViT's ToMe graph, 2000 digits): median logit error 1.0 % -> 1.3 % of the largest logit, top-1 equal.
What feeds the subgraph (the residual stream) comes from int8 blocks, so a ranking whose margin is
below their rounding can still flip (measured in docs/quantize.md).

**Weights use 7 of their 8 bits by default** (NNCF's overflow fix on every layer, ``overflow_fix="all"``):
CPUs without VNNI or AMX (AVX2, e.g. this project's AMD EPYC) multiply u8 by s8 into 16-bit sums that
saturate with full-range weights. Measured once on the Fashion-MNIST ViT's ToMe graph: OpenVINO int8 logits
3.5 % off fp32 (median) and 97.6 % equal top-1 with NNCF's default (first layer only), 1.9 % and
98.8 % with every layer fixed, as close as ONNX Runtime (1.6-1.7 %). ``"first-layer"`` or ``"none"``
keep the full range for targets with VNNI/AMX.

NNCF uses PyTorch only when it is installed anyway (it probes for it), so this module runs on a
runtime install plus the ``quantize`` extra; nncf is imported inside functions (heavy, optional).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from edgeprune.artifacts.artifact import MANIFEST, ONNX_FILE, Artifact, load_artifact
from edgeprune.artifacts.engine_set import SET_FILE, EngineSet, load_engine_set
from edgeprune.core.errors import EdgepruneError, first_line
from edgeprune.core.extras import require_extra
from edgeprune.core.files import atomic_directory, sha256_file, write_json_atomic
from edgeprune.core.progress import Progress, advance, prefixed, say
from edgeprune.engines.quantize_data import CalibrationImages, batched_inputs, input_spec, read_calibration

INT8 = "int8"
FP32 = "fp32"
DEFAULT_SAMPLES = 300
CHECK_INPUTS = 8  # held-out calibration images the int8 graph is compared on against its fp32 parent
SCHEME = {"tool": "nncf", "model_type": "transformer", "preset": "mixed (NNCF's transformer default)",
          "weights": "int8 symmetric, per output channel", "activations": "int8, per tensor",
          "smooth_quant": False, "fast_bias_correction": True}
# --overflow-fix -> NNCF's OverflowFix: which layers' weights use half the int8 range (see the module doc)
OVERFLOW_FIXES = {"all": "enable", "first-layer": "first_layer_only", "none": "disable"}
DEFAULT_OVERFLOW_FIX = "all"
# loggers whose INFO/WARNING lines would break a command's one-line output: NNCF's own, and torch's
# CUDA probe that NNCF's backend detection triggers where torch is installed.
_NOISY_LOGGERS = ("nncf", "torch.utils.cpp_extension")


def require_nncf() -> Any:
    require_extra("quantize", "int8 quantization (edgeprune quantize)")
    import nncf

    return nncf


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF's INFO lines and its own rich progress bars off for the call (progress goes through ours).

    NNCF draws its bars on rich's global console; ``rich.reconfigure`` swaps that console's settings
    in place, so they are put back the same way afterwards."""
    import rich

    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    shared = rich.get_console()
    saved = dict(shared.__dict__)
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        rich.reconfigure(quiet=True)
        yield
    finally:
        shared.__dict__ = saved
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def float_cone_violations(model: Any, names: set[str]) -> list[str]:
    """Nodes of ``names`` (the decision subgraph) that read a DequantizeLinear output, i.e. int8 data."""
    producer = {out: node for node in model.graph.node for out in node.output}
    return sorted({node.name for node in model.graph.node if node.name in names
                   for tensor in node.input if tensor in producer and producer[tensor].op_type == "DequantizeLinear"})


def check_overflow_fix(overflow_fix: str) -> str:
    if overflow_fix not in OVERFLOW_FIXES:
        raise EdgepruneError(f"--overflow-fix must be one of {', '.join(OVERFLOW_FIXES)}, got {overflow_fix!r}")
    return overflow_fix


def quantize_model(model: Any, feeds: Sequence[dict[str, np.ndarray]], progress: Optional[Progress] = None,
                   overflow_fix: str = DEFAULT_OVERFLOW_FIX) -> tuple[Any, int]:
    """(The QDQ int8 graph of ``model`` calibrated on ``feeds``, how many decision nodes stayed float)."""
    nncf = require_nncf()
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
                                                       OverflowFix)

    from edgeprune.backends.precision import decision_nodes

    keep = decision_nodes(model)
    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1),  # off: see the module doc
        overflow_fix=OverflowFix(OVERFLOW_FIXES[check_overflow_fix(overflow_fix)]))
    done = [0]

    def counted(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done[0] += 1  # NNCF walks the data once per statistics pass
        advance(progress, done[0], None, f"NNCF: calibration pass over {len(feeds)} inputs")
        return feed

    with _quiet_nncf():
        try:
            quantized = nncf.quantize(model, nncf.Dataset(list(feeds), counted), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(feeds), advanced_parameters=advanced,
                                      ignored_scope=nncf.IgnoredScope(names=sorted(keep), validate=False))
        except Exception as exc:  # NNCF raises its own error types, ONNX Runtime's and plain RuntimeErrors
            raise EdgepruneError(f"NNCF could not quantize the graph: {first_line(exc)}") from None
    bad = float_cone_violations(quantized, keep)
    if bad:  # an NNCF change could move a quantizer into the decisions: refuse rather than ship it
        raise EdgepruneError(f"NNCF quantized the inputs of token-decision node {bad[0]} ({len(bad)} in all); "
                             "the int8 graph would change which tokens are kept")
    quantized.producer_name = "edgeprune+nncf"
    return quantized, len(keep)


def _check(fp32: Any, int8: Any, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The int8 graph against its fp32 parent in ONNX Runtime on held-out inputs (relative error, choices)."""
    from edgeprune.backends.precision import compare_precision

    report = compare_precision(fp32, int8, list(feeds), threads=2)
    return {"inputs": report["inputs"], "metric": "max_abs_diff / max_abs_reference (ONNX Runtime, int8 vs fp32)",
            "relative_error": report["relative_error"], "max_relative_error": report["max_relative_error"],
            "choice_agreement": report["choice_agreement"], "choice_tensors": report["choice_tensors"]}


def _quantize_into(folder: Path, artifact: Artifact, calib: CalibrationImages, normalization: Optional[tuple],
                   overflow_fix: str, progress: Optional[Progress]) -> dict[str, Any]:
    """Write ``artifact``'s int8 twin (model.onnx + manifest.json) into the folder; returns its manifest."""
    import nncf
    import onnx

    from edgeprune.backends.graph import load_graph, op_counts
    from edgeprune.core.machine import library_versions

    if artifact.precision != FP32:
        raise EdgepruneError(f"{artifact.path} is already quantized ({artifact.precision}); quantize its fp32 parent")
    shape, mean, std = input_spec(artifact.manifest) if normalization is None else (
        input_spec({**artifact.manifest, "model": {"input": {"mean": normalization[0], "std": normalization[1]}}}))
    if len(mean) not in (1, shape[1]) or len(std) not in (1, shape[1]):
        raise EdgepruneError(f"{artifact.name}: mean/std need 1 or {shape[1]} values, got {len(mean)} and {len(std)}")
    name = artifact.manifest["inputs"][0]["name"]
    feeds = [{name: x} for x in batched_inputs(calib.images, shape, mean, std)]
    held_out = [{name: x} for x in batched_inputs(calib.extra, shape, mean, std)] or feeds[:CHECK_INPUTS]
    fp32 = load_graph(artifact.onnx_path)
    say(progress, f"{artifact.name}: quantizing with NNCF on {len(calib.images)} calibration images")
    int8, kept_float = quantize_model(fp32, feeds, progress, overflow_fix)
    onnx.checker.check_model(int8)
    onnx.save(int8, str(folder / ONNX_FILE))
    say(progress, f"{artifact.name}: checking the int8 graph against fp32 on {len(held_out)} held-out inputs")
    check = _check(fp32, int8, held_out)
    parent = artifact.manifest
    manifest = copy.deepcopy(parent)
    manifest.pop("trt_lint", None)  # the lint of the fp32 graph; TensorRT does not build these graphs yet
    manifest["precision"] = INT8
    manifest["onnx"] = {"file": ONNX_FILE, "opset": parent["onnx"].get("opset"), "sha256": sha256_file(folder / ONNX_FILE),
                        "ops": op_counts(int8)}
    manifest["parity"] = {"reference": "the fp32 parent artifact", "metric": check["metric"], "max": check["max_relative_error"]}
    manifest["quantization"] = {
        **SCHEME, "overflow_fix": overflow_fix, "nncf": nncf.__version__,
        "parent": {"artifact": str(artifact.path.resolve()), "name": artifact.name,
                   "onnx_sha256": parent["onnx"]["sha256"], "parity": parent.get("parity")},
        "calibration": {**calib.describe(), "mean": mean, "std": std,
                        "preprocess": "resize to the input size, /255, (x - mean) / std (as the runtime)"},
        "float_nodes": kept_float, "check": check,
    }
    manifest["versions"] = {**(parent.get("versions") or {}), **library_versions(), "nncf": nncf.__version__}
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def channels_of(artifact: Artifact) -> int:
    return int(artifact.manifest["inputs"][0]["shape"][1])


def size_of(artifact: Artifact) -> tuple[int, int]:
    """(height, width) of the artifact's pixel input."""
    shape = artifact.manifest["inputs"][0]["shape"]
    return int(shape[2]), int(shape[3])


def quantize_artifact(artifact: Artifact | str | os.PathLike, calib: Optional[str | os.PathLike | CalibrationImages],
                      out: str | os.PathLike, *, samples: int = DEFAULT_SAMPLES, force: bool = False,
                      normalization: Optional[tuple[list[float], list[float]]] = None,
                      overflow_fix: str = DEFAULT_OVERFLOW_FIX, progress: Optional[Progress] = None) -> Artifact:
    """The int8 artifact of ``artifact`` at ``out``, calibrated on ``samples`` images of ``calib``
    (a folder of images, a video, an IDX file or folder, or images already read). ``normalization``:
    (mean, std) where the manifest records none. Nothing is left at ``out`` unless every step succeeds."""
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact, verify=True)
    check_overflow_fix(overflow_fix)
    require_nncf()
    if not isinstance(calib, CalibrationImages):
        calib = read_calibration(calib, samples, channels_of(artifact), extra=CHECK_INPUTS, size=size_of(artifact),
                                 progress=progress)
    with atomic_directory(out, overwrite=force) as tmp:
        _quantize_into(tmp, artifact, calib, normalization, overflow_fix, progress)
    return load_artifact(out, verify=True)


def quantize_set(engine_set: EngineSet | str | os.PathLike, calib: Optional[str | os.PathLike | CalibrationImages],
                 out: str | os.PathLike, *, samples: int = DEFAULT_SAMPLES, budgets: Optional[Sequence[float]] = None,
                 force: bool = False, normalization: Optional[tuple[list[float], list[float]]] = None,
                 overflow_fix: str = DEFAULT_OVERFLOW_FIX, progress: Optional[Progress] = None) -> EngineSet:
    """A new engine set at ``out`` whose members are quantized (only those of ``budgets`` when given: the
    others are copied as they are, so the set mixes precisions; ``set.json`` records each member's).
    The latency calibration is dropped: int8 members run at other speeds (``edgeprune calibrate`` it)."""
    import shutil

    if not isinstance(engine_set, EngineSet):
        engine_set = load_engine_set(engine_set, verify=True)
    chosen = _chosen_members(engine_set, budgets)
    check_overflow_fix(overflow_fix)
    require_nncf()
    if not isinstance(calib, CalibrationImages):
        first = engine_set.members[0].artifact  # the members of a set share the model, so its input size
        calib = read_calibration(calib, samples, channels_of(first), extra=CHECK_INPUTS, size=size_of(first), progress=progress)
    manifest = copy.deepcopy(engine_set.manifest)
    manifest["calibration"] = None
    with atomic_directory(out, overwrite=force) as tmp:
        for index, (member, entry) in enumerate(zip(engine_set.members, manifest["members"])):
            advance(progress, index, len(engine_set.members), f"member {member.path}")
            folder = tmp / member.path
            if member.path in chosen and member.artifact.precision == FP32:
                folder.mkdir()
                written = _quantize_into(folder, member.artifact, calib, normalization, overflow_fix,
                                         prefixed(progress, member.path))
                entry["precision"], entry["onnx_sha256"] = INT8, written["onnx"]["sha256"]
            else:
                shutil.copytree(member.artifact.path, folder)
                entry["precision"] = member.artifact.precision
        manifest["quantization"] = {"parent": str(engine_set.path.resolve()), "calibration": calib.describe(),
                                    "members": sorted(chosen)}
        write_json_atomic(tmp / SET_FILE, manifest)
    return load_engine_set(out, verify=True)


def _chosen_members(engine_set: EngineSet, budgets: Optional[Sequence[float]]) -> set[str]:
    if budgets is None:
        return {m.path for m in engine_set.members}
    chosen = set()
    for budget in budgets:
        match = [m for m in engine_set.members if abs(m.budget - budget) < 1e-9]
        if not match:
            have = ", ".join(f"{m.budget:g}" for m in engine_set.members)
            raise EdgepruneError(f"--budgets {budget:g}: {engine_set.path} has no such member (it has {have})")
        chosen.add(match[0].path)
    return chosen


def default_quantized_out(source: Path) -> Path:
    return source.parent / f"{source.name}.int8"


__all__ = ["CHECK_INPUTS", "DEFAULT_OVERFLOW_FIX", "DEFAULT_SAMPLES", "FP32", "INT8", "OVERFLOW_FIXES",
           "check_overflow_fix", "default_quantized_out",
           "float_cone_violations", "quantize_artifact", "quantize_model", "quantize_set", "require_nncf"]
