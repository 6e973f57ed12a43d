"""``edgeprune export-triton``: an engine set as a model repository for a production Triton server.

``edgeprune serve`` runs every budget inside one Python-backend model on ONNX Runtime. A production
Triton has the ONNX Runtime, TensorRT and OpenVINO backends, so here every budget becomes a model of its
own (``<name>_b1.00``, ...: the member's graph re-exported with a dynamic batch axis, everything else
static) that Triton batches and places on the GPU (or, with OpenVINO, the CPU) itself, and a Python-backend *scheduler* model
``<name>`` (:mod:`edgeprune.serving.scheduler_model`) takes the clients' requests, checks and
batches them and routes each batch to a budget by its deadline through BLS, using the same
:class:`edgeprune.serving.service.Service` as ``edgeprune serve``.

The scheduler's latency profiles are this machine's calibration (``set.json``; OpenVINO's own for the
OpenVINO backend when the set was calibrated with ``--provider openvino``) scaled by batch size:
a prior that the deadline policy's online scale correction replaces with the target's own timings
after a few batches. TensorRT plans must be built on the target GPU; without ``tensorrt`` here the
repository carries each ONNX and a ``build_plans.sh`` to run there.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, advance, prefixed, say
from edgeprune.serving.service import SERVICE_FILE, ServiceConfig
from edgeprune.serving.triton_readme import NOT_RUN, README_FILE, SCRIPT_FILE, readme_text

BACKENDS = ("onnxruntime", "tensorrt", "openvino")
DEVICES = ("gpu", "cpu")
ACCELERATORS = ("none", "tensorrt")
PRECISIONS = {"tensorrt": ("fp16", "fp32"), "openvino": ("fp32", "bf16")}  # TensorRT's (plans or ORT's provider)
# The OpenVINO backend reads ONNX itself when the config names the file (its default is model.xml, OpenVINO IR);
# it runs on CPU instances and takes OpenVINO's settings as string parameters (its README, "Parameters").
OPENVINO_MODEL_FILE = "model.onnx"
MAX_BATCH_LIMIT = 1024  # the exporter's symbolic batch axis is bounded there
ENGINE_QUEUE_DELAY_US = 100  # budget models get batches already formed by the scheduler: wait little


@dataclass(frozen=True)
class ProductionOptions:
    """What ``edgeprune export-triton`` writes; see ``docs/export-triton.md`` for each field."""

    name: str = "edgeprune"
    backend: str = "onnxruntime"
    device: Optional[str] = None  # gpu, or cpu for openvino (its backend runs on CPU instances only)
    max_batch: int = 8
    instances: int = 1  # per budget model
    scheduler_instances: int = 1
    queue_delay_us: int = 2000  # the scheduler's dynamic batcher
    target_ms: float = 1000.0 / 30
    threads: int = 0  # ORT intra-op threads on CPU, OpenVINO's INFERENCE_NUM_THREADS; 0 = the backend's choice
    accelerator: str = "none"  # ORT on GPU: "tensorrt" = ORT's TensorRT execution provider
    precision: Optional[str] = None  # TensorRT's fp16 (default) or fp32; OpenVINO's fp32 (default) or bf16
    workspace_mb: int = 1024
    trt_cache: str = "/tmp/triton-trt-cache"  # on the target machine
    execution_env: Optional[str] = None  # EXECUTION_ENV_PATH of the scheduler (a conda-pack tarball)

    def __post_init__(self) -> None:  # each backend's defaults (frozen: set once, here)
        openvino = self.backend == "openvino"
        if self.device is None:
            object.__setattr__(self, "device", "cpu" if openvino else "gpu")
        if self.precision is None:
            object.__setattr__(self, "precision", "fp32" if openvino else "fp16")

    def validate(self) -> None:
        from edgeprune.serving.repository import check_name

        check_name(self.name)
        precisions = PRECISIONS["openvino" if self.backend == "openvino" else "tensorrt"]
        for flag, value, allowed in (("--backend", self.backend, BACKENDS), ("--device", self.device, DEVICES),
                                     ("--accelerator", self.accelerator, ACCELERATORS),
                                     ("--precision", self.precision, precisions)):
            if value not in allowed:
                raise EdgepruneError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
        if not 1 <= self.max_batch <= MAX_BATCH_LIMIT:
            raise EdgepruneError(f"--max-batch must be from 1 to {MAX_BATCH_LIMIT}, got {self.max_batch}")
        for flag, value, low in (("--instances", self.instances, 1), ("--scheduler-instances", self.scheduler_instances, 1),
                                 ("--queue-delay-us", self.queue_delay_us, 0), ("--threads", self.threads, 0),
                                 ("--workspace-mb", self.workspace_mb, 1)):
            if value < low:
                raise EdgepruneError(f"{flag} must be >= {low}, got {value}")
        if not self.target_ms > 0:
            raise EdgepruneError(f"--target-ms must be > 0, got {self.target_ms}")
        if self.backend == "openvino" and (self.device != "cpu" or self.accelerator != "none"):
            raise EdgepruneError("--backend openvino: Triton's OpenVINO backend runs on CPU instances; use --device cpu "
                                 "and no --accelerator")
        if self.device == "cpu" and self.backend == "tensorrt":
            raise EdgepruneError("--backend tensorrt runs on GPUs only; use --backend onnxruntime with --device cpu")
        if self.accelerator == "tensorrt" and (self.device != "gpu" or self.backend != "onnxruntime"):
            raise EdgepruneError("--accelerator tensorrt is ONNX Runtime's TensorRT provider: it needs "
                                 "--backend onnxruntime --device gpu")


@dataclass(frozen=True)
class BudgetModel:
    """One budget's Triton model."""

    name: str  # Triton model name, e.g. edgeprune_b0.50
    member: str  # engine set member, e.g. b0.50
    budget: float
    p50_ms: float  # this machine's calibration, batch 1
    p95_ms: float


