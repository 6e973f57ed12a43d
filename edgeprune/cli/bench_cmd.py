"""``edgeprune bench``: artifacts timed interleaved in one run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgeprune.cli.common import BatchOpt, DeviceOpt, PrecisionOpt, ProviderOpt, ThreadsOpt, check_engine_options
from edgeprune.core.console import console, out
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json
from edgeprune.core.progress import rich_bar

if TYPE_CHECKING:
    from edgeprune.measure.seg_eval import EvalSet


def bench(
    artifacts: Optional[list[Path]] = typer.Argument(None, help="Artifact directories to time against each other."),
    batch: int = BatchOpt,
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Timed rounds; each runs every artifact once, in shuffled order (default 50; 10 with --prefill)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed runs per artifact first (default 5; 1 with --prefill)."),
    settle: Optional[int] = typer.Option(None, "--settle", help="Untimed runs before each timed run (lets the previous session's threads go quiet; default 2, 1 with --prefill)."),
    threads: int = ThreadsOpt,
    provider: str = ProviderOpt,
    precision: Optional[str] = PrecisionOpt,
    device: Optional[str] = DeviceOpt,
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Artifact to compare against (default: the method 'none' one, else the largest)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a latency-vs-MACs PNG here (plus an accuracy or mIoU panel when given)."),
    accuracy: Optional[Path] = typer.Option(None, "--accuracy", help="JSON {artifact name: accuracy} to add to the table and plot."),
    eval_spec: Optional[str] = typer.Option(
        None, "--eval", metavar="scenes[:N]|camvid[:SPLIT[:N]]",
        help="Score segmentation artifacts through ONNX Runtime on N held-out procedural scenes (default 200; the "
             "scenes model) or on CamVid frames (default: the 233 test frames; the CamVid model): adds mIoU and "
             "mIoU kept (vs the baseline) to the table, JSON and plot. Not timed."),
    prefill: Optional[Path] = typer.Option(
        None, "--prefill", metavar="LLAVA_FOLDER",
        help="Instead of artifacts: time to first token of this LLaVA model (save_pretrained folder), unpruned vs "
             "--method at each of --tokens: vision graph in ONNX Runtime + splice + LLM prefill in PyTorch, "
             "interleaved, with a predicted speedup for a 7B LLM (see edgeprune.mllm.prefill)."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="With --prefill: visual tokens kept, comma-separated (default 64,128,192)."),
    method: Optional[str] = typer.Option(None, "--method", help="With --prefill: the pruning method: visionzip (default), gsp, qcsp, script."),
    prompt_tokens: Optional[int] = typer.Option(None, "--prompt-tokens", help="With --prefill: text tokens in the prompt besides the image (default 32)."),
    work: Optional[Path] = typer.Option(None, "--work", help="With --prefill: folder for the exported vision graphs, "
                                        "reused on a rerun (default: out/prefill-MODEL_FOLDER_NAME)."),
) -> None:
    """Time artifacts interleaved at a batch size: p50/p90/p99, throughput, speedup, realized vs predicted.
    With --prefill LLAVA_FOLDER: end-to-end time to first token of a LLaVA model with visual-token pruning."""
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.core.files import write_json_atomic

    if plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise EdgepruneError("--plot needs matplotlib (in the 'export' extra): pip install matplotlib")
    for target in (json_out, plot):  # before minutes of timing, not after
        if target is not None and not target.resolve().parent.is_dir():
            raise EdgepruneError(f"cannot write {target}: folder {target.parent} does not exist")
    if prefill is not None:
        if artifacts:
            raise EdgepruneError("give artifact directories or --prefill FOLDER, not both")
        unused = [flag for flag, given in (("--batch", batch != 1), ("--provider", provider != "cpu"),
                                           ("--precision", precision), ("--device", device),
                                           ("--baseline", baseline), ("--plot", plot), ("--accuracy", accuracy),
                                           ("--eval", eval_spec)) if given]
        if unused:
            raise EdgepruneError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to --prefill")
        _prefill(prefill, tokens or "64,128,192", method or "visionzip", 32 if prompt_tokens is None else prompt_tokens,
                 10 if rounds is None else rounds, 1 if warmup is None else warmup,
                 1 if settle is None else settle, threads, work, json_out)
        return
    if not artifacts:
        raise EdgepruneError("give artifact directories or --prefill FOLDER")
    only_prefill = [flag for flag, value in (("--tokens", tokens), ("--method", method), ("--prompt-tokens", prompt_tokens),
                                             ("--work", work)) if value is not None]
    if only_prefill:
        raise EdgepruneError(f"{', '.join(only_prefill)} {'applies' if len(only_prefill) == 1 else 'apply'} only with --prefill FOLDER")
    rounds = 50 if rounds is None else rounds
    warmup = 5 if warmup is None else warmup
    settle = 2 if settle is None else settle
    from edgeprune.backends.runners import auto_line
    from edgeprune.measure.bench import benchmark
    from edgeprune.measure.calibrate import resolve_engine

    check_engine_options(provider, precision, device)
    engine, reason = resolve_engine(None, provider, precision, device)  # artifacts carry no calibration to compare
    if reason:
        console.print(auto_line(engine, reason), highlight=False, soft_wrap=True)

    eval_set = _parse_eval(eval_spec)
    loaded = [load_artifact(a) for a in artifacts]
    acc = _read_accuracy(accuracy)
    if eval_set:
        from edgeprune.measure.bench import pick_baseline

        base = pick_baseline(loaded, baseline)  # bad --baseline or --batch fail before the evaluation
        for a in loaded:
            a.input_shape(batch)
        scores = _evaluate(loaded, eval_set, threads, engine)
    else:
        scores = None
    with Progress(TextColumn("timing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("rounds", total=rounds)
        result = benchmark(
            loaded, batch=batch, rounds=rounds, warmup=warmup, threads=threads, provider=engine,
            baseline=baseline, settle=settle, progress=rich_bar(bar, task),
        )
    runs = ", ".join(result.providers)
    table = Table(title=f"batch {batch}, {threads} threads, {engine.describe()} ({runs}), {rounds} interleaved rounds; "
                        f"baseline {result.baseline}")
    columns = ["artifact", "method", "tokens", "MACs", "p50 ms", "p90 ms", "p99 ms", "img/s", "speedup", "predicted", "realized/pred"]
    with_model = any(r.latency_model_speedup for r in result.rows)
    if with_model:
        columns.append("latency model")
    if acc:
        columns.append("accuracy")
    if scores:
        miou, kept = _miou_columns(scores, base)
        columns += ["mIoU", "mIoU kept"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("artifact", "method") else "right")
    for i, r in enumerate(result.rows):
        cells = [r.name, r.method, str(r.final_tokens), f"{r.macs_ratio:.3f}", f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}",
                 f"{r.p99_ms:.2f}", f"{r.throughput:.1f}", f"{r.speedup:.2f}x", f"{r.predicted_speedup:.2f}x", f"{r.realized_vs_predicted:.2f}"]
        if with_model:
            cells.append(f"{r.latency_model_speedup:.2f}x" if r.latency_model_speedup else "-")
        if acc:
            cells.append(f"{acc[r.name]:.4g}" if r.name in acc else "-")
        if scores:
            cells += [f"{miou[i]:.4f}", f"{kept[i]:.1%}" if kept[i] is not None else "-"]
        table.add_row(*cells)
    out.print(table)
    if json_out:
        data = result.to_dict()
        if acc:
            data["accuracy"] = acc
        if scores:
            for i, row in enumerate(data["rows"]):
                row.update(miou=miou[i], miou_kept=kept[i])
            data["eval"] = {"spec": eval_spec, "data": eval_set.describe(), "images": scores[0]["n"],
                            "results": [{"name": r.name, **s} for r, s in zip(result.rows, scores)]}
        write_json_atomic(json_out, data)
        console.print(f"wrote {json_out}")
    if plot:
        from edgeprune.measure.plotting import plot_bench

        if scores:
            named = {r.name: miou[i] for i, r in enumerate(result.rows)}
            plot_bench(result, plot, named, accuracy_label=f"mIoU ({eval_set.describe()})")
        else:
            plot_bench(result, plot, acc)
        console.print(f"wrote {plot}")


def _prefill(folder: Path, tokens: str, method: str, prompt_tokens: int, rounds: int, warmup: int, settle: int,
             threads: int, work: Optional[Path], json_out: Optional[Path]) -> None:
    from edgeprune.core.extras import require_extra

    require_extra("export", "bench --prefill (LLaVA in PyTorch)")
    from edgeprune.core.files import write_json_atomic
    from edgeprune.cli.common import parse_int_list
    from edgeprune.mllm.llava import load_llava
    from edgeprune.mllm.prefill import check_prefill_args, prefill_bench

    ks = parse_int_list(tokens, "--tokens") or []
    if prompt_tokens < 1 or rounds < 1 or warmup < 0 or settle < 0:
        raise EdgepruneError("--prompt-tokens and --rounds must be >= 1, --warmup and --settle >= 0")
    model = load_llava(folder)  # bad folders and K fail here, in one line, before any export or timing
    check_prefill_args(model, ks, method)
    work = work if work is not None else Path("out") / f"prefill-{folder.resolve().name}"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("preparing", total=rounds)
        result = prefill_bench(model, ks, method, prompt_tokens, rounds, threads, work_dir=work, warmup=warmup,
                               settle=settle, source=str(folder), progress=rich_bar(bar, task))
    cfg = result["config"]
    table = Table(title=f"time to first token, {cfg['patch_tokens']} patch tokens, {prompt_tokens} text tokens, "
                        f"LLM {cfg['llm']['layers']}x{cfg['llm']['hidden']}; {result['threads']['torch']} threads, {rounds} interleaved rounds")
    columns = ["variant", "K", "vision ms", "splice ms", "prefill ms", "TTFT ms", "speedup", "7B TTFT s", "7B speedup"]
    for col in columns:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row, pred in zip(result["rows"], result["prediction"]["rows"]):
        table.add_row(row["name"], str(row["tokens"]), f"{row['vision_ms']:.2f}", f"{row['splice_ms']:.2f}",
                      f"{row['prefill_ms']:.2f}", f"{row['ttft_ms']:.2f}", f"{row['speedup']:.2f}x",
                      f"{pred['ttft_ms'] / 1e3:.2f}", f"{pred['speedup']:.2f}x")
    out.print(table)
    fit = result["fit"]
    console.print(f"7B prediction: prefill fitted as a + s*MACs (a = {fit['a_s'] * 1e3:.2f} ms, "
                  f"{fit['gmacs_per_s']:.1f} GMAC/s, max residual {fit['max_rel_residual']:.1%}), same per-MAC speed, fp32")
    if json_out:
        write_json_atomic(json_out, result)
        console.print(f"wrote {json_out}")


def _read_accuracy(path: Optional[Path]) -> dict[str, float]:
    if path is None:
        return {}
    try:
        data = read_json(path)
        return {str(k): float(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise EdgepruneError(f"--accuracy {path}: expected a JSON object {{artifact name: number}} ({exc})") from None


def _parse_eval(spec: Optional[str]) -> Optional[EvalSet]:
    if spec is None:
        return None
    from edgeprune.measure.seg_eval import parse_eval_spec

    return parse_eval_spec(spec)


def _evaluate(loaded: list, eval_set: EvalSet, threads: int, engine: Any) -> list[dict]:
    """Scores before timing, so a non-segmentation artifact fails before minutes of rounds."""
    from edgeprune.measure.seg_eval import eval_size, evaluate_artifact, segmentation_input

    infos = [segmentation_input(artifact, eval_set) for artifact in loaded]
    _, h, w = (int(v) for v in infos[0]["size"])
    scenes = eval_size(eval_set, h, w)
    scores = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("mIoU", total=scenes * len(loaded))
        for i, artifact in enumerate(loaded):
            bar.update(task, description=f"mIoU {artifact.name}")
            scores.append(evaluate_artifact(artifact, eval_set, threads, provider=engine,
                                            progress=rich_bar(bar, task, offset=i * scenes)))
    return scores


def _miou_columns(scores: list[dict], base: int) -> tuple[list[float], list[Optional[float]]]:
    """mIoU per row and its ratio to the baseline's (rows keep the artifacts' order)."""
    miou = [s["miou"] for s in scores]
    kept = [m / miou[base] if miou[base] > 0 else None for m in miou]
    return miou, kept
