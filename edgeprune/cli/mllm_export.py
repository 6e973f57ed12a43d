"""``edgeprune export LLAVA_FOLDER``: the vision front-end with visual-token selection (docs/mllm.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from rich.table import Table

from edgeprune.core.console import console, out
from edgeprune.core.errors import EdgepruneError


def export_mllm(folder: Path, out_dir: Path, *, method: str, tokens: Optional[int], query_tower: Optional[Path],
                crop_tokens: Optional[int], crops: int, option: list[str], batch: int, dynamic_batch: bool, opset: int,
                tolerance: float, force: bool, unused: dict[str, Any], started: float) -> None:
    from edgeprune.core.files import check_target
    from edgeprune.families.weights import parse_model_args
    from edgeprune.mllm.graph import QUERY_METHODS, check_options
    from edgeprune.mllm.llava import check_llava_folder

    check_llava_folder(folder)
    if unused:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in unused)
        raise EdgepruneError(f"{flags} do not apply to LLaVA models (use --method and --tokens)")
    if method == "tome":  # the CLI's default for ViTs; a multimodal export names its method
        raise EdgepruneError("choose --method for a LLaVA model: none, visionzip, gsp, qcsp or script")
    if method != "none" and tokens is None:
        raise EdgepruneError(f"--method {method} needs --tokens K (visual tokens kept)")
    if method in QUERY_METHODS and query_tower is None:
        raise EdgepruneError(f"--method {method} is conditioned on a question: pass --query-tower CLIP_OR_SIGLIP_FOLDER")
    if query_tower is not None and not query_tower.is_dir():
        raise EdgepruneError(f"--query-tower '{query_tower}' is not a folder")
    check_target(out_dir, force)
    options = parse_model_args(option, "--option")
    from edgeprune.mllm.llava import llava_parts, load_llava

    with console.status("loading model"):
        parts = llava_parts(load_llava(folder))
    check_options(method, tokens if tokens is not None else parts.num_patches, parts.num_patches, dict(options))
    from edgeprune.core.progress import rich_status
    from edgeprune.mllm.export import export_visual

    pieces = crops + 1 if parts.family == "llava_next" else 1
    with console.status("exporting") as status:
        path = export_visual(parts, method, out_dir, tokens=tokens, crop_tokens=crop_tokens, pieces=pieces, options=options,
                             query_folder=query_tower if method in QUERY_METHODS else None, batch=batch,
                             dynamic_batch=dynamic_batch, opset=opset, tolerance=tolerance,
                             model_info={"path": str(folder)}, overwrite=force, progress=rich_status(status))
    print_visual_summary(path, time.perf_counter() - started)


def print_visual_summary(path: Path, seconds: float) -> None:
    from edgeprune.core.files import read_json

    manifest = read_json(path / "manifest.json")
    table = Table(title=f"exported {manifest['model'].get('path', '')} ({manifest['method']})", show_header=False)
    table.add_row("artifact", str(path / manifest["onnx"]["file"]))
    table.add_row("visual tokens", f"{manifest['patch_tokens']} patches -> {manifest['visual_tokens']} tokens for the LLM")
    for item in manifest["inputs"]:
        table.add_row(f"input {item['name']}", str(item["shape"]))
    for item in manifest["outputs"]:
        table.add_row(f"output {item['name']}", str(item["shape"]))
    if manifest.get("query"):
        q = manifest["query"]
        table.add_row("query tower", f"{path / q['folder']} ({q['family']}, {q['query_dim']} wide)")
    parity = manifest["parity"]
    table.add_row("parity", f"max relative error {parity['max']:.2e} (tolerance {parity['tolerance']:.0e}); indices identical")
    lint = manifest["trt_lint"]
    verdict = "clean" if not lint["errors"] and not lint["warnings"] else f"{lint['errors']} errors, {lint['warnings']} warnings"
    table.add_row("TensorRT lint", f"{verdict} (TensorRT {lint['trt']})")
    table.add_row("time", f"{seconds:.1f} s")
    out.print(table)