@dataclass
class ProductionRepository:
    """What :func:`export_triton` wrote."""

    path: Path
    name: str  # the scheduler model clients call
    options: ProductionOptions
    models: list[BudgetModel]
    sizes: list[int]
    plans_built: bool = False
    script: Optional[Path] = None
    notes: list[str] = field(default_factory=list)


def budget_model_name(name: str, member: str) -> str:
    from edgeprune.serving.repository import check_name

    return check_name(f"{name}_{member}")


def latency_engine(options: ProductionOptions) -> Any:
    """The engine whose calibration here gives the budget models' latency priors: OpenVINO's own for the
    OpenVINO backend, ONNX Runtime's CPU one for the rest (the target's GPU cannot be timed here)."""
    from edgeprune.backends.runners import EngineChoice

    return EngineChoice("openvino", options.precision, "CPU") if options.backend == "openvino" else EngineChoice("cpu")


def load_calibrated_set(source: str | Path, engine: Any = None) -> tuple[Any, dict[str, Any], str]:
    """The engine set at ``source``, the calibration for ``engine`` (default ONNX Runtime's CPU one; another
    engine's when only that was calibrated) and why it does not fit (""); or one EdgepruneError line saying
    what is missing."""
    from edgeprune.artifacts.engine_set import SET_FILE, is_engine_set, load_engine_set
    from edgeprune.backends.runners import EngineChoice
    from edgeprune.measure.calibrate import calibration_for
    from edgeprune.runtime.runtime import profiles_from_calibration

    path = Path(source)
    if not path.exists():
        raise EdgepruneError(f"{path} does not exist")
    if not is_engine_set(path):
        raise EdgepruneError(f"{path} is not an engine set (no {SET_FILE}); export one with "
                             "`edgeprune export MODEL --budgets 1.0,0.75,0.5 --out SET`")
    engine_set = load_engine_set(path)
    calibration, mismatch = calibration_for(engine_set, engine or EngineChoice("cpu"))
    profiles_from_calibration(engine_set, calibration)  # the Runtime's own check: a member without latency
    return engine_set, calibration, mismatch


