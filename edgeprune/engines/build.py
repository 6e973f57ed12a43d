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

An engine folder holds the engine file and ``engine.json``: backend, precision, builder settings,
library versions, the device, the sha256 of the source ONNX, of the graph built and of the engine.
A stale engine (another TensorRT, another GPU, another OpenVINO, changed files) is refused when opened.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgeprune.artifacts.artifact import Artifact
from edgeprune.artifacts.schema import check_manifest
from edgeprune.core.files import atomic_directory, read_folder_json, sha256_file, write_json_atomic
from edgeprune.engines.cache import ENGINE_MANIFEST, EngineCache, cache_key, copy_entry
from edgeprune.backends.feeds import random_feed
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, say

BACKENDS = ("trt", "ort-trt", "ort-cuda", "ort-cpu", "openvino")
ENGINE_KIND = "edgeprune-engine"
ENGINES_KIND = "edgeprune-engine-build"  # one engine per member of an engine set
ENGINES_FILE = "engines.json"
ENGINE_FORMAT = 1
ORT_PROVIDER = {"ort-trt": "tensorrt", "ort-cuda": "cuda", "ort-cpu": "cpu"}
TRT_CACHE_DIR = "trt_cache"


def engine_file_name(backend: str) -> str:
    return {"trt": "model.engine", "openvino": "model.blob"}.get(backend, "model.onnx")


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
    if backend == "openvino" and settings.precision == "int8":
        raise EdgepruneError("--precision int8 is not built yet for --backend openvino (it needs a quantized graph "
                             "from calibration data, a later piece of issue 24); use fp32, bf16 or fp16")
    settings.validate()
    if backend == "openvino":
        return  # OpenVINO lowers the fp32 graph to bf16 or fp16 itself (INFERENCE_PRECISION_HINT)
    if settings.precision == "bf16" and backend != "trt":
        raise EdgepruneError("--precision bf16 is built only with --backend trt (ONNX Runtime has no bf16 kernels for "
                             "these graphs); use fp16 for ONNX Runtime backends")
    if settings.precision == "bf16" and settings.strongly_typed:
        raise EdgepruneError("--precision bf16 needs TensorRT 10 builder flags (--weakly-typed): edgeprune does not "
                             "write bf16 graphs yet, and TensorRT 11 takes precision only from the graph")


def graph_precision(backend: str, settings: Any) -> str:
    """The precision of the ONNX graph handed to the backend (builder flags lower an fp32 graph)."""
    if backend == "trt" and not settings.strongly_typed:
        return "fp32"
    if backend == "openvino":
        # OpenVINO gets the fp32 graph and its precision hint lowers it, token decisions (similarity,
        # top-k, sizes) included; keeping those in fp32 under bf16/fp16 is a later piece of issue 24.
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

    if precision == "fp32":
        data = artifact.onnx_path.read_bytes()
    else:
        data = convert_precision(load_graph(artifact.onnx_path), precision).SerializeToString()
        onnx.checker.check_model(data)
    target.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def ort_options(backend: str, settings: Any, folder: Path, timing_cache: Optional[Path] = None) -> dict[str, dict[str, str]]:
    from edgeprune.backends.ort import accelerator_options

    provider = ORT_PROVIDER[backend]
    if provider == "cpu":
        return {}
    return {provider: accelerator_options(
        provider, cache_dir=folder / TRT_CACHE_DIR, precision=settings.precision, workspace_mb=settings.workspace_mb,
        optimization_level=settings.optimization_level, timing_cache_dir=timing_cache or folder / TRT_CACHE_DIR,
        hardware_compatible=settings.hardware_compatibility == "ampere+")}


def _build_into(tmp: Path, artifact: Artifact, backend: str, settings: Any, timing_cache: Optional[Path],
                progress: Optional[Progress] = None) -> dict[str, Any]:
    """Build the engine file into ``tmp``; returns the manifest's graph and engine entries."""
    precision = graph_precision(backend, settings)
    graph_path = tmp / ("graph.onnx" if backend == "trt" else "source.onnx")
    say(progress, f"{artifact.name}: writing the {precision} graph")
    graph_sha = write_graph(artifact, precision, graph_path)
    engine_path = tmp / engine_file_name(backend)
    inference_precision = None
    if backend == "trt":
        from edgeprune.backends.trt import build_serialized_engine

        say(progress, f"{artifact.name}: building the TensorRT engine")
        engine_path.write_bytes(build_serialized_engine(graph_path, settings, timing_cache,
                                                        log=lambda m: say(progress, m)))  # TensorRT's logger lines
    elif backend == "openvino":
        from edgeprune.backends.openvino import CompiledFromPath, OpenVinoRunner, effective_precision, export_blob

        say(progress, f"{artifact.name}: compiling for OpenVINO ({settings.device}, {settings.precision})")
        with OpenVinoRunner(CompiledFromPath(graph_path, settings.device, settings.precision)) as runner:
            runner.infer(random_feed(artifact.manifest["inputs"]))  # a compiled model that cannot run is not stored
            engine_path.write_bytes(export_blob(runner.compiled))
            # what the device really runs: a CPU without bf16/fp16 units runs f32 whatever the hint
            inference_precision = effective_precision(runner.compiled)
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


