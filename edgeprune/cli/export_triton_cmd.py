"""``edgeprune export-triton``: an engine set -> a model repository for a production Triton server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edgeprune.core.console import console, out
from edgeprune.core.progress import rich_status


def export_triton(
    source: Path = typer.Argument(..., help="Engine set folder (edgeprune export --budgets, then edgeprune calibrate)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Triton model repository to create."),
    backend: str = typer.Option("onnxruntime", "--backend", help="Budget models on onnxruntime (model.onnx), tensorrt (model.plan, built on the target) or openvino (Triton's OpenVINO backend reading model.onnx, CPU instances)."),
    device: Optional[str] = typer.Option(None, "--device", help="Budget model instances on gpu (KIND_GPU; the default) or cpu (KIND_CPU; the default and only choice for openvino)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Triton's max_batch_size; the scheduler batches 1, 2, 4, ... up to it."),
    instances: int = typer.Option(1, "--instances", help="Instances of each budget model."),
    scheduler_instances: int = typer.Option(1, "--scheduler-instances", help="Instances of the scheduler model (each with its own deadline policy)."),
    queue_delay_us: int = typer.Option(2000, "--queue-delay-us", help="How long the scheduler's dynamic batcher may hold a request to fill a batch."),
    target_ms: float = typer.Option(1000.0 / 30, "--target-ms", help="Deadline for requests that set none."),
    threads: int = typer.Option(0, "--threads", help="--device cpu: ONNX Runtime intra-op threads or OpenVINO's INFERENCE_NUM_THREADS per instance (0: the backend's choice)."),
    accelerator: str = typer.Option("none", "--accelerator", help="onnxruntime on gpu: none (CUDA) or tensorrt (ONNX Runtime's TensorRT execution provider)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="TensorRT precision (the accelerator's or the plans'): fp16 (default) or fp32; --backend openvino: fp32 (default) or bf16 (HINT_BF16)."),
    workspace_mb: int = typer.Option(1024, "--workspace-mb", help="TensorRT workspace in MiB."),
    trt_cache: str = typer.Option("/tmp/triton-trt-cache", "--trt-cache", help="--accelerator tensorrt: engine cache folder on the target (one subfolder per model)."),
    execution_env: Optional[str] = typer.Option(None, "--execution-env", help="The scheduler's EXECUTION_ENV_PATH (a conda-pack tarball with edgeprune), e.g. '$$TRITON_MODEL_DIRECTORY/env.tar.gz'."),
    name: str = typer.Option("edgeprune", "--name", help="Scheduler model name clients call; budget models are NAME_b1.00, ..."),
    check_load: bool = typer.Option(False, "--check-load", help="Afterwards, load the repository in the Triton server PyTriton bundles (Python backend only: the scheduler loads, the budget models cannot)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
) -> None:
    """Write a Triton model repository for a production server: one model per budget (dynamic batch axis, ONNX Runtime, TensorRT or OpenVINO) and a scheduler model that routes each request to a budget by its deadline.

    Clients call the scheduler (named --name) with `image` (uint8 [N, H, W, 3]) or `pixels`, and optional
    parameters `deadline_ms` or `budget`. The repository's README.md says how to start Triton on it.
    See docs/export-triton.md.
    """
    from edgeprune.core.extras import require_extra

    require_extra("export", "export-triton (re-exports the set's model at batch sizes 1..--max-batch)")
    from edgeprune.serving.load_check import check_load as load_check
    from edgeprune.serving.production import ProductionOptions, export_triton as write

    started = time.perf_counter()
    options = ProductionOptions(name=name, backend=backend, device=device, max_batch=max_batch, instances=instances,
                                scheduler_instances=scheduler_instances, queue_delay_us=queue_delay_us,
                                target_ms=target_ms, threads=threads, accelerator=accelerator, precision=precision,
                                workspace_mb=workspace_mb, trt_cache=trt_cache, execution_env=execution_env)
    options.validate()  # every bad option is one line before the slow model load
    with console.status("exporting the Triton repository") as status:
        repo = write(source, out_dir, options, force=force, progress=rich_status(status))
    table = Table(title=f"Triton repository {out_dir} ({time.perf_counter() - started:.1f} s)", title_justify="left")
    for column in ("model", "member", "budget", "p50 ms (here, batch 1)"):
        table.add_column(column)
    table.add_row(repo.name, "scheduler (Python backend, BLS)", "by deadline", "")
    for m in repo.models:
        table.add_row(m.name, m.member, f"{m.budget:g}", f"{m.p50_ms:.3f}")
    out.print(table)
    out.print(f"batch sizes {repo.sizes}; budget models on {backend} ({options.device}); see {out_dir / 'README.md'}",
              highlight=False, soft_wrap=True)
    for note in repo.notes:
        out.print(f"[yellow]{note}[/]", highlight=False, soft_wrap=True)
    if check_load:
        with console.status("loading the repository in PyTriton's bundled tritonserver"):
            report = load_check(out_dir, repo.name, [m.name for m in repo.models], backend)
        out.print(report.summary, highlight=False, soft_wrap=True)
        for model, error in report.budget_errors.items():
            out.print(f"  {model}: {'loaded' if not error else error}", highlight=False, soft_wrap=True)
