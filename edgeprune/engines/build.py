"""``edgeprune build``: one engine per artifact (or per budget of an engine set) for a backend.

Backends:

* ``trt``: a serialized TensorRT engine (``model.engine``) from the TensorRT builder;
* ``ort-trt``: ONNX Runtime's TensorRT execution provider, its engine and timing caches kept in
  the engine folder (``trt_cache/``), so a session loads them instead of rebuilding;
* ``ort-cuda``: ONNX Runtime's CUDA provider;
* ``ort-cpu``: ONNX Runtime on the CPU;
* ``openvino``: an OpenVINO compiled model (``model.blob``, written by ``export_model()``) for an
  OpenVINO device (``--device``, CPU by default); opening it imports the blob instead of compiling.

For ONNX Runtime backends the engine file is the graph after ONNX Runtime's own (portable)
optimisations, so a session starts without optimising again. Every backend gets the graph in the
asked precision first (:mod:`edgeprune.backends.precision`: fp16 with the token decisions in fp32),
except TensorRT 10 built with builder flags (``strongly_typed=False``), which lowers the fp32 graph itself.
``int8`` takes a quantized artifact (``edgeprune quantize``): its QDQ graph is built as it is, by
OpenVINO (int8 kernels) or ONNX Runtime's CPU provider; a set may mix int8 and fp32 members.

The engine folder format, loading and runners are in :mod:`edgeprune.engines.built`. A stale engine
(another TensorRT, another GPU, another OpenVINO) is refused when opened; building into a folder
that holds a stale build of the same sources replaces it without ``--force``, and a stale cache
entry is rebuilt, never copied.
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from edgeprune.artifacts.artifact import Artifact
from edgeprune.backends.feeds import random_feed
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import atomic_directory, read_folder_json, read_json, sha256_file, write_json_atomic
from edgeprune.core.progress import Progress, say
# The engine folder's names stay importable from here (runtime, calibrate, inspect and tests import them so).
from edgeprune.engines.built import (BACKENDS, ENGINE_FORMAT, ENGINE_KIND, ENGINES_FILE, ENGINES_KIND, INT8, ORT_PROVIDER,
                                     TRT_CACHE_DIR, BuiltEngine, built_calibration, engine_file_name, engines_index,
                                     is_engine_build, load_engine, load_engines, openvino_hint, ort_options, set_runners,
                                     stale_build, store_calibration)
from edgeprune.engines.cache import ENGINE_MANIFEST, EngineCache, cache_key, copy_entry

INT8_BACKENDS = ("openvino", "ort-cpu")  # where a QDQ graph is built and run (TensorRT's int8: not written yet)


def check_backend(backend: str, settings: Any = None) -> None:
    """Raise one line naming what is missing when ``backend`` (on ``settings.device``) cannot build or run here."""
    if backend not in BACKENDS:
        raise EdgepruneError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device = getattr(settings, "device", None)
    if backend == "openvino":
        from edgeprune.backends.openvino import DEFAULT_DEVICE, check_device, require_openvino

        require_openvino()
        check_device(device or DEFAULT_DEVICE)
        return
    if device is not None:
        raise EdgepruneError(f"--device is for --backend openvino; {backend} takes its GPU from CUDA_VISIBLE_DEVICES")
    if backend == "trt":
        from edgeprune.backends.trt import require_tensorrt

        require_tensorrt()
        return
    from edgeprune.backends.ort import resolve_providers

    resolve_providers([ORT_PROVIDER[backend]])


def check_precision(backend: str, settings: Any) -> None:
    if settings.precision == INT8:
        if backend not in INT8_BACKENDS:
            raise EdgepruneError(f"--precision int8 is built with --backend {' or '.join(INT8_BACKENDS)} (the quantized "
                                 f"QDQ graph); {backend} int8 engines are not written yet")
        replace(settings, precision="fp32").validate()  # the other settings; BuilderSettings knows float precisions only
        return
    settings.validate()
    if backend == "openvino":
        return  # OpenVINO lowers the fp32 graph to bf16 or fp16 itself (INFERENCE_PRECISION_HINT)
    if settings.precision == "bf16" and backend != "trt":
        raise EdgepruneError("--precision bf16 is built only with --backend trt (ONNX Runtime has no bf16 kernels for "
                             "these graphs); use fp16 for ONNX Runtime backends")
    if settings.precision == "bf16" and settings.strongly_typed:
        raise EdgepruneError("--precision bf16 needs TensorRT 10 builder flags (--weakly-typed): edgeprune does not "
                             "write bf16 graphs yet, and TensorRT 11 takes precision only from the graph")


def member_settings(artifacts: list[tuple[str, Artifact]], settings: Any) -> list[Any]:
    """The settings each artifact is built with, or one line saying why the precision does not fit:
    ``--precision int8`` builds the quantized artifacts int8 and the others of a mixed set fp32; a
    float precision is refused for a quantized artifact."""
    quantized = [name for name, a in artifacts if a.precision == INT8]
    if settings.precision == INT8 and not quantized:
        source = artifacts[0][1].path if len(artifacts) == 1 else artifacts[0][1].path.parent
        raise EdgepruneError(f"{source} is not quantized: --precision int8 builds int8 artifacts; make one with "
                             f"`edgeprune quantize {source} --calib DIR` and build its output")
    if settings.precision != INT8 and quantized:
        if len(artifacts) == 1:
            raise EdgepruneError(f"{artifacts[0][1].path} is an int8 artifact: build it with --precision int8")
        raise EdgepruneError(f"{artifacts[0][1].path.parent} has int8 members ({', '.join(quantized)}): build it with "
                             "--precision int8 (its fp32 members are then built fp32)")
    return [settings if settings.precision != INT8 or a.precision == INT8 else replace(settings, precision="fp32")
            for _, a in artifacts]


def graph_precision(backend: str, settings: Any) -> str:
    """The precision of the ONNX graph handed to the backend (builder flags lower an fp32 graph)."""
    if backend == "trt" and not settings.strongly_typed:
        return "fp32"
    if backend == "openvino" and settings.precision != INT8:
        # OpenVINO gets the fp32 graph and its precision hint lowers it (backends/openvino.py keeps
        # the token decisions fp32 at bf16/fp16).
        return "fp32"
    return settings.precision


def with_default_device(backend: str, settings: Any) -> Any:
    """``settings`` naming OpenVINO's default device (CPU) when an openvino build names none, so the
    manifest and the cache key always say which device the blob was compiled for."""
    if backend == "openvino" and getattr(settings, "device", None) is None:
        from dataclasses import replace

        from edgeprune.backends.openvino import DEFAULT_DEVICE

        return replace(settings, device=DEFAULT_DEVICE)
    return settings


def recipe_digest() -> str:
    """Changes when the precision conversion changes, so cached engines of old conversions are rebuilt."""
    from edgeprune.backends import precision

    return hashlib.sha256(Path(precision.__file__).read_bytes()).hexdigest()[:16]


def backend_versions(backend: str) -> dict[str, Optional[str]]:
    import onnxruntime

    from edgeprune.core.version import __version__

    versions: dict[str, Optional[str]] = {"edgeprune": __version__, "onnxruntime": onnxruntime.__version__}
    if backend in ("trt", "ort-trt"):
        from edgeprune.backends.trt import tensorrt_version

        versions["tensorrt"] = tensorrt_version()
    if backend == "openvino":
        from edgeprune.backends.openvino import openvino_version

        versions["openvino"] = openvino_version()  # the full build string: a blob loads only in the same build
    return versions


def backend_device(backend: str, settings: Any = None) -> dict[str, Any]:
    """The device an engine is tied to: GPU name and compute capability, or the CPU fingerprint
    (and for OpenVINO the device it was compiled for, with OpenVINO's name for it)."""
    if backend in ("ort-cpu", "openvino"):
        from edgeprune.core.machine import machine_fingerprint

        fp = machine_fingerprint()
        if backend == "openvino":
            from edgeprune.backends.openvino import DEFAULT_DEVICE, device_name

            device = getattr(settings, "device", None) or DEFAULT_DEVICE
            return {"cpu": fp["cpu"], "platform": fp["platform"], "openvino_device": device,
                    "device_name": device_name(device)}
        return {"cpu": fp["cpu"], "platform": fp["platform"]}
    from edgeprune.backends.trt import device_info

    return device_info()


def key_fields(artifact: Artifact, backend: str, settings: Any, versions: dict[str, Any],
               device: dict[str, Any]) -> dict[str, Any]:
    """Everything an engine depends on; its hash is the cache key."""
    return {"onnx_sha256": artifact.manifest["onnx"]["sha256"], "backend": backend, "settings": settings.to_dict(),
            "graph_precision": graph_precision(backend, settings), "recipe": recipe_digest(),
            "versions": {k: v for k, v in versions.items() if k != "edgeprune"},
            "device": {k: device.get(k) for k in ("gpu", "compute_capability", "cpu")}}


def write_graph(artifact: Artifact, precision: str, target: Path) -> str:
    """Write the artifact's graph in ``precision`` to ``target``; returns its sha256."""
    import onnx

    from edgeprune.backends.precision import convert_precision
    from edgeprune.backends.graph import load_graph

    if precision in ("fp32", INT8):  # an int8 artifact's graph is the quantized QDQ graph already
        data = artifact.onnx_path.read_bytes()
    else:
        data = convert_precision(load_graph(artifact.onnx_path), precision).SerializeToString()
        onnx.checker.check_model(data)
    target.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def low_precision_layers(compiled: Any) -> dict[str, int]:
    """How many of the compiled model's matrix layers (FullyConnected, MatMul, Convolution) run in
    int8/uint8 and how many in all: OpenVINO's executed graph says what an int8 engine really runs."""
    counts = {"int8": 0, "all": 0}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or str(info["layerType"].astype(str)) not in ("FullyConnected", "MatMul", "Convolution"):
            continue
        counts["all"] += 1
        counts["int8"] += str(info["runtimePrecision"].astype(str)) in ("i8", "u8") if "runtimePrecision" in info else 0
    return counts


def _build_into(tmp: Path, artifact: Artifact, backend: str, settings: Any, timing_cache: Optional[Path],
                progress: Optional[Progress] = None) -> dict[str, Any]:
    """Build the engine file into ``tmp``; returns the manifest's graph and engine entries."""
    precision = graph_precision(backend, settings)
    graph_path = tmp / ("graph.onnx" if backend == "trt" else "source.onnx")
    say(progress, f"{artifact.name}: writing the {precision} graph")
    graph_sha = write_graph(artifact, precision, graph_path)
    engine_path = tmp / engine_file_name(backend)
    inference_precision = int8_layers = None
    if backend == "trt":
        from edgeprune.backends.trt import build_serialized_engine

        say(progress, f"{artifact.name}: building the TensorRT engine")
        engine_path.write_bytes(build_serialized_engine(graph_path, settings, timing_cache,
                                                        log=lambda m: say(progress, m)))  # TensorRT's logger lines
    elif backend == "openvino":
        from edgeprune.backends.openvino import CompiledFromPath, OpenVinoRunner, effective_precision, export_blob

        say(progress, f"{artifact.name}: compiling for OpenVINO ({settings.device}, {settings.precision})")
        with OpenVinoRunner(CompiledFromPath(graph_path, settings.device, openvino_hint(settings.precision))) as runner:
            runner.infer(random_feed(artifact.manifest["inputs"]))  # a compiled model that cannot run is not stored
            engine_path.write_bytes(export_blob(runner.compiled))
            # what the device really runs: a CPU without bf16/fp16 units runs f32 whatever the hint
            inference_precision = effective_precision(runner.compiled)
            if settings.precision == INT8:
                int8_layers = low_precision_layers(runner.compiled)
    else:
        from edgeprune.backends.ort import OrtRunner, SessionFromOnnx

        say(progress, f"{artifact.name}: optimising for ONNX Runtime ({ORT_PROVIDER[backend]})")
        loader = SessionFromOnnx(graph_path, [ORT_PROVIDER[backend]], provider_options=ort_options(backend, settings, tmp, timing_cache),
                                 optimized_path=engine_path)
        with OrtRunner(loader) as runner:  # the first run builds the TensorRT EP's engines into trt_cache/
            runner.infer(random_feed(artifact.manifest["inputs"]))
    graph_path.unlink()
    engine = {"file": engine_path.name, "sha256": sha256_file(engine_path), "bytes": engine_path.stat().st_size}
    if inference_precision is not None:
        engine["inference_precision"] = inference_precision
    if int8_layers is not None:
        engine["int8_layers"] = int8_layers
    return {"graph": {"precision": precision, "sha256": graph_sha}, "engine": engine}


def source_entry(artifact: Artifact) -> dict[str, Any]:
    """What an engine manifest says of the artifact it was built from."""
    source = artifact.manifest
    return {"artifact": str(artifact.path.resolve()), "name": artifact.name, "onnx_sha256": source["onnx"]["sha256"],
            "method": source["method"], "model": source.get("model"), "inputs": source["inputs"],
            "outputs": source["outputs"], "macs": source["plan"].get("macs")}


def engine_manifest(artifact: Artifact, backend: str, settings: Any, built: dict[str, Any], key: str,
                    versions: dict[str, Any], device: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "kind": ENGINE_KIND, "format": ENGINE_FORMAT, "backend": backend, "precision": settings.precision,
        "settings": settings.to_dict(), "source": source_entry(artifact),
        **built,
        "versions": versions, "device": device, "cache_key": key,
        "built": {"how": "built", "seconds": round(seconds, 3),
                  "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }


def cached_entry(cache: Optional[EngineCache], key: str, progress: Optional[Progress] = None) -> Optional[Path]:
    """The cache entry for ``key`` when it can run here; a stale one (its manifest names another
    OpenVINO or TensorRT than this machine's) is deleted, so it is rebuilt, never loaded."""
    entry = cache.lookup(key) if cache is not None else None
    if entry is None:
        return None
    why = BuiltEngine(entry, read_json(entry / ENGINE_MANIFEST)).stale_reason()
    if why is None:
        return entry
    say(progress, f"cache entry {entry.name} is stale ({why}): rebuilding it")
    shutil.rmtree(entry, ignore_errors=True)
    return None


def may_replace(target: Path, backend: str, sources: list[Artifact], force: bool) -> bool:
    """Whether a build may replace ``target``: with ``--force``, or when it holds a stale build (one
    that cannot run here) of the same backend from the same ONNX files, which a rebuild supersedes."""
    if force or stale_build(target) is None:
        return force
    engines = load_engines(target, verify=False)
    return (all(e.backend == backend for e in engines)
            and {e.manifest["source"]["onnx_sha256"] for e in engines} == {a.manifest["onnx"]["sha256"] for a in sources})


def build_engine(artifact: Artifact, backend: str, settings: Any, out: Path, *, cache: Optional[EngineCache] = None,
                 timing_cache: Optional[Path] = None, force: bool = False,
                 progress: Optional[Progress] = None) -> "BuiltEngine":
    """Build (or take from ``cache``) the engine of one artifact into the folder ``out``."""
    settings = with_default_device(backend, settings)
    check_precision(backend, settings)
    member_settings([("engine", artifact)], settings)
    check_backend(backend, settings)
    start = time.perf_counter()
    versions, device = backend_versions(backend), backend_device(backend, settings)
    key = cache_key(key_fields(artifact, backend, settings, versions, device))
    entry = cached_entry(cache, key, progress)
    with atomic_directory(out, overwrite=may_replace(Path(out), backend, [artifact], force)) as tmp:
        if entry is not None:
            say(progress, f"{artifact.name}: engine found in the cache ({entry})")
            copy_entry(entry, tmp)
            manifest = read_folder_json(tmp, ENGINE_MANIFEST, "engine")
            manifest["built"]["how"] = "cache"
            manifest["source"]["artifact"] = str(artifact.path.resolve())
        else:
            built = _build_into(tmp, artifact, backend, settings, timing_cache, progress)
            manifest = engine_manifest(artifact, backend, settings, built, key, versions, device, time.perf_counter() - start)
        write_json_atomic(tmp / ENGINE_MANIFEST, manifest)
        if cache is not None and entry is None:
            cache.store(key, tmp)
    return load_engine(out)


def build_set(engine_set: Any, backend: str, settings: Any, out: Path, *, cache: Optional[EngineCache] = None,
              timing_cache: Optional[Path] = None, force: bool = False,
              progress: Optional[Progress] = None) -> list[BuiltEngine]:
    """One engine per member of an engine set, in one folder published at once (int8 members of a
    mixed set int8, the others fp32, when ``settings.precision`` is int8)."""
    settings = with_default_device(backend, settings)
    check_precision(backend, settings)
    per_member = member_settings([(m.path, m.artifact) for m in engine_set.members], settings)
    check_backend(backend, settings)
    overwrite = may_replace(Path(out), backend, [m.artifact for m in engine_set.members], force)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        built = [build_engine(m.artifact, backend, s, tmp / m.path, cache=cache, timing_cache=timing_cache, progress=progress)
                 for m, s in zip(engine_set.members, per_member)]
        mixed = len({s.precision for s in per_member}) > 1
        write_json_atomic(tmp / ENGINES_FILE, engines_index(
            backend, settings.precision, str(engine_set.path.resolve()),
            [{"budget": m.budget, "path": m.path, "engine_sha256": b.manifest["engine"]["sha256"],
              **({"precision": s.precision} if mixed else {})}
             for m, s, b in zip(engine_set.members, per_member, built)]))
    return load_engines(out)


def default_out(source: Path, backend: str, precision: str) -> Path:
    return source.parent / f"{source.name}.{backend}-{precision}"


__all__ = ["BACKENDS", "BuiltEngine", "ENGINES_FILE", "ENGINES_KIND", "ENGINE_FORMAT", "ENGINE_KIND", "INT8_BACKENDS",
           "ORT_PROVIDER", "TRT_CACHE_DIR", "build_engine", "build_set", "built_calibration",
           "check_backend", "check_precision", "default_out", "engine_file_name", "engines_index", "graph_precision",
           "is_engine_build", "load_engine", "load_engines", "may_replace", "member_settings", "ort_options", "random_feed",
           "set_runners", "source_entry", "stale_build", "store_calibration", "write_graph"]