def scheduler_service(engine_set: Any, models: Sequence[BudgetModel], options: ProductionOptions,
                      calibration: Optional[dict[str, Any]] = None) -> ServiceConfig:
    """The scheduler's :class:`ServiceConfig`: every budget model at batch sizes 1, 2, 4, ... max_batch,
    with the calibrated batch-1 latency (of ``calibration``, default the set's) scaled by batch size (a prior;
    the policy corrects it online)."""
    from edgeprune.serving.batched import batch_sizes

    first = engine_set.members[0].artifact
    outputs = first.manifest.get("outputs") or []
    shape = list(outputs[0].get("shape") or []) if outputs else []
    if len(shape) not in (2, 4):
        raise EdgepruneError(f"{engine_set.path}: Triton export takes classifiers (logits [N, K]) and segmenters "
                             f"(logits [N, K, H, W]); this model's first output is {shape}")
    calibration = calibration if calibration is not None else (engine_set.calibration or {})
    calibration_batch = int(calibration.get("batch") or 1)
    members = [{"name": m.member, "budget": m.budget, "batch": n, "engine": m.name,
                "p50_ms": round(m.p50_ms * n / calibration_batch, 4), "p95_ms": round(m.p95_ms * n / calibration_batch, 4)}
               for m in models for n in batch_sizes(options.max_batch)]
    model = engine_set.manifest.get("model", {})
    norm = model.get("input") or {}
    c, h, w = first.input_shape()[1:]
    return ServiceConfig(members=members, target_ms=float(options.target_ms), input_size=(int(c), int(h), int(w)),
                         mean=norm.get("mean"), std=norm.get("std"), dense=len(shape) == 4, num_classes=int(shape[1]),
                         max_batch=options.max_batch, threads=1, classes=model.get("classes"))


def _dims(entry: dict[str, Any]) -> list[int]:
    dims = list(entry.get("shape") or [])[1:]
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        raise EdgepruneError(f"tensor {entry.get('name')!r} has shape {entry.get('shape')}: Triton models here need "
                             "static dims after the batch axis")
    return dims


def budget_model_config(name: str, manifest: dict[str, Any], options: ProductionOptions) -> dict[str, Any]:
    """The Triton configuration of one budget model (a dict for :func:`repository.config_text`)."""
    from edgeprune.serving.batched import batch_sizes

    config: dict[str, Any] = {
        "name": name, "max_batch_size": options.max_batch,
        "input": [{"name": i["name"], "data_type": "TYPE_FP32", "dims": _dims(i)} for i in manifest["inputs"]],
        "output": [{"name": o["name"], "data_type": "TYPE_FP32", "dims": _dims(o)} for o in manifest["outputs"]],
        "instance_group": [{"count": options.instances, "kind": "KIND_GPU" if options.device == "gpu" else "KIND_CPU"}],
    }
    preferred = [n for n in batch_sizes(options.max_batch) if n > 1]
    if options.max_batch > 1:
        config["dynamic_batching"] = {"preferred_batch_size": preferred,
                                      "max_queue_delay_microseconds": ENGINE_QUEUE_DELAY_US}
    if options.backend == "tensorrt":
        config["platform"] = "tensorrt_plan"
        return config
    if options.backend == "openvino":
        config.update(backend="openvino", default_model_filename=OPENVINO_MODEL_FILE)
        settings = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}  # batch-1 latency, as edgeprune compiles
        if options.threads:
            settings["INFERENCE_NUM_THREADS"] = str(options.threads)
        if options.precision == "bf16":
            settings["HINT_BF16"] = "YES"
        config["parameters"] = {key: {"string_value": value} for key, value in settings.items()}
        return config
    config["backend"] = "onnxruntime"
    optimization: dict[str, Any] = {"graph": {"level": 1}}
    if options.device == "cpu":
        config["parameters"] = {"intra_op_thread_count": {"string_value": str(options.threads)}}
    elif options.accelerator == "tensorrt":
        optimization["execution_accelerators"] = {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": {
            "precision_mode": options.precision.upper(), "max_workspace_size_bytes": str(options.workspace_mb << 20),
            "trt_engine_cache_enable": "true", "trt_engine_cache_path": f"{options.trt_cache.rstrip('/')}/{name}"}}]}
    config["optimization"] = optimization
    return config


def _cross_check(set_onnx: Path, onnx: Path, input_name: str, shape: list[int], tolerance: float) -> float:
    """The re-export against the set's own member at batch 1 (fresh inputs; a near-tie token choice that
    misses once is re-checked, as the exporter's parity check does)."""
    import onnxruntime as ort

    from edgeprune.exporting.onnx_export import fresh_pixels
    from edgeprune.backends.feeds import relative_error

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (set_onnx, onnx)]
    errors = []
    for attempt in range(3):
        pixels = fresh_pixels([1, *shape]).numpy()
        expected, actual = (s.run(None, {input_name: pixels})[0] for s in sessions)
        errors.append(relative_error(actual, expected))
        if attempt == 0 and errors[0] <= tolerance:
            return errors[0]
    if min(errors[1:]) > tolerance:
        raise EdgepruneError(f"{onnx.parent.name}: the dynamic-batch re-export differs from the set's member by "
                             f"{max(errors):.2e} (> {tolerance:g}); the set's model or plan changed since it was exported")
    return min(errors)


