"""``edgeprune calibrate``: measure an engine set's per-member latency on this machine, into set.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edgeprune.cli.common import DeviceOpt, PrecisionOpt, ProviderOpt, ThreadsOpt, check_engine_options
from edgeprune.core.console import console, out
from edgeprune.core.progress import rich_bar


def calibrate(
    engine_set_dir: Path = typer.Argument(..., help="Engine set folder written by edgeprune export --budgets."),
    rounds: int = typer.Option(50, "--rounds", min=1, help="Timed rounds; each runs every member once, in shuffled order."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Untimed runs per member first."),
    threads: int = ThreadsOpt,
    provider: str = ProviderOpt,
    precision: Optional[str] = PrecisionOpt,
    device: Optional[str] = DeviceOpt,
    force: bool = typer.Option(False, "--force", help="Replace a calibration from another machine without the warning (it is replaced either way)."),
    engines: Optional[Path] = typer.Option(None, "--engines", help="Time the engines `edgeprune build SET` wrote (fp16, TensorRT, ...) instead of the ONNX graphs; stored in their engines.json."),
) -> None:
    """Time every member of an engine set interleaved on one engine and store its latency distribution in set.json
    (ONNX Runtime's as `calibration`, each OpenVINO device and precision under `calibrations`)."""
    from edgeprune.artifacts.engine_set import calibration_matches, load_engine_set
    from edgeprune.backends.runners import AUTO, engine_choice
    from edgeprune.cli.inspect_cmd import print_set
    from edgeprune.core.errors import EdgepruneError
    from edgeprune.measure.calibrate import calibrate_engine_set, stored_calibrations

    if provider == AUTO:
        raise EdgepruneError("calibrate times one engine: --provider cpu, cuda, tensorrt or openvino "
                             "(calibrate each, then run with --provider auto)")
    check_engine_options(provider, precision, device)
    engine_set = load_engine_set(engine_set_dir, verify=True)
    if engines is not None:
        from edgeprune.engines.build import built_calibration

        previous = built_calibration(engines)
    else:
        previous = stored_calibrations(engine_set).get(engine_choice(provider, precision, device).key)
    if previous:
        same, why = calibration_matches(engine_set, previous)
        if not same and not force:
            console.print(f"[yellow]warning: replacing a calibration from another machine ({why})[/]",
                          highlight=False, soft_wrap=True)
    columns = (TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("rounds", total=rounds)
        calibration = calibrate_engine_set(engine_set, rounds=rounds, warmup=warmup, threads=threads, provider=provider,
                                           precision=precision, device=device, progress=rich_bar(bar, task),
                                           engines=engines)
    if engines is not None or calibration["provider"] == "openvino":
        what = (f"the {calibration['engines']['backend']} {calibration['engines']['precision']} engines in {engines}"
                if engines is not None else f"{engine_set.path} on {engine_choice(provider, precision, device).describe()} "
                f"(runs as {calibration['runs_as']}), {threads} threads")
        rows = ", ".join(f"{name} p50 {s['p50_ms']:.2f} ms" for name, s in calibration["members"].items())
        out.print(f"calibrated {what}: {rounds} interleaved rounds; {rows}", highlight=False, soft_wrap=True)
        return
    print_set(engine_set, f"calibrated {engine_set.path}: {rounds} interleaved rounds, {threads} threads, {provider}")
