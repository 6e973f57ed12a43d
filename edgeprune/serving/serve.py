"""``edgeprune serve``: an engine set (or one artifact) behind Triton Inference Server.

:func:`prepare_service` turns the set into what every model instance loads (batch-N exports of each
budget, their calibration, the input normalisation); :func:`write_repository` writes a one-model
Triton repository around :mod:`edgeprune.serving.triton_model` (Python backend, dynamic batching,
``instances`` CPU instances); :class:`Server` starts the bundled ``tritonserver`` on it and stops it
cleanly. Requests and responses are described in ``docs/serving.md``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress
from edgeprune.serving.service import SERVICE_FILE, ServiceConfig
from edgeprune.serving.tritonserver import ServerPorts, TritonProcess, choose_ports, start_server

DEFAULT_MODEL_NAME = "edgeprune"
DEFAULT_TARGET_MS = 1000.0 / 30


def load_set_or_artifact(path: str | Path) -> Any:
    """An engine set, or a one-member set around a single artifact (served at its own budget)."""
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.artifacts.engine_set import SET_FILE, EngineSet, Member, is_engine_set, load_engine_set

    path = Path(path)
    if not path.exists():
        raise EdgepruneError(f"{path} does not exist")
    if is_engine_set(path):
        return load_engine_set(path)
    if not (path / "manifest.json").is_file():
        raise EdgepruneError(f"{path} is neither an engine set ({SET_FILE}) nor an artifact (manifest.json)")
    artifact = load_artifact(path)
    ratio = float(artifact.manifest["flops"]["macs_ratio"])
    member = Member(round(ratio, 4), path.name, ratio, int(artifact.plan.final_tokens),
                    artifact.manifest["onnx"]["sha256"], path.resolve().parent, artifact)
    return EngineSet(path.resolve(), {"model": artifact.manifest["model"]}, [member])


def prepare_service(source: str | Path, *, max_batch: int = 8, target_ms: float = DEFAULT_TARGET_MS,
                    threads: int = 1, max_side: int = 8192, progress: Optional[Progress] = None,
                    cache: Optional[Path] = None, rounds: int = 20, provider: str = "cpu",
                    precision: Optional[str] = None, device: Optional[str] = None) -> ServiceConfig:
    """Everything a model instance needs, with batch-N members exported and calibrated (cached) on the engine
    ``provider`` names (ONNX Runtime, OpenVINO at ``precision`` on ``device``, or ``auto``: the fastest engine
    the set was calibrated for here; the choice and why are told to ``progress``)."""
    from edgeprune.backends.runners import auto_line
    from edgeprune.core.progress import say
    from edgeprune.measure.calibrate import resolve_engine
    from edgeprune.serving.batched import prepare_batched

    if not target_ms > 0:
        raise EdgepruneError(f"--target-ms must be > 0, got {target_ms}")
    if threads < 1:
        raise EdgepruneError(f"--threads must be >= 1, got {threads}")
    engine_set = load_set_or_artifact(source)
    engine, reason = resolve_engine(engine_set, provider, precision, device)
    if reason:
        say(progress, auto_line(engine, reason))
    first = engine_set.members[0].artifact
    outputs = first.manifest.get("outputs") or []
    shape = list(outputs[0]["shape"]) if outputs else []
    if len(shape) not in (2, 4):
        raise EdgepruneError(f"{source}: serving takes classifiers (logits [N, K]) and segmenters (logits [N, K, H, W]); "
                             f"this model's first output is {shape}")
    model = first.manifest.get("model", {})
    norm = model.get("input") or {}
    members = prepare_batched(engine_set, max_batch, threads=threads, progress=progress, root=cache, rounds=rounds,
                              engine=engine)
    c, h, w = first.input_shape()[1:]
    return ServiceConfig(
        members=[{"name": m.name, "budget": m.budget, "batch": m.batch, "engine": str(m.onnx), "p50_ms": m.p50_ms,
                  "p95_ms": m.p95_ms} for m in members],
        target_ms=float(target_ms), input_size=(int(c), int(h), int(w)), mean=norm.get("mean"), std=norm.get("std"),
        dense=len(shape) == 4, num_classes=int(shape[1]), max_batch=max_batch, max_side=max_side, threads=threads,
        classes=model.get("classes"), engine=dataclasses.asdict(engine))


def model_config(name: str, service: ServiceConfig, service_path: Path, instances: int,
                 queue_delay_us: int) -> dict[str, Any]:
    """The served model's Triton configuration (as a dict; :func:`repository.config_text` prints it)."""
    c, h, w = service.input_size
    labels = ({"name": "labels", "data_type": "TYPE_UINT8", "dims": [h, w]} if service.dense
              else {"name": "labels", "data_type": "TYPE_INT32", "dims": [1]})
    logits_dims = [service.num_classes, h, w] if service.dense else [service.num_classes]
    config: dict[str, Any] = {
        "name": name, "backend": "python", "max_batch_size": service.max_batch,
        "input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3], "optional": True},
                  {"name": "pixels", "data_type": "TYPE_FP32", "dims": [c, h, w], "optional": True}],
        "output": [labels, {"name": "logits", "data_type": "TYPE_FP32", "dims": logits_dims},
                   {"name": "budget", "data_type": "TYPE_FP32", "dims": [1]},
                   {"name": "engine", "data_type": "TYPE_STRING", "dims": [1]},
                   {"name": "timings_ms", "data_type": "TYPE_FP32", "dims": [2]},
                   {"name": "batch_size", "data_type": "TYPE_INT32", "dims": [1]}],
        "instance_group": [{"count": instances, "kind": "KIND_CPU"}],
        "parameters": {"edgeprune_service": {"string_value": str(service_path)}},
    }
    if service.max_batch > 1:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": queue_delay_us,
                                      "preferred_batch_size": [n for n in service.sizes if n > 1]}
    return config


