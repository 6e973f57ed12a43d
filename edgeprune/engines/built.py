"""Engine folders as ``edgeprune build`` writes them: their format, loading, staleness and runners.

An engine folder holds the engine file and ``engine.json`` (backend, precision, builder settings,
library versions, the device, the sha256 of the source ONNX, of the graph built and of the engine);
a set build adds ``engines.json`` beside one engine folder per member. A stale engine (another
TensorRT, another GPU, another OpenVINO build or device) is never run: opening it is one line
naming the ``edgeprune build`` command that rebuilds it, and that command replaces it in place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgeprune.artifacts.schema import check_manifest
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_folder_json, read_json, sha256_file, write_json_atomic
from edgeprune.engines.cache import ENGINE_MANIFEST

BACKENDS = ("trt", "ort-trt", "ort-cuda", "ort-cpu", "openvino")
ENGINE_KIND = "edgeprune-engine"
ENGINES_KIND = "edgeprune-engine-build"  # one engine per member of an engine set
ENGINES_FILE = "engines.json"
ENGINE_FORMAT = 1
ORT_PROVIDER = {"ort-trt": "tensorrt", "ort-cuda": "cuda", "ort-cpu": "cpu"}
TRT_CACHE_DIR = "trt_cache"
INT8 = "int8"


def engine_file_name(backend: str) -> str:
    return {"trt": "model.engine", "openvino": "model.blob"}.get(backend, "model.onnx")


def openvino_hint(precision: str) -> str:
    """The OpenVINO precision hint an engine is compiled (and imported) with: an int8 engine is a QDQ
    graph whose quantized ops run int8 whatever the hint, and f32 keeps the rest (the token
    decisions among it) in fp32, where bf16 would be OpenVINO's default on AMX CPUs."""
    return "fp32" if precision == INT8 else precision


def ort_options(backend: str, settings: Any, folder: Path, timing_cache: Optional[Path] = None) -> dict[str, dict[str, str]]:
    from edgeprune.backends.ort import accelerator_options

    provider = ORT_PROVIDER[backend]
    if provider == "cpu":
        return {}
    return {provider: accelerator_options(
        provider, cache_dir=folder / TRT_CACHE_DIR, precision=settings.precision, workspace_mb=settings.workspace_mb,
        optimization_level=settings.optimization_level, timing_cache_dir=timing_cache or folder / TRT_CACHE_DIR,
        hardware_compatible=settings.hardware_compatibility == "ampere+")}


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

    def rebuild_command(self) -> str:
        """The ``edgeprune build`` command that replaces this engine (its whole set build, for a member)."""
        folder, source = self.path, self.manifest["source"].get("artifact")
        index = self.path.parent / ENGINES_FILE
        if index.is_file():
            try:
                folder, source = self.path.parent, read_json(index).get("source") or source
            except (OSError, ValueError):
                pass
        settings = self.manifest["settings"]
        device = f" --device {settings['device']}" if self.backend == "openvino" and settings.get("device") else ""
        return (f"edgeprune build {source} --backend {self.backend} --precision {self.manifest['precision']}{device} "
                f"--out {folder}")

    def runner(self, threads: Optional[int] = 2, spinning: bool = True) -> Any:
        """A runner for this engine (activate it, or use it as a context manager)."""
        why = self.stale_reason()
        if why:
            raise EdgepruneError(f"{self.path}: stale engine ({why}); rebuild it: {self.rebuild_command()}")
        if self.backend == "trt":
            from edgeprune.backends.trt import EngineFromPath, TrtRunner

            return TrtRunner(EngineFromPath(self.engine_path, allow_host_code=bool(self.manifest["settings"].get("version_compatible"))))
        if self.backend == "openvino":
            from edgeprune.backends.openvino import OpenVinoRunner

            # OpenVINO has no switch like ONNX Runtime's thread spinning: ``spinning`` does not apply
            return OpenVinoRunner(self.engine_path, self.manifest["settings"].get("device") or "CPU",
                                  openvino_hint(self.manifest["settings"]["precision"]), threads)
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
    """The ``engines.json`` of a set build; ``members``: {"budget", "path", "engine_sha256"} each, and
    "precision" where a set mixes int8 and fp32 members."""
    return {"kind": ENGINES_KIND, "format": ENGINE_FORMAT, "backend": backend, "precision": precision,
            "source": source, "members": members}


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


def stale_build(target: str | os.PathLike) -> Optional[str]:
    """Why the engine folder or set build at ``target`` cannot run here (the first stale engine's
    reason), or None: when it is fresh, is not an engine build, or cannot be read as one."""
    try:
        engines = load_engines(target, verify=False)
    except EdgepruneError:
        return None
    return next((why for why in (e.stale_reason() for e in engines) if why), None)


__all__ = ["BACKENDS", "BuiltEngine", "ENGINES_FILE", "ENGINES_KIND", "ENGINE_FORMAT", "ENGINE_KIND", "ORT_PROVIDER",
           "TRT_CACHE_DIR", "built_calibration", "engine_file_name", "engines_index", "is_engine_build", "load_engine",
           "load_engines", "openvino_hint", "ort_options", "set_runners", "stale_build", "store_calibration"]
