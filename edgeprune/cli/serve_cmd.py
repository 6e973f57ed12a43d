"""``edgeprune serve``: an engine set or artifact behind Triton Inference Server (HTTP, gRPC, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeprune.cli.common import DeviceOpt, PrecisionOpt, ProviderOpt, check_engine_options
from edgeprune.core.console import console, out


def serve(
    source: Path = typer.Argument(..., help="Engine set folder (edgeprune export --budgets, calibrated) or one artifact."),
    http: int = typer.Option(8000, "--http", min=0, max=65535, help="HTTP port (0: a free one)."),
    grpc: int = typer.Option(8001, "--grpc", min=0, max=65535, help="gRPC port (0: a free one)."),
    metrics: int = typer.Option(8002, "--metrics", min=0, max=65535, help="Prometheus metrics port (0: a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 serves other machines too."),
    instances: int = typer.Option(1, "--instances", min=1, help="Model instances (processes), each with its own engines and deadline policy."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Largest dynamic batch; every budget is exported at batch 1, 2, 4, ... up to it (1: no batching)."),
    queue_delay_us: int = typer.Option(2000, "--queue-delay-us", min=0, help="How long Triton's dynamic batcher may hold a request to fill a batch."),
    target_ms: Optional[float] = typer.Option(None, "--target-ms", help="Deadline for requests that set none (default: 1000 / --target-fps)."),
    target_fps: float = typer.Option(30.0, "--target-fps", min=0.01, help="Frame rate the default deadline follows."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime or OpenVINO threads per instance (default: cores / instances)."),
    provider: str = ProviderOpt,
    precision: Optional[str] = PrecisionOpt,
    device: Optional[str] = DeviceOpt,
    name: str = typer.Option("edgeprune", "--name", help="Model name clients call."),
    max_side: int = typer.Option(8192, "--max-image-side", min=1, help="Refuse images larger than this many pixels per side."),
) -> None:
    """Serve an engine set on Triton Inference Server (the one PyTriton's wheel bundles) until SIGTERM or Ctrl-C.

    Requests: `image` (uint8 [N, H, W, 3], any size) or `pixels` (float32), optional `deadline_ms` or `budget`.

    Responses: `labels`, `logits`, `budget`, `engine`, `timings_ms`, `batch_size`. See docs/serving.md.
    """
    from edgeprune.backends.runners import auto_line
    from edgeprune.core.progress import rich_status
    from edgeprune.measure.calibrate import resolve_engine
    from edgeprune.serving.serve import default_threads, load_set_or_artifact, prepare_service, serve_until_signalled, start
    from edgeprune.serving.tritonserver import choose_ports

    check_engine_options(provider, precision, device)
    ports = choose_ports(http or None, grpc or None, metrics or None, host=host)  # busy ports fail before any work
    engine, reason = resolve_engine(load_set_or_artifact(source), provider, precision, device)
    if reason:
        console.print(auto_line(engine, reason), highlight=False, soft_wrap=True)
    deadline = target_ms if target_ms is not None else 1000.0 / target_fps
    with console.status("preparing the engines (batch-N exports and calibration are made once, then cached)") as status:
        service = prepare_service(source, max_batch=max_batch, target_ms=deadline,
                                  threads=threads or default_threads(instances), max_side=max_side,
                                  progress=rich_status(status), provider=engine.provider,
                                  precision=engine.precision if engine.is_openvino else None, device=engine.device)
        status.update(f"starting Triton: {instances} instance(s), batches up to {max_batch}")
        server = start(service, name=name, instances=instances, queue_delay_us=queue_delay_us,
                       http=ports.http, grpc=ports.grpc, metrics=ports.metrics, host=host)
    budgets = ", ".join(f"{b:g}" for b in service.budgets)

    def banner() -> None:
        out.print(f"serving {source} as model '{name}' on {engine.describe()} (budgets {budgets}; batch sizes "
                  f"{service.sizes}; {instances} instance(s), {service.threads} thread(s) each; default deadline "
                  f"{deadline:.1f} ms)",
                  highlight=False, soft_wrap=True)
        out.print(f"  HTTP {ports.http_url}  gRPC {ports.grpc_url}  metrics {ports.metrics_url}  "
                  f"ready: http://{ports.http_url}/v2/health/ready", highlight=False, soft_wrap=True)
        out.print(f"  Triton's log: {server.triton.log_path}; stop with Ctrl-C or SIGTERM", highlight=False,
                  soft_wrap=True)

    code = serve_until_signalled(server, on_stop=lambda m: console.print(m, highlight=False, soft_wrap=True),
                                 on_ready=banner)
    console.print(f"stopped (tritonserver exit code {code})", highlight=False)
    if code:
        raise typer.Exit(1)
