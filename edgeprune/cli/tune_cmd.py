"""``edgeprune tune``: search a token plan on calibration images, write it for ``export --plan``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeprune.cli.common import MODEL_HELP, CheckpointOpt, ImgSizeOpt, ModelArgOpt, ThreadsOpt
from edgeprune.core.console import console, out
from edgeprune.core.progress import rich_bar, rich_status


def tune(
    model: str = typer.Argument(..., help=MODEL_HELP),
    calib: Path = typer.Option(..., "--calib", help="Calibration images: a folder with one subfolder per class (labels = sorted folder names), a flat folder (unlabelled: agreement with the unreduced model is the score) or an IDX dataset folder (MNIST/Fashion-MNIST: train split calibrates, test split is the hold-out)."),
    out_file: Path = typer.Option(..., "--out", "-o", help="Plan file to write (JSON), for `edgeprune export MODEL --plan PLAN.json`."),
    flops: Optional[float] = typer.Option(None, "--flops", help="Target MACs ratio vs the unreduced model."),
    latency: Optional[float] = typer.Option(None, "--latency", help="Target latency ratio on this machine (ONNX Runtime, batch 1; per-block latency calibrated once and cached)."),
    methods: str = typer.Option("tome,tofu,prune-merge", "--methods", help="Reducers to search: tome, tofu (prune early, MLERP merge late), prune-merge (importance-ranked prune then merge), evit, gsp."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean of 0..1 pixels, e.g. 0.485,0.456,0.406 (default: the model's own config)."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std of 0..1 pixels (default: the model's own config)."),
    fit: str = typer.Option("resize", "--fit", help="resize (shorter side to the model's size, centre crop) or pad (centre on black; e.g. 28x28 digits into a 32x32 model)."),
    calib_count: int = typer.Option(1000, "--calib-count", min=1, help="Calibration images used by the search."),
    holdout_count: int = typer.Option(1000, "--holdout", min=-1, help="Hold-out images (disjoint from calibration) to report the chosen plan on; 0 = none, -1 = all the rest (IDX: the whole test split)."),
    tile: Optional[str] = typer.Option(None, "--tile", help="Round every candidate's reduction points to the engine's tile: a token count or an engine such as openvino-bf16 (see docs/engines.md); default 1 = off."),
    engine: Optional[str] = typer.Option(None, "--engine", help="The engine the plan is for (onnxruntime-fp32, openvino-bf16, ...): the default --tile, and where a --latency target is measured. Default onnxruntime-fp32."),
    prefix_only: Optional[bool] = typer.Option(None, "--prefix-only-last/--no-prefix-only-last", help="Run the last block for the CLS/prefix tokens alone (exact; default on when the head reads only those)."),
    budget_minutes: float = typer.Option(12.0, "--budget-minutes", min=0.5, help="Time the search aims to finish in; sets how many images screen the candidates."),
    batch_size: int = typer.Option(50, "--batch-size", min=1, help="Images per forward pass during the search."),
    checkpoint: Optional[Path] = CheckpointOpt,
    model_arg: list[str] = ModelArgOpt,
    img_size: Optional[int] = ImgSizeOpt,
    threads: int = ThreadsOpt,
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where scores are cached so an interrupted search resumes (default ~/.cache/edgeprune/tune, or $EDGEPRUNE_CACHE_DIR/tune)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
) -> None:
    """Search per-block token counts, reduction points and reducer on calibration images under a MACs or latency target; write the plan for `export --plan`."""
    from edgeprune.core.extras import require_extra

    require_extra("export", "edgeprune tune")
    import torch

    from edgeprune.core.errors import EdgepruneError
    from edgeprune.families import adapter_for
    from edgeprune.core.files import write_text_atomic
    from edgeprune.families.loading import load_model
    from edgeprune.families.weights import parse_model_args
    from edgeprune.tune import Preprocess, load_calibration
    from edgeprune.tune import tune as run_tune

    started = time.perf_counter()
    if (flops is None) == (latency is None):
        raise EdgepruneError("give exactly one target: --flops or --latency")
    if out_file.exists() and not force:
        raise EdgepruneError(f"{out_file} exists (use --force to replace it)")
    if not out_file.parent.is_dir():
        raise EdgepruneError(f"folder of --out '{out_file.parent}' does not exist")
    if not calib.is_dir():
        raise EdgepruneError(f"calibration source '{calib}' is not a folder (an image folder or an IDX dataset folder)")
    from edgeprune.plan.tiles import parse_engine, plan_tile

    tile_tokens = plan_tile(tile, engine)
    engine_name = "-".join(parse_engine(engine)) if engine else None
    target = flops if flops is not None else latency
    if not 0 < target <= 1:
        raise EdgepruneError(f"the {'--flops' if flops is not None else '--latency'} target must be in (0, 1], got {target}")
    method_list = [m.strip().lower() for m in methods.split(",") if m.strip()]
    from edgeprune.tune.space import SEARCH_METHODS

    unknown = [m for m in method_list if m not in SEARCH_METHODS]
    if unknown or not method_list:
        raise EdgepruneError(f"--methods: cannot search {', '.join(unknown) or 'nothing'} (choose from {', '.join(SEARCH_METHODS)})")
    torch.set_num_threads(threads)
    with console.status("loading model"):
        net, info = load_model(model, checkpoint=checkpoint, model_args=parse_model_args(model_arg), img_size=img_size)
    adapter = adapter_for(net)
    spec = adapter.spec
    norm = _normalisation(mean, std, info, adapter)
    pre = Preprocess(tuple(spec.img_size), spec.in_chans, tuple(norm["mean"]), tuple(norm["std"]), fit)
    with console.status("reading calibration images") as status:
        calib_set, holdout = load_calibration(calib, pre, calib_count, holdout_count, progress=rich_status(status))
    console.print(f"calibration: {calib_set.description}; normalisation from {norm['source']}", highlight=False)

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("tuning", total=None)

        report = rich_bar(bar, task, set_total=True, log=lambda m: bar.console.print(m, highlight=False))

        def progress(done: int, total: Optional[int], message: str = "") -> None:
            report(done, total, message[:70] if total is not None else message)  # a step's name fits the bar

        result = run_tune(net, calib_set, flops=flops, latency=latency, methods=method_list, prefix_only_last=prefix_only,
                          holdout=holdout, budget_minutes=budget_minutes, batch_size=batch_size, threads=threads,
                          cache_dir=cache_dir, progress=progress, tile=tile_tokens, engine=engine_name)
    document = dict(result.plan.to_dict(), tune=dict(result.to_dict(), model=info, normalisation=norm))
    write_text_atomic(out_file, json.dumps(document, indent=1, default=str))
    _print_result(result, out_file, time.perf_counter() - started)


def _floats(text: str, flag: str) -> list[float]:
    from edgeprune.core.errors import EdgepruneError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EdgepruneError(f"{flag} expects comma-separated numbers, got '{text}'") from None


def _normalisation(mean: Optional[str], std: Optional[str], info: dict, adapter) -> dict:
    from edgeprune.core.errors import EdgepruneError

    if (mean is None) != (std is None):
        raise EdgepruneError("give --mean and --std together")
    if mean is not None:
        return {"mean": _floats(mean, "--mean"), "std": _floats(std, "--std"), "source": "--mean/--std"}
    found = info.get("input") or adapter.input_config()
    if not found:
        raise EdgepruneError("this model records no input normalisation; give --mean and --std (of 0..1 pixels)")
    as_list = lambda v: [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]  # noqa: E731
    return {"mean": as_list(found["mean"]), "std": as_list(found["std"]), "source": found.get("source", "model config")}


def _print_result(result, path: Path, seconds: float) -> None:
    from rich.markup import escape

    kind, target = next(iter(result.target.items()))
    cost_name = "MACs" if kind == "flops" else "predicted latency"
    table = Table(title=f"tune: best plans at {cost_name} <= {target}", title_justify="left")
    for col in ("plan", "keep per block", "MACs", "cost" if kind == "latency" else None, "calib KL", "calib top-1 / agreement"):
        if col:
            table.add_column(col)
    chosen = result.plan
    ranked = sorted((c for c in result.candidates if "full" in c.scores), key=lambda c: c.scores["full"]["kl"])
    for c in ranked:
        s = c.scores["full"]
        acc = f"{s['top1']:.4f}" if "top1" in s else f"{s['agreement']:.4f}"
        name = ("* " if c.plan == chosen else "  ") + (escape(c.label) if c is not result.reference else "constant r (export --schedule constant)")
        cells = [name, ",".join(map(str, c.plan.keep)) + (" +prefix-only last" if c.plan.prefix_only_last else ""), f"{c.plan.macs_ratio:.3f}"]
        if kind == "latency":
            cells.append(f"{c.cost:.3f}")
        table.add_row(*cells, f"{s['kl']:.5f}", acc)
    out.print(table)
    hold = result.holdout
    if hold:
        metric = "top1" if "top1" in hold["baseline"] else "agreement"
        base = hold["baseline"][metric]
        parts = [f"unreduced {base:.4f}", f"tuned {hold['tuned'][metric]:.4f} ({100 * (hold['tuned'][metric] - base):+.2f} pt)"]
        if "constant_r" in hold:
            parts.append(f"constant r {hold['constant_r'][metric]:.4f} ({100 * (hold['constant_r'][metric] - base):+.2f} pt)")
        out.print(f"hold-out {metric} on {hold['baseline']['n']} images: " + ", ".join(parts), highlight=False)
    info = result.info
    out.print(f"wrote {path} ({info['candidates']} candidates, screened on {info['screen_images']} images, "
              f"{info['resumed_scores']} scores resumed) in {seconds:.1f} s; export it with: edgeprune export MODEL --plan {path} --out DIR",
              highlight=False)