def build_engine(artifact: Artifact, backend: str, settings: Any, out: Path, *, cache: Optional[EngineCache] = None,
                 timing_cache: Optional[Path] = None, force: bool = False,
                 progress: Optional[Progress] = None) -> "BuiltEngine":
    """Build (or take from ``cache``) the engine of one artifact into the folder ``out``."""
    settings = with_default_device(backend, settings)
    check_precision(backend, settings)
    check_backend(backend, settings)
    start = time.perf_counter()
    versions, device = backend_versions(backend), backend_device(backend, settings)
    key = cache_key(key_fields(artifact, backend, settings, versions, device))
    entry = cache.lookup(key) if cache is not None else None
    with atomic_directory(out, overwrite=force) as tmp:
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


@dataclass(frozen=True)
class BuiltEngine:
    path: Path
    manifest: dict[str, Any]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def engine_path(self) -> Path:
        return self.path / self.manifest["engine"]["file"]

    @property
    def name(self) -> str:
        return self.path.name

    def verify(self) -> None:
        if sha256_file(self.engine_path) != self.manifest["engine"]["sha256"]:
            raise EdgepruneError(f"{self.engine_path}: sha256 does not match {ENGINE_MANIFEST} (file changed or corrupt)")

    def stale_reason(self) -> Optional[str]:
        """Why this engine must not run here (another TensorRT or GPU, another OpenVINO build or a
        device OpenVINO does not report), or None."""
        if self.backend == "openvino":
            return self._openvino_stale_reason()
        if self.backend not in ("trt", "ort-trt"):
            return None
        from edgeprune.backends.trt import device_info, tensorrt_version

        built, here = self.manifest.get("versions", {}).get("tensorrt"), tensorrt_version()
        if built and here and built != here and not self.manifest["settings"].get("version_compatible"):
            return f"built with TensorRT {built}, this machine has {here}"
        cc, here_cc = self.manifest.get("device", {}).get("compute_capability"), device_info().get("compute_capability")
        hw = self.manifest["settings"].get("hardware_compatibility", "none")
        if cc and here_cc and cc != here_cc and hw != "ampere+":
            return f"built for compute capability {cc}, this GPU has {here_cc}"
        return None

    def _openvino_stale_reason(self) -> Optional[str]:
        from edgeprune.backends.openvino import available_devices, openvino_version

        here = openvino_version()
        if here is None:
            return None  # the runner says which package to install
        built = self.manifest.get("versions", {}).get("openvino")
        if built != here:  # an exported blob is tied to the OpenVINO build that wrote it
            return f"built with OpenVINO {built}, this machine has {here}"
        device = self.manifest["settings"].get("device") or "CPU"
        devices = available_devices()
        if device not in devices and device not in {d.split(".")[0] for d in devices}:
            return f"built for OpenVINO device {device}, OpenVINO here reports {', '.join(devices) or 'none'}"
        return None

    def runner(self, threads: Optional[int] = 2, spinning: bool = True) -> Any:
        """A runner for this engine (activate it, or use it as a context manager)."""
        why = self.stale_reason()
        if why:
            raise EdgepruneError(f"{self.path}: stale engine ({why}); rebuild it with `edgeprune build`")
        if self.backend == "trt":
            from edgeprune.backends.trt import EngineFromPath, TrtRunner

            return TrtRunner(EngineFromPath(self.engine_path, allow_host_code=bool(self.manifest["settings"].get("version_compatible"))))
        if self.backend == "openvino":
            from edgeprune.backends.openvino import OpenVinoRunner

            # OpenVINO has no switch like ONNX Runtime's thread spinning: ``spinning`` does not apply
            return OpenVinoRunner(self.engine_path, self.manifest["settings"].get("device") or "CPU",
                                  self.manifest["settings"]["precision"], threads)
        from edgeprune.backends.ort import OrtRunner

        settings = _settings_from(self.manifest["settings"])
        return OrtRunner(self.engine_path, [ORT_PROVIDER[self.backend]], threads, spinning,
                         provider_options=ort_options(self.backend, settings, self.path))


def _settings_from(data: dict[str, Any]) -> Any:
    from edgeprune.backends.trt import BuilderSettings

    known = BuilderSettings.__dataclass_fields__
    return BuilderSettings(**{k: v for k, v in data.items() if k in known})


def load_engine(path: str | os.PathLike, verify: bool = True) -> BuiltEngine:
    """Read an engine folder; a missing, foreign or corrupt one is one EdgepruneError line."""
    root = Path(path)
    manifest = read_folder_json(root, ENGINE_MANIFEST, "engine")
    if not isinstance(manifest, dict) or manifest.get("kind") != ENGINE_KIND:
        raise EdgepruneError(f"{root / ENGINE_MANIFEST}: not an edgeprune engine (kind is not '{ENGINE_KIND}')")
    if manifest.get("format") != ENGINE_FORMAT:
        raise EdgepruneError(f"{root / ENGINE_MANIFEST}: unsupported engine format {manifest.get('format')!r}")
    for key in ("backend", "settings", "source", "engine"):
        if key not in manifest:
            raise EdgepruneError(f"{root / ENGINE_MANIFEST}: lacks '{key}'")
    check_manifest("engine", manifest, root / ENGINE_MANIFEST)
    engine = BuiltEngine(root, manifest)
    if not engine.engine_path.is_file():
        raise EdgepruneError(f"{root}: {engine.engine_path.name} is missing")
    if verify:
        engine.verify()
    return engine


