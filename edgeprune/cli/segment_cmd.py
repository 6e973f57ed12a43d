"""``edgeprune segment``: label and overlay PNGs for images, from a segmenter folder or an exported artifact."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgeprune.cli.common import REAL_MODEL, DeviceOpt, PrecisionOpt, ProviderOpt, check_engine_options, default_model
from edgeprune.core.console import console, out
from edgeprune.core.errors import EdgepruneError
from edgeprune.video.segmenter import Segmenter, load_segmenter_model, prepare_batch

LABELS_SUFFIX, OVERLAY_SUFFIX = "_labels.png", "_overlay.png"


def segment(
    images: list[Path] = typer.Argument(..., help="Images to segment (PNG, JPEG, ...; RGB, see docs/cli.md for the channel rule)."),
    model: Optional[Path] = typer.Option(None, "--model", help="A timm-vit-seg segmenter folder (config.json) or an artifact exported from one (manifest.json). Default: the CamVid driving-scene model, models/camvid_seg (11 street classes)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for <stem>_labels.png and <stem>_overlay.png (created if missing)."),
    threads: int = typer.Option(2, "--threads", min=1, help="Intra-op threads (PyTorch or ONNX Runtime)."),
    provider: str = ProviderOpt,
    precision: Optional[str] = PrecisionOpt,
    device: Optional[str] = DeviceOpt,
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Weight of the class colour in the overlay."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the per-image summary as JSON here."),
) -> None:
    """Segment images: a class-id label PNG and a colour overlay PNG per image, at its original resolution."""
    from edgeprune.core.files import write_text_atomic
    from edgeprune.imaging.images import class_fractions, overlay, read_rgb, save_png_atomic, upsample_argmax

    check_engine_options(provider, precision, device)
    if model is None:
        model = default_model(real=True)
        if not model.is_dir():
            raise EdgepruneError(f"the default model {REAL_MODEL} is not here; pass --model")
    paths = _unique(images)
    targets = _plan_outputs(paths, out_dir, force)
    if json_out is not None and not json_out.parent.is_dir():
        raise EdgepruneError(f"cannot write --json {json_out}: {json_out.parent} is not a directory")
    with console.status("checking images"):
        for p in paths:  # decode everything up front: a bad file fails the run before anything is written
            read_rgb(p)
    net = load_segmenter_model(model, threads, provider, precision, device)
    if net.engine_reason:
        from edgeprune.backends.runners import auto_line

        console.print(auto_line(net.engine, net.engine_reason), highlight=False, soft_wrap=True)
    try:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgepruneError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
        step = net.batch or 1
        net.run(np.zeros((step, 3, *net.size), np.float32))  # warm-up, so the first image's time is not inflated
        rows: list[dict[str, Any]] = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("segmenting", total=len(paths))
            for start in range(0, len(paths), step):
                chunk = paths[start:start + step]
                bar.update(task, description=chunk[0].name)
                t0 = time.perf_counter()
                originals = [read_rgb(p) for p in chunk]
                pixels = prepare_batch(originals, net)
                t1 = time.perf_counter()
                logits = net.run(pixels)[: len(chunk)]
                if logits.shape[1] != len(net.classes):
                    raise EdgepruneError(f"--model {model} outputs {logits.shape[1]} classes but records {len(net.classes)}")
                infer_ms = (time.perf_counter() - t1) * 1e3 / len(chunk)
                prep_ms = (t1 - t0) * 1e3 / len(chunk)
                for path, image, lg in zip(chunk, originals, logits):
                    t2 = time.perf_counter()
                    h, w = image.shape[:2]
                    labels = upsample_argmax(np.asarray(lg, np.float32), h, w)
                    label_path, overlay_path = targets[path]
                    _save(save_png_atomic, label_path, labels)
                    _save(save_png_atomic, overlay_path, overlay(image, labels, net.palette, alpha))
                    fractions = class_fractions(labels, len(net.classes))
                    rows.append({
                        "image": str(path), "width": w, "height": h,
                        "labels": str(label_path), "overlay": str(overlay_path),
                        "classes": {net.classes[k]: round(float(f), 6) for k, f in enumerate(fractions) if f > 0},
                        "infer_ms": round(infer_ms, 3),
                        "total_ms": round(prep_ms + infer_ms + (time.perf_counter() - t2) * 1e3, 3),
                    })
                    bar.advance(task)
    finally:
        net.close()
    _print_summary(rows, net, model)
    if json_out is not None:
        data = {"model": str(model), "engine": net.kind, "provider": net.provider, "threads": threads, "input_size": list(net.size), "classes": net.classes, "alpha": alpha, "images": rows}
        text = json.dumps(data, indent=2) + "\n"
        _save(write_text_atomic, json_out, text)
        console.print(f"wrote {json_out}", highlight=False)


def _save(writer: Callable[[Path, Any], None], path: Path, data: Any) -> None:
    try:
        writer(path, data)
    except OSError as exc:
        raise EdgepruneError(f"cannot write {path}: {exc.strerror or exc}") from None


def _unique(images: list[Path]) -> list[Path]:
    """Inputs in order, the same file named twice kept once."""
    seen, paths = set(), []
    for p in images:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            paths.append(p)
    return paths


def _plan_outputs(paths: list[Path], out_dir: Path, force: bool) -> dict[Path, tuple[Path, Path]]:
    """Output paths per input; refuses clashes (case-insensitively, for macOS/Windows) and inputs as targets."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgepruneError(f"--out {out_dir} exists and is not a directory")
    by_stem: dict[str, Path] = {}
    targets: dict[Path, tuple[Path, Path]] = {}
    inputs = {p.resolve() for p in paths}
    existing = []
    for p in paths:
        stem = p.stem
        if stem.casefold() in by_stem:
            raise EdgepruneError(
                f"{by_stem[stem.casefold()]} and {p} would both write {stem}{LABELS_SUFFIX}; rename one or segment them separately")
        by_stem[stem.casefold()] = p
        pair = (out_dir / f"{stem}{LABELS_SUFFIX}", out_dir / f"{stem}{OVERLAY_SUFFIX}")
        for t in pair:
            if t.resolve() in inputs:
                raise EdgepruneError(f"{t} is one of the input images; choose another --out")
            if t.exists():
                existing.append(t)
        targets[p] = pair
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise EdgepruneError(f"{existing[0]} already exists{more}; pass --force to overwrite")
    return targets


def _print_summary(rows: list[dict[str, Any]], net: Segmenter, model: Path) -> None:
    h, w = net.size
    engine = net.kind if net.provider == net.kind else f"{net.kind}: {net.provider}"
    table = Table(title=f"{len(rows)} image{'s' if len(rows) != 1 else ''}, {model} ({engine}, input {w}x{h})")
    for col, justify in (("image", "left"), ("size", "right"), ("classes (pixel fraction)", "left"), ("ms/image", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        found = sorted(r["classes"].items(), key=lambda kv: -kv[1])
        table.add_row(Path(r["image"]).name, f"{r['width']}x{r['height']}",
                      ", ".join(f"{name} {frac:.1%}" for name, frac in found), f"{r['infer_ms']:.1f}")
    out.print(table)