def trtexec_script(models: Sequence[str], input_name: str, chw: Sequence[int], options: ProductionOptions) -> str:
    """``build_plans.sh``: builds ``<model>/1/model.plan`` from ``<model>/model.onnx`` with trtexec on the target,
    with a dynamic-batch profile (min 1, opt and max = max_batch)."""
    from edgeprune.backends.trt import BuilderSettings, trtexec_command

    settings = BuilderSettings(precision=options.precision, workspace_mb=options.workspace_mb,
                               strongly_typed=options.precision == "fp32")
    dims = "x".join(str(d) for d in chw)
    lines = ["#!/usr/bin/env bash",
             f"# Build the TensorRT plans of this Triton repository ({NOT_RUN}). Run it on the target GPU with",
             "# the TensorRT version of the Triton image that will serve it, e.g. in NGC's TensorRT container of the",
             "# same release (check its TensorRT version matches; TRTEXEC=/path/to/trtexec if it is not on PATH):",
             "#   docker run --rm --gpus all -v $PWD:/models -w /models nvcr.io/nvidia/tensorrt:<yy.mm>-py3 ./build_plans.sh",
             "# A plan only loads on the GPU model and TensorRT version it was built with. Written for trtexec 10.",
             "set -euo pipefail", 'cd "$(dirname "$0")"', 'TRTEXEC="${TRTEXEC:-trtexec}"', ""]
    for model in models:
        cmd = trtexec_command(f"{model}/model.onnx", f"{model}/1/model.plan", settings, trt_version="10")[1:]
        cmd += [f"--minShapes={input_name}:1x{dims}", f"--optShapes={input_name}:{options.max_batch}x{dims}",
                f"--maxShapes={input_name}:{options.max_batch}x{dims}"]
        lines += [f'echo "building {model}/1/model.plan"', f'"$TRTEXEC" {shlex.join(cmd)}']
    return "\n".join(lines) + "\n"


def build_plan(onnx: Path, plan: Path, input_name: str, chw: Sequence[int], options: ProductionOptions,
               progress: Optional[Progress] = None) -> None:
    """Build one dynamic-batch TensorRT plan here (only where ``tensorrt`` and a GPU are present)."""
    from edgeprune.backends.trt import _make_logger, _parser_error, require_tensorrt

    trt = require_tensorrt()
    logger = _make_logger(trt, lambda m: say(progress, m))  # TensorRT's warnings and errors, as messages
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode TensorRT 10+ has
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)) or parser.num_errors:
        raise EdgepruneError(f"{onnx}: TensorRT's ONNX parser rejected it: "
                             f"{_parser_error(parser) if parser.num_errors else logger.last_error()}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # as edgeprune's builder: TF32 flips near-tie token choices
    if options.precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise EdgepruneError(f"TensorRT {trt.__version__} has no FP16 builder flag (strongly typed only): use "
                                 "--precision fp32, or build an fp16 graph with `edgeprune build`")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, *chw), (options.max_batch, *chw), (options.max_batch, *chw))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgepruneError(f"{onnx}: TensorRT could not build an engine: {logger.last_error()}")
    plan.write_bytes(bytes(memoryview(serialized)))


def _can_build_plans() -> bool:
    from edgeprune.backends.trt import device_info, tensorrt_version

    return tensorrt_version() is not None and device_info()["gpu"] is not None


