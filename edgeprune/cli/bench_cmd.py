"""``edgeprune bench``: artifacts timed interleaved in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgeprune.cli.common import BatchOpt, ProviderOpt, ThreadsOpt, console, out
from edgeprune.errors import EdgepruneError


def bench(
    artifacts: list[Path] = typer.Argument(..., help="Artifact directories to time against each other."),
    batch: int = BatchOpt,
    rounds: int = typer.Option(50, "--rounds", help="Timed rounds; each runs every artifact once, in shuffled order."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs per artifact first."),
    settle: int = typer.Option(2, "--settle", help="Untimed runs before each timed run (lets the previous session's threads go quiet)."),
    threads: int = ThreadsOpt,
    provider: str = ProviderOpt,
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Artifact to compare against (default: the method 'none' one, else the largest)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a latency-vs-MACs PNG here (plus an accuracy or mIoU panel when given)."),
    accuracy: Optional[Path] = typer.Option(None, "--accuracy", help="JSON {artifact name: accuracy} to add to the table and plot."),
    eval_spec: Optional[str] = typer.Option(
        None, "--eval", metavar="scenes[:N]",
        help="Score segmentation artifacts on N held-out procedural scenes (default 200) through ONNX Runtime: "
             "adds mIoU and mIoU kept (vs the baseline) to the table, JSON and plot. Not timed."),
) -> None:
    """Time artifacts interleaved at a batch size: p50/p90/p99, throughput, speedup, realized vs predicted."""
    from edgeprune.artifact import load_artifact, write_json_atomic

    for target in (json_out, plot):  # before minutes of timing, not after
        if target is not None and not target.resolve().parent.is_dir():
            raise EdgepruneError(f"cannot write {target}: folder {target.parent} does not exist")
    from edgeprune.bench import benchmark

    scenes = _parse_eval(eval_spec)
    loaded = [load_artifact(a) for a in artifacts]
    acc = _read_accuracy(accuracy)
    if scenes:
        from edgeprune.bench import pick_baseline

        base = pick_baseline(loaded, baseline)  # bad --baseline or --batch fail before the evaluation
        for a in loaded:
            a.input_shape(batch)
        scores = _evaluate(loaded, scenes, threads, provider)
    else:
        scores = None
    with Progress(TextColumn("timing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("rounds", total=rounds)
        result = benchmark(
            loaded, batch=batch, rounds=rounds, warmup=warmup, threads=threads, providers=[provider],
            baseline=baseline, settle=settle, progress=lambda done, _total: bar.update(task, completed=done),
        )
    table = Table(title=f"batch {batch}, {threads} threads, {provider}, {rounds} interleaved rounds; baseline {result.baseline}")
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
            data["eval"] = {"spec": eval_spec, "scenes": scenes, "seeds": scores[0]["seeds"],
                            "results": [{"name": r.name, **s} for r, s in zip(result.rows, scores)]}
        write_json_atomic(json_out, data)
        console.print(f"wrote {json_out}")
    if plot:
        from edgeprune.plotting import plot_bench

        if scores:
            named = {r.name: miou[i] for i, r in enumerate(result.rows)}
            plot_bench(result, plot, named, accuracy_label=f"mIoU ({scenes} held-out scenes)")
        else:
            plot_bench(result, plot, acc)
        console.print(f"wrote {plot}")


def _read_accuracy(path: Optional[Path]) -> dict[str, float]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        return {str(k): float(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise EdgepruneError(f"--accuracy {path}: expected a JSON object {{artifact name: number}} ({exc})") from None


def _parse_eval(spec: Optional[str]) -> int:
    if spec is None:
        return 0
    from edgeprune.seg_eval import parse_eval_spec

    return parse_eval_spec(spec)


def _evaluate(loaded: list, scenes: int, threads: int, provider: str) -> list[dict]:
    """Scores before timing, so a non-segmentation artifact fails before minutes of rounds."""
    from edgeprune.seg_eval import evaluate_artifact, segmentation_input

    for artifact in loaded:
        segmentation_input(artifact)
    scores = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("mIoU", total=scenes * len(loaded))
        for i, artifact in enumerate(loaded):
            bar.update(task, description=f"mIoU {artifact.name}")
            scores.append(evaluate_artifact(artifact, scenes, threads, providers=[provider],
                                            progress=lambda done, _n, i=i: bar.update(task, completed=i * scenes + done)))
    return scores


def _miou_columns(scores: list[dict], base: int) -> tuple[list[float], list[Optional[float]]]:
    """mIoU per row and its ratio to the baseline's (rows keep the artifacts' order)."""
    miou = [s["miou"] for s in scores]
    kept = [m / miou[base] if miou[base] > 0 else None for m in miou]
    return miou, kept
