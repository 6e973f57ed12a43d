"""``edgeprune export-triton``: an engine set as a model repository for a production Triton server.

``edgeprune serve`` runs every budget inside one Python-backend model on ONNX Runtime. A production
Triton has the ONNX Runtime and TensorRT backends, so here every budget becomes a model of its own
(``<name>_b1.00``, ...: the member's graph re-exported with a dynamic batch axis, everything else
static) that Triton batches and places on the GPU itself, and a Python-backend *scheduler* model
``<name>`` (:mod:`edgeprune.serving.scheduler_model`) takes the clients' requests, checks and
batches them and routes each batch to a budget by its deadline through BLS, using the same
:class:`edgeprune.serving.service.Service` as ``edgeprune serve``.

The scheduler's latency profiles are this machine's calibration (``set.json``) scaled by batch size:
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

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, advance, prefixed, say
from edgeprune.serving.service import SERVICE_FILE, ServiceConfig

BACKENDS = ("onnxruntime", "tensorrt")
DEVICES = ("gpu", "cpu")
ACCELERATORS = ("none", "tensorrt")
PRECISIONS = ("fp16", "fp32")
MAX_BATCH_LIMIT = 1024  # the exporter's symbolic batch axis is bounded there
ENGINE_QUEUE_DELAY_US = 100  # budget models get batches already formed by the scheduler: wait little
SCRIPT_FILE = "build_plans.sh"
README_FILE = "README.md"
NOT_RUN = "not run on this project's machines yet"


@dataclass(frozen=True)
class ProductionOptions:
    """What ``edgeprune export-triton`` writes; see ``docs/export-triton.md`` for each field."""

    name: str = "edgeprune"
    backend: str = "onnxruntime"
    device: str = "gpu"
    max_batch: int = 8
    instances: int = 1  # per budget model
    scheduler_instances: int = 1
    queue_delay_us: int = 2000  # the scheduler's dynamic batcher
    target_ms: float = 1000.0 / 30
    threads: int = 0  # ORT intra-op threads on CPU; 0 = ONNX Runtime's choice
    accelerator: str = "none"  # ORT on GPU: "tensorrt" = ORT's TensorRT execution provider
    precision: str = "fp16"
    workspace_mb: int = 1024
    trt_cache: str = "/tmp/triton-trt-cache"  # on the target machine
    execution_env: Optional[str] = None  # EXECUTION_ENV_PATH of the scheduler (a conda-pack tarball)

    def validate(self) -> None:
        from edgeprune.serving.repository import check_name

        check_name(self.name)
        for flag, value, allowed in (("--backend", self.backend, BACKENDS), ("--device", self.device, DEVICES),
                                     ("--accelerator", self.accelerator, ACCELERATORS),
                                     ("--precision", self.precision, PRECISIONS)):
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


def load_calibrated_set(source: str | Path) -> Any:
    """The engine set at ``source`` with its calibration, or one EdgepruneError line saying what is missing."""
    from edgeprune.artifacts.engine_set import SET_FILE, is_engine_set, load_engine_set
    from edgeprune.runtime.runtime import profiles_from_calibration

    path = Path(source)
    if not path.exists():
        raise EdgepruneError(f"{path} does not exist")
    if not is_engine_set(path):
        raise EdgepruneError(f"{path} is not an engine set (no {SET_FILE}); export one with "
                             "`edgeprune export MODEL --budgets 1.0,0.75,0.5 --out SET`")
    engine_set = load_engine_set(path)
    profiles_from_calibration(engine_set)  # the Runtime's own check: uncalibrated, or a member without latency
    return engine_set


def scheduler_service(engine_set: Any, models: Sequence[BudgetModel], options: ProductionOptions) -> ServiceConfig:
    """The scheduler's :class:`ServiceConfig`: every budget model at batch sizes 1, 2, 4, ... max_batch,
    with the calibrated batch-1 latency scaled by batch size (a prior; the policy corrects it online)."""
    from edgeprune.serving.batched import batch_sizes

    first = engine_set.members[0].artifact
    outputs = first.manifest.get("outputs") or []
    shape = list(outputs[0].get("shape") or []) if outputs else []
    if len(shape) not in (2, 4):
        raise EdgepruneError(f"{engine_set.path}: Triton export takes classifiers (logits [N, K]) and segmenters "
                             f"(logits [N, K, H, W]); this model's first output is {shape}")
    calibration_batch = int((engine_set.calibration or {}).get("batch") or 1)
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
    engine_set = load_calibrated_set(source)
    calibrated = engine_set.calibration["members"]
    members = sorted(engine_set.members, key=lambda m: -m.budget)
    models = [BudgetModel(budget_model_name(options.name, m.path), m.path, m.budget, float(calibrated[m.path]["p50_ms"]),
                          float(calibrated[m.path].get("p95_ms", calibrated[m.path]["p50_ms"]))) for m in members]
    service = scheduler_service(engine_set, models, options)
    build = options.backend == "tensorrt" and _can_build_plans()
    say(progress, "loading the set's model (checkpoint checked against its sha256)")
    net, _info = model_from_manifest(members[0].artifact.manifest["model"])
    repo = ProductionRepository(out, options.name, options, models, batch_sizes(options.max_batch), plans_built=build)
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
            if options.backend == "onnxruntime":
                shutil.move(str(artifact.onnx_path), folder / "1" / "model.onnx")
            elif build:
                say(progress, f"{prefix}: building the TensorRT plan (batch 1..{options.max_batch})")
                build_plan(artifact.onnx_path, folder / "1" / "model.plan", input_name, chw, options, progress)
            else:
                shutil.move(str(artifact.onnx_path), folder / "model.onnx")
            check_config(write_config(folder, budget_model_config(model.name, artifact.manifest, options)),
                         model_files=options.backend == "onnxruntime" or build)
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
        (tmp / README_FILE).write_text(readme_text(repo, service, engine_set))
    return repo


def readme_text(repo: ProductionRepository, service: ServiceConfig, engine_set: Any) -> str:
    """``README.md`` of the repository: how to run it, what is in it, and what was not run here."""
    o, (c, h, w) = repo.options, service.input_size
    machine = (engine_set.calibration or {}).get("machine", {})
    rows = "\n".join(f"| `{m.name}` | {m.member} | {m.budget:g} | {m.p50_ms:.3f} | {m.p95_ms:.3f} |" for m in repo.models)
    kind = ("TensorRT plans (`platform: tensorrt_plan`)" if o.backend == "tensorrt" else
            f"ONNX Runtime on {o.device.upper()}{' with its TensorRT provider' if o.accelerator == 'tensorrt' else ''}")
    plans = ("" if o.backend != "tensorrt" else "\n## TensorRT plans\n\nBuilt on this machine's GPU: they load only on "
             "the same GPU model and TensorRT version.\n" if repo.plans_built else
             f"\n## TensorRT plans must be built on the target\n\nThe plans are **not built** ({NOT_RUN}): each budget "
             f"model holds `model.onnx` and an empty `1/`. On the target, with the TensorRT version of the Triton image "
             f"that will serve this repository, run `./{SCRIPT_FILE}` (trtexec, dynamic-batch profile 1..{o.max_batch}; "
             "`TRTEXEC=` picks another binary). Triton cannot load the budget models before that.\n")
    return f"""# Triton model repository `{repo.name}` (written by `edgeprune export-triton`)

