"""``edgeprune quantize``: an int8 (QDQ) artifact or engine set from an fp32 one and calibration images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from edgeprune.core.console import console, out
from edgeprune.core.progress import rich_status


def _floats(option: str, text: Optional[str]) -> Optional[list[float]]:
    from edgeprune.core.errors import EdgepruneError

    if text is None:
        return None
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EdgepruneError(f"{option} expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise EdgepruneError(f"{option} expects at least one number")
    return values


def quantize(
    source: Path = typer.Argument(..., help="An fp32 artifact folder (edgeprune export) or engine set (export --budgets)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration data, preprocessed as the runtime feeds frames: a folder of images (png, jpg; subfolders too), a video file, or an IDX image file or folder (MNIST, Fashion-MNIST)."),
    samples: int = typer.Option(300, "--samples", "-n", help="Calibration images to use (a seeded random choice; video: frames evenly spaced)."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="Engine set only: quantize just these members (e.g. 1.0,0.75); the others are copied fp32, so the set mixes precisions."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Input mean per channel (comma-separated), for an artifact whose manifest records none."),
    std: Optional[str] = typer.Option(None, "--std", help="Input std per channel (comma-separated), with --mean."),
    overflow_fix: str = typer.Option("all", "--overflow-fix", help="Which layers' weights use 7 of the 8 bits: all (the default; CPUs without VNNI/AMX, such as AVX2-only ones, saturate full-range int8 weights), first-layer (NNCF's default) or none (targets with VNNI/AMX)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write (default: SOURCE.int8 beside SOURCE)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Quantize an artifact (or every member of an engine set) to int8 with NNCF: a QDQ ONNX graph, token decisions kept float.

    Build the result with `edgeprune build OUT --backend openvino --precision int8` (or --backend ort-cpu).
    The manifest records precision int8, the calibration source and sample count, and the fp32 parent's ONNX sha256.
    """
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.artifacts.engine_set import is_engine_set, load_engine_set, parse_budgets
    from edgeprune.core.errors import EdgepruneError
    from edgeprune.core.files import check_target
    from edgeprune.engines.quantize import (check_overflow_fix, default_quantized_out, quantize_artifact, quantize_set,
                                            require_nncf)
    from edgeprune.engines.quantize_data import CALIB_NEEDED

    started = time.perf_counter()
    if calib is None:
        raise EdgepruneError(CALIB_NEEDED)
    means, stds = _floats("--mean", mean), _floats("--std", std)
    if (means is None) != (stds is None):
        raise EdgepruneError("--mean and --std go together")
    normalization = (means, stds) if means is not None else None
    check_overflow_fix(overflow_fix)
    if not source.is_dir():
        raise EdgepruneError(f"{source} is not an artifact folder or engine set (no such folder)")
    is_set = is_engine_set(source)
    if budgets is not None and not is_set:
        raise EdgepruneError("--budgets picks members of an engine set; this is a single artifact")
    loaded: Any = load_engine_set(source, verify=True) if is_set else load_artifact(source, verify=True)
    target = out_dir or default_quantized_out(source)
    check_target(target, force)
    require_nncf()
    with console.status(f"quantizing {source}") as status:
        progress = rich_status(status)
        if is_set:
            chosen = parse_budgets(budgets) if budgets is not None else None
            result = quantize_set(loaded, calib, target, samples=samples, budgets=chosen, force=force,
                                  normalization=normalization, overflow_fix=overflow_fix, progress=progress)
            rows = [(m.path, m.artifact) for m in result.members]
        else:
            artifact = quantize_artifact(loaded, calib, target, samples=samples, force=force,
                                         normalization=normalization, overflow_fix=overflow_fix, progress=progress)
            rows = [(artifact.name, artifact)]
    print_quantized(rows, f"wrote {target} in {time.perf_counter() - started:.1f} s")
    out.print(f"build it: edgeprune build {target} --backend openvino --precision int8", highlight=False, soft_wrap=True)


def print_quantized(rows: list[tuple[str, Any]], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("member", "precision", "calibration", "float nodes", "Q/DQ nodes", "int8 vs fp32 (max rel.)", "same choices"):
        table.add_column(col, overflow="fold")
    for name, artifact in rows:
        m = artifact.manifest
        q = m.get("quantization")
        if not q:
            table.add_row(name, m.get("precision", "fp32"), "-", "-", "-", "-", "-")
            continue
        ops, check, cal = m["onnx"].get("ops", {}), q["check"], q["calibration"]
        choices = f"{100 * check['choice_agreement']:.1f} %" if check["choice_tensors"] else "-"
        table.add_row(name, m["precision"], f"{cal['samples']} {cal['kind']}", str(q["float_nodes"]),
                      f"{ops.get('QuantizeLinear', 0)}/{ops.get('DequantizeLinear', 0)}",
                      f"{check['max_relative_error']:.2e} on {check['inputs']}", choices)
    out.print(table)
