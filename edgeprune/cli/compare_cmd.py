"""``edgeprune compare``: one artifact (or every member of a set) on several backends, outputs compared."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edgeprune.cli.common import ThreadsOpt
from edgeprune.core.console import console, out
from edgeprune.core.progress import rich_status


def compare(
    source: Path = typer.Argument(..., help="Artifact folder or engine set."),
    backends: str = typer.Option("ort-cpu,ort-cpu:fp16", "--backends", help="Comma-separated BACKEND[:PRECISION] (ort-cpu, ort-cuda, ort-trt, trt, openvino; fp32/fp16/bf16) or engine folders; the first is the reference."),
    inputs: int = typer.Option(4, "--inputs", min=1, help="Fresh random inputs (standard normal) per comparison."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Batch size (for --dynamic-batch artifacts; default: the exported one)."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Max relative error (to the reference's largest magnitude); default 1e-4 fp32, 1e-2 reduced precision."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Engine cache folder (default: $EDGEPRUNE_CACHE_DIR/engines or ~/.cache/edgeprune/engines)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build engines afresh, outside the cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    threads: int = ThreadsOpt,
) -> None:
    """Run the same random inputs through several backends/precisions and compare outputs with Polygraphy's comparator.

    Also reports the share of identical predicted labels (argmax of `logits` per image or per pixel).

    Engines are built on the fly (through the engine cache) or taken from engine folders. Exit code 0 when every
    comparison is within tolerance, 1 when one is not, 2 on bad input.
    """
    from edgeprune.cli.build_cmd import sources_of
    from edgeprune.engines.cache import EngineCache
    from edgeprune.engines.compare import compare_backends, parse_backends

    specs = parse_backends(backends)
    _, members = sources_of(source)
    engine_cache = None if no_cache else EngineCache(cache)
    reports = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-compare-") as work, console.status("comparing") as status:
        for name, artifact in members:
            reports.append(compare_backends(artifact, specs, Path(work) / name, inputs=inputs, batch=batch,
                                            tolerance=tolerance, cache=engine_cache, threads=threads,
                                            progress=rich_status(status)))
    passed = all(r["passed"] for r in reports)
    if as_json:
        out.print_json(json.dumps({"passed": passed, "artifacts": reports}))
    else:
        table = Table(title=f"{source}: {inputs} random inputs per backend, reference {specs[0].label}", title_justify="left")
        for col in ("artifact", "backend", "max rel. error", "tolerance", "worst output", "same labels", "verdict"):
            table.add_column(col)
        for (name, _), report in zip(members, reports):
            for row in report["comparisons"]:
                worst = max(row["relative_error"], key=row["relative_error"].get)
                labels = row["label_agreement"]
                table.add_row(name, row["backend"], f"{row['max_relative_error']:.2e}", f"{row['tolerance']:.0e}", worst,
                              "-" if labels is None else f"{labels:.2%}", "[green]pass[/]" if row["passed"] else "[red]FAIL[/]")
        out.print(table)
    raise typer.Exit(0 if passed else 1)