def export_triton(source: str | Path, out: str | Path, options: ProductionOptions = ProductionOptions(), *,
                  force: bool = False, progress: Optional[Progress] = None) -> ProductionRepository:
    """Write the production Triton repository of the engine set ``source`` to ``out`` (module docstring)."""
    from edgeprune.core.files import atomic_directory, check_target, write_json_atomic
    from edgeprune.exporting.onnx_export import DEFAULT_TOLERANCE, export
    from edgeprune.serving.batched import batch_sizes, model_from_manifest
    from edgeprune.serving.repository import check_config, install_python_model, write_config
    from edgeprune.serving.serve import model_config

    options.validate()
    out = Path(out)
    check_target(out, force)  # before the slow model load
    engine_set, calibration, mismatch = load_calibrated_set(source, latency_engine(options))
    calibrated = calibration["members"]
    members = sorted(engine_set.members, key=lambda m: -m.budget)
    models = [BudgetModel(budget_model_name(options.name, m.path), m.path, m.budget, float(calibrated[m.path]["p50_ms"]),
                          float(calibrated[m.path].get("p95_ms", calibrated[m.path]["p50_ms"]))) for m in members]
    service = scheduler_service(engine_set, models, options, calibration)
    build = options.backend == "tensorrt" and _can_build_plans()
    say(progress, "loading the set's model (checkpoint checked against its sha256)")
    net, _info = model_from_manifest(members[0].artifact.manifest["model"])
    repo = ProductionRepository(out, options.name, options, models, batch_sizes(options.max_batch), plans_built=build)
    if mismatch:
        repo.notes.append(f"latency priors: {mismatch}")
    with atomic_directory(out, overwrite=force) as tmp:
        work = tmp / ".work"
        for i, (member, model) in enumerate(zip(members, models)):
            prefix = f"[{i + 1}/{len(members)}] {model.name}"
            advance(progress, i, len(members))
            artifact = export(net, member.artifact.plan, work / member.path, dynamic_batch=True,
                              model_info=member.artifact.manifest["model"], progress=prefixed(progress, prefix))
            input_name = artifact.manifest["inputs"][0]["name"]
            chw = _dims(artifact.manifest["inputs"][0])
            say(progress, f"{prefix}: checking against the set's member at batch 1")
            error = _cross_check(member.artifact.onnx_path, artifact.onnx_path, input_name, chw, 2 * DEFAULT_TOLERANCE)
            folder = tmp / model.name
            (folder / "1").mkdir(parents=True)
            manifest = {**artifact.manifest, "engine_set_member": member.path, "cross_check_vs_member": error}
            write_json_atomic(folder / "manifest.json", manifest)
            if options.backend in ("onnxruntime", "openvino"):
                shutil.move(str(artifact.onnx_path), folder / "1" / "model.onnx")
            elif build:
                say(progress, f"{prefix}: building the TensorRT plan (batch 1..{options.max_batch})")
                build_plan(artifact.onnx_path, folder / "1" / "model.plan", input_name, chw, options, progress)
            else:
                shutil.move(str(artifact.onnx_path), folder / "model.onnx")
            check_config(write_config(folder, budget_model_config(model.name, artifact.manifest, options)),
                         model_files=options.backend != "tensorrt" or build)
        shutil.rmtree(work)
        if options.backend == "tensorrt" and not build:
            repo.script = out / SCRIPT_FILE
            script = tmp / SCRIPT_FILE
            script.write_text(trtexec_script([m.name for m in models], input_name, chw, options))
            script.chmod(0o755)
            repo.notes.append(f"TensorRT plans must be built on the target ({NOT_RUN}): run {SCRIPT_FILE} there "
                              "before starting Triton")
        scheduler = tmp / options.name
        scheduler.mkdir()
        write_json_atomic(scheduler / SERVICE_FILE, service.to_json())
        install_python_model(scheduler, Path(__file__).with_name("scheduler_model.py"))
        # service.json relative: the scheduler resolves it against its own folder, so the repository can move.
        config = model_config(options.name, service, Path(SERVICE_FILE), options.scheduler_instances,
                              options.queue_delay_us)
        config["parameters"].update({"edgeprune_engine_input": {"string_value": input_name},
                                     "edgeprune_engine_output": {"string_value": artifact.manifest["outputs"][0]["name"]}})
        if options.execution_env:
            config["parameters"]["EXECUTION_ENV_PATH"] = {"string_value": options.execution_env}
        check_config(write_config(scheduler, config))
        (tmp / README_FILE).write_text(readme_text(repo, service, engine_set, calibration))
    return repo


__all__ = ["NOT_RUN", "README_FILE", "SCRIPT_FILE", "BudgetModel", "ProductionOptions", "ProductionRepository", "budget_model_config",
           "budget_model_name", "build_plan", "export_triton", "latency_engine", "load_calibrated_set",
           "scheduler_service", "trtexec_script"]