def is_engine_build(path: str | os.PathLike) -> bool:
    return (Path(path) / ENGINES_FILE).is_file()


def load_engines(path: str | os.PathLike, verify: bool = True) -> list[BuiltEngine]:
    """The engines of a folder: one engine folder, or a set build (``engines.json`` + a folder per budget)."""
    root = Path(path)
    if not is_engine_build(root):
        return [load_engine(root, verify)]
    index = read_folder_json(root, ENGINES_FILE, "engine build")
    if not isinstance(index, dict) or index.get("kind") != ENGINES_KIND:
        raise EdgepruneError(f"{root / ENGINES_FILE}: not an edgeprune engine build (kind is not '{ENGINES_KIND}')")
    check_manifest("engine-build", index, root / ENGINES_FILE)
    try:
        members = [(str(m["path"]), str(m["engine_sha256"])) for m in index["members"]]
    except (KeyError, TypeError) as exc:
        raise EdgepruneError(f"{root / ENGINES_FILE}: malformed members list ({exc})") from None
    engines = []
    for name, sha in members:
        if Path(name).name != name:
            raise EdgepruneError(f"{root / ENGINES_FILE}: member path {name!r} leaves the folder")
        engine = load_engine(root / name, verify)
        if engine.manifest["engine"]["sha256"] != sha:
            raise EdgepruneError(f"{root / name}: engine sha256 differs from {ENGINES_FILE} (member replaced)")
        engines.append(engine)
    return engines


def engines_index(backend: str, precision: str, source: Optional[str], members: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``engines.json`` of a set build; ``members``: {"budget", "path", "engine_sha256"} each."""
    return {"kind": ENGINES_KIND, "format": ENGINE_FORMAT, "backend": backend, "precision": precision,
            "source": source, "members": members}


def build_set(engine_set: Any, backend: str, settings: Any, out: Path, *, cache: Optional[EngineCache] = None,
              timing_cache: Optional[Path] = None, force: bool = False,
              progress: Optional[Progress] = None) -> list[BuiltEngine]:
    """One engine per member of an engine set, in one folder published at once."""
    settings = with_default_device(backend, settings)
    check_precision(backend, settings)
    check_backend(backend, settings)
    with atomic_directory(out, overwrite=force) as tmp:
        built = [build_engine(m.artifact, backend, settings, tmp / m.path, cache=cache, timing_cache=timing_cache, progress=progress)
                 for m in engine_set.members]
        write_json_atomic(tmp / ENGINES_FILE, engines_index(
            backend, settings.precision, str(engine_set.path.resolve()),
            [{"budget": m.budget, "path": m.path, "engine_sha256": b.manifest["engine"]["sha256"]}
             for m, b in zip(engine_set.members, built)]))
    return load_engines(out)


def set_runners(engines: list[BuiltEngine], members: list[Any], threads: Optional[int] = 2,
                spinning: bool = False) -> list[Any]:
    """Runners (not yet active) of a set build's ``engines``, in ``members`` order; each engine must
    have been built from that member's ONNX."""
    built = {e.manifest["source"]["onnx_sha256"]: e for e in engines}
    runners = []
    for member in members:
        engine = built.get(member.onnx_sha256)
        if engine is None:
            raise EdgepruneError(f"{engines[0].path.parent}: no engine built from member {member.path}'s ONNX; "
                                 "run `edgeprune build` on this set")
        runners.append(engine.runner(threads, spinning=spinning))
    return runners


def built_calibration(engines: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The latency calibration ``edgeprune calibrate SET --engines BUILT`` stored in ``engines.json``."""
    root = Path(engines)
    if not is_engine_build(root):
        raise EdgepruneError(f"{root}: not a set build (no {ENGINES_FILE}); build the engine set with `edgeprune build SET`")
    return read_folder_json(root, ENGINES_FILE, "engine build").get("calibration")


def store_calibration(engines: str | os.PathLike, calibration: dict[str, Any]) -> None:
    root = Path(engines)
    index = read_folder_json(root, ENGINES_FILE, "engine build")
    index["calibration"] = calibration
    write_json_atomic(root / ENGINES_FILE, index)


def default_out(source: Path, backend: str, precision: str) -> Path:
    return source.parent / f"{source.name}.{backend}-{precision}"


__all__ = ["BACKENDS", "BuiltEngine", "ENGINES_FILE", "ENGINE_KIND", "build_engine", "build_set", "built_calibration",
           "check_backend", "default_out", "engines_index", "is_engine_build", "load_engine", "load_engines", "random_feed",
           "set_runners", "store_calibration"]