Engine set `{Path(engine_set.path).name}`: {len(repo.models)} budget models on {kind}, max batch {o.max_batch}, and
the scheduler model `{repo.name}`. Every `config.pbtxt` was checked against Triton's `model_config.proto`.

## Start Triton

```
docker run --rm --gpus all -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/{repo.path.name}:/models \\
    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models
```

(`--gpus all` needs the NVIDIA container toolkit; CPU-only repositories do without.) The scheduler imports
`edgeprune` in Triton's Python backend, so install it there first, e.g. an image `FROM
nvcr.io/nvidia/tritonserver:<yy.mm>-py3` with `RUN pip install edgeprune`. That pulls torch and onnxruntime too;
the scheduler itself needs only numpy, pillow and opencv: `pip install --no-deps edgeprune && pip install
'numpy<2' pillow 'opencv-python-headless<4.12'`. Alternatively pack such an environment with `conda-pack` (the
Python version of the backend stub) and name it in the scheduler's `EXECUTION_ENV_PATH` parameter
(`edgeprune export-triton --execution-env '$$TRITON_MODEL_DIRECTORY/env.tar.gz'`).
{plans}
## Models

| model | member | budget | p50 ms (batch 1) | p95 ms |
|---|---|---|---|---|
{rows}

- `{repo.name}` (Python backend, {o.scheduler_instances} instance(s)) is **the model clients call**: it checks each
  request, batches rows (sizes {', '.join(map(str, repo.sizes))}), picks a budget per batch with a deadline policy
  and sends the batch to that budget's model through BLS.
- `{repo.name}_b*`: one budget's graph each, dynamic batch axis (1..{o.max_batch}), input `pixel_values` FP32
  [{c}, {h}, {w}], output `logits`; callable directly too (no deadline logic).

The latencies above and in `{repo.name}/{SERVICE_FILE}` are **this machine's CPU calibration** ({machine.get('cpu', '?')},
{machine.get('cores', '?')} cores, ONNX Runtime), scaled linearly by batch size: only a prior. The deadline policy
rescales its predictions from the latencies it measures on the target and adapts within a few batches.

## Requests (model `{repo.name}`)

- Inputs, exactly one: `image` UINT8 [N, H, W, 3] (RGB, any size; resized to {h}x{w} and normalised as in
  training) or `pixels` FP32 [N, {c}, {h}, {w}] (normalised); N <= {o.max_batch}.
- Parameters, optional, one of: `deadline_ms` (the largest budget predicted to fit; default {o.target_ms:g} ms)
  or `budget` ({', '.join(f'{b:g}' for b in service.budgets)}).
- Outputs: `labels` ({f'UINT8 [N, {h}, {w}]' if service.dense else 'INT32 [N, 1]'}), `logits` FP32, `budget` FP32 [N, 1],
  `engine` BYTES [N, 1] (the member that ran), `timings_ms` FP32 [N, 2] (budget model call, whole request),
  `batch_size` INT32 [N, 1]. A bad request gets an error response naming the problem.

```python
import numpy as np, tritonclient.http as httpclient
client = httpclient.InferenceServerClient("localhost:8000")
image = httpclient.InferInput("image", [1, {h}, {w}, 3], "UINT8")
image.set_data_from_numpy(np.zeros((1, {h}, {w}, 3), np.uint8))
result = client.infer("{repo.name}", [image], parameters={{"deadline_ms": 20}})
print(result.as_numpy("budget"), result.as_numpy("labels").shape)
```

## What was and was not run

- Here: each budget's ONNX re-exported with a dynamic batch axis, checked against eager PyTorch at batch 1 and 2
  and against the set's own member at batch 1; the scheduler loads in the Triton server PyTriton bundles
  (`--check-load`; Python backend only). edgeprune's tests also route requests through the scheduler by BLS to
  Python-backend stand-ins running the same ONNX.
- Not here: the ONNX Runtime and TensorRT backends, GPU instances and the TensorRT settings were {NOT_RUN}.
"""


__all__ = ["BudgetModel", "ProductionOptions", "ProductionRepository", "budget_model_config",
           "budget_model_name", "build_plan", "export_triton", "load_calibrated_set", "readme_text",
           "scheduler_service", "trtexec_script"]