def write_repository(folder: Path, name: str, service: ServiceConfig, instances: int = 1,
                     queue_delay_us: int = 2000) -> Path:
    """A Triton repository in ``folder`` with the one served model; returns the repository path."""
    from edgeprune.core.files import write_json_atomic
    from edgeprune.serving.repository import check_config, check_name, install_python_model, write_config

    check_name(name)
    if instances < 1:
        raise EdgepruneError(f"--instances must be >= 1, got {instances}")
    if queue_delay_us < 0:
        raise EdgepruneError(f"--queue-delay-us must be >= 0, got {queue_delay_us}")
    model = folder / name
    model.mkdir(parents=True, exist_ok=True)
    service_path = model / SERVICE_FILE
    write_json_atomic(service_path, service.to_json())
    # The adapter imports the backend's utilities, which exist only inside Triton: copy it, never import it here.
    install_python_model(model, Path(__file__).with_name("triton_model.py"))
    check_config(write_config(model, model_config(name, service, service_path.resolve(), instances, queue_delay_us)))
    return folder


@dataclass
class Server:
    """A running ``edgeprune serve``: the Triton process, its ports and the served model's name."""

    triton: TritonProcess
    name: str

    @property
    def ports(self) -> ServerPorts:
        return self.triton.ports

    def stop(self) -> int:
        return self.triton.stop()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start(service: ServiceConfig, *, name: str = DEFAULT_MODEL_NAME, instances: int = 1, queue_delay_us: int = 2000,
          http: Optional[int] = None, grpc: Optional[int] = None, metrics: Optional[int] = None,
          host: str = "127.0.0.1", workspace: Optional[Path] = None, timeout_s: float = 180.0) -> Server:
    """Write the repository, start Triton on it and wait until the model is ready."""
    ports = choose_ports(http, grpc, metrics, host=host)
    local = "127.0.0.1" if host in ("0.0.0.0", "") else host
    service = dataclasses.replace(service, stats_url=f"http://{local}:{ports.http}/v2/models/{name}/stats")
    workspace = Path(workspace) if workspace else Path(tempfile.mkdtemp(prefix="edgeprune-serve-"))
    repository = write_repository(workspace / "repository", name, service, instances, queue_delay_us)
    triton = start_server(repository, ports, workspace=workspace, remove_workspace=True)
    try:
        triton.wait_ready(timeout_s)
    except BaseException:
        triton.stop()
        raise
    return Server(triton, name)


def serve_until_signalled(server: Server, on_stop: Callable[[str], None] = lambda m: None,
                          on_ready: Callable[[], None] = lambda: None) -> int:
    """Block until SIGTERM or SIGINT (or the server dies), then stop gracefully: Triton stops taking new
    requests and finishes those in flight before exiting. Returns Triton's exit code."""
    stopping = threading.Event()
    reason: list[str] = []

    def handler(signum: int, _frame: Any) -> None:
        reason.append(signal.Signals(signum).name)
        stopping.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        on_ready()  # only now: a SIGTERM sent as soon as the banner shows must reach the handler
        while not stopping.wait(0.5):
            if not server.triton.is_alive():
                on_stop(f"tritonserver exited on its own (code {server.triton.process.returncode}); "
                        f"log tail:\n{server.triton.log_tail()}")
                return server.triton.process.returncode or 1
        on_stop(f"{reason[0]}: finishing requests in flight, then stopping")
        return server.stop()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def default_threads(instances: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, instances))


__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_TARGET_MS", "Server", "default_threads", "load_set_or_artifact",
           "model_config", "prepare_service", "serve_until_signalled", "start", "write_repository"]
