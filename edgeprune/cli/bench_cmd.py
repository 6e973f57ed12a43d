"""``edgeprune bench``: artifacts timed interleaved in one run."""

from __future__ import annotations

import json
import os
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
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a latency-vs-MACs PNG here."),
    accuracy: Optional[Path] = typer.Option(None, "--accuracy", help="JSON {artifact name: accuracy} to add to the table and plot."),
) -> None:
    """Time artifacts interleaved at a batch size: p50/p90/p99, throughput, speedup, realized vs predicted."""
    from edgeprune.artifact import load_artifact
    from edgeprune.bench import benchmark

    loaded = [load_artifact(a) for a in artifacts]
    acc = _read_accuracy(accuracy)
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
    for col in columns:
        table.add_column(col, justify="left" if col in ("artifact", "method") else "right")
    for r in result.rows:
        cells = [r.name, r.method, str(r.final_tokens), f"{r.macs_ratio:.3f}", f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}",
                 f"{r.p99_ms:.2f}", f"{r.throughput:.1f}", f"{r.speedup:.2f}x", f"{r.predicted_speedup:.2f}x", f"{r.realized_vs_predicted:.2f}"]
        if with_model:
            cells.append(f"{r.latency_model_speedup:.2f}x" if r.latency_model_speedup else "-")
        if acc:
            cells.append(f"{acc[r.name]:.4g}" if r.name in acc else "-")
        table.add_row(*cells)
    out.print(table)
    if json_out:
        data = result.to_dict()
        if acc:
            data["accuracy"] = acc
        tmp = json_out.with_name(f".{json_out.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, json_out)
        console.print(f"wrote {json_out}")
    if plot:
        from edgeprune.plotting import plot_bench

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
