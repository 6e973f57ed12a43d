"""``edgeprune build``: engines for a backend from an artifact or an engine set (one per budget)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from edgeprune.core.console import console, out
from edgeprune.core.progress import rich_status


def sources_of(path: Path) -> tuple[Any, list[tuple[str, Any]]]:
    """(engine set or None, [(member name, artifact)]) of an artifact folder or an engine set;
    a single artifact is the one member named ``engine``."""
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.artifacts.engine_set import is_engine_set, load_engine_set

    if is_engine_set(path):
        engine_set = load_engine_set(path, verify=True)
        return engine_set, [(m.path, m.artifact) for m in engine_set.members]
    return None, [("engine", load_artifact(path, verify=True))]


def build(
    source: Path = typer.Argument(..., help="Artifact folder (edgeprune export) or engine set (export --budgets)."),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="trt (TensorRT engine), ort-trt (ONNX Runtime's TensorRT EP), ort-cuda, ort-cpu (the default; --emit-script and --import: trt) or openvino (an OpenVINO compiled model; needs the openvino extra)."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="fp32, fp16 (graph converted, token decisions kept fp32), bf16 (trt with --weakly-typed, or openvino; OpenVINO's precision hint lowers the fp32 graph) or int8 (openvino or ort-cpu, from an artifact `edgeprune quantize` wrote)."),
    device: Optional[str] = typer.Option(None, "--device", help="--backend openvino: the OpenVINO device, one OpenVINO reports here (CPU, GPU, NPU, ...; default CPU)."),
    workspace: Optional[int] = typer.Option(None, "--workspace", help="TensorRT builder workspace in MiB (default: TensorRT's)."),
    opt_level: int = typer.Option(3, "--opt-level", help="TensorRT builder optimization level, 0-5 (higher builds longer, may run faster)."),
    hardware_compat: str = typer.Option("none", "--hardware-compat", help="TensorRT hardware compatibility: none, ampere+ (runs on any Ampere or newer GPU) or same-cc."),
    version_compatible: bool = typer.Option(False, "--version-compatible", help="TensorRT version-compatible engine (runs on later TensorRT versions)."),
    weakly_typed: bool = typer.Option(False, "--weakly-typed", help="TensorRT 10 only: build the fp32 graph with FP16/BF16 builder flags instead of a strongly typed network from an fp16 graph."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache file, loaded and saved (ort-trt: a folder)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Engine folder to write (default: SOURCE.BACKEND-PRECISION beside SOURCE; with --emit-script SOURCE.trt-PRECISION.ondevice)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Engine cache folder (default: $EDGEPRUNE_CACHE_DIR/engines or ~/.cache/edgeprune/engines)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Always build; neither read nor fill the engine cache."),
    emit_script: bool = typer.Option(False, "--emit-script", help="Do not build: write a folder with the graphs and a trtexec script that builds the engines on the target (Jetson)."),
    target_trt: str = typer.Option("10", "--target-trt", help="With --emit-script: the target's TensorRT major version (10 or 11; flags differ)."),
    import_path: Optional[Path] = typer.Option(None, "--import", help="Register engines built elsewhere (an engine file, or the engines/ folder the script wrote) after checking them."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Build one engine per artifact or per budget of an engine set, with a manifest (versions, device, sha256s).

    Engines are cached by (ONNX sha256, backend, precision, settings, TensorRT or OpenVINO version, GPU or OpenVINO device):
    a second build of the same thing copies the cached engine; a changed ONNX, another GPU or another OpenVINO builds anew.
    An --out folder holding engines of the same sources that cannot run here (another OpenVINO or TensorRT) is rebuilt in place.
    """
    from edgeprune.core.files import check_target
    from edgeprune.engines.build import (build_engine, build_set, check_backend, check_precision, default_out, may_replace,
                                         member_settings, stale_build)
    from edgeprune.engines.cache import EngineCache
    from edgeprune.backends.trt import BuilderSettings
    from edgeprune.core.errors import EdgepruneError

    started = time.perf_counter()
    if emit_script and import_path is not None:
        raise EdgepruneError("--emit-script and --import are two ends of one workflow; use one at a time")
    if (emit_script or import_path is not None) and backend not in (None, "trt"):
        raise EdgepruneError("--emit-script and --import are for TensorRT engines (--backend trt)")
    backend = backend or ("trt" if emit_script or import_path is not None else "ort-cpu")
    settings = BuilderSettings(precision=precision, workspace_mb=workspace, optimization_level=opt_level,
                               hardware_compatibility=hardware_compat, version_compatible=version_compatible,
                               strongly_typed=not weakly_typed, device=device)
    check_precision(backend, settings)  # the precision fits the backend (int8: openvino, ort-cpu), the settings are valid
    if backend == "openvino" or device is not None:
        check_backend(backend, settings)  # the device OpenVINO reports; or one line: --device is for openvino
    suffix = ".ondevice" if emit_script else ""
    target = out_dir or Path(str(default_out(source, backend, precision)) + suffix)
    engine_set, members = sources_of(source)
    member_settings(members, settings)  # int8 needs a quantized artifact, a quantized one needs int8
    building = not emit_script and import_path is None
    stale = building and not force and may_replace(target, backend, [a for _, a in members], False)
    check_target(target, force or stale)
    if stale:
        console.print(f"{target} holds engines that cannot run here ({stale_build(target)}): rebuilding them in place",
                      highlight=False, soft_wrap=True)

    if emit_script:
        from edgeprune.engines.ondevice import emit_script as write_script

        with console.status("writing the on-device build folder") as status:
            script = write_script(members, settings, target, trt_version=target_trt, force=force,
                                  progress=rich_status(status))
        out.print(f"wrote {script} ({len(members)} engine(s), TensorRT {target_trt} flags); copy {target} to the device, "
                  f"run ./{script.name} there, copy engines/ back and run: edgeprune build {source} --import "
                  f"{target / 'engines'}", highlight=False, soft_wrap=True)
        return
    if import_path is not None:
        from edgeprune.engines.ondevice import import_engines

        with console.status("checking engines") as status:
            engines = import_engines(members, import_path, target, force=force, progress=rich_status(status))
        print_engines(engines, f"imported {len(engines)} engine(s) into {target} in {time.perf_counter() - started:.1f} s")
        return
    engine_cache = None if no_cache else EngineCache(cache)
    with console.status(f"building for {backend}") as status:
        progress = rich_status(status)
        if engine_set is not None:
            engines = build_set(engine_set, backend, settings, target, cache=engine_cache, timing_cache=timing_cache,
                                force=force, progress=progress)
        else:
            engines = [build_engine(members[0][1], backend, settings, target, cache=engine_cache,
                                    timing_cache=timing_cache, force=force, progress=progress)]
    print_engines(engines, f"built {len(engines)} engine(s) into {target} in {time.perf_counter() - started:.1f} s")


def print_engines(engines: list[Any], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("engine", "backend", "precision", "source", "size", "sha256", "how", "device"):
        table.add_column(col, overflow="fold")
    for e in engines:
        m = e.manifest
        device = m.get("device") or {}
        where = device.get("gpu") or device.get("cpu") or "?"
        if device.get("compute_capability"):
            where += f" (sm {device['compute_capability']})"
        table.add_row(e.name, m["backend"], m["precision"], m["source"]["name"], f"{m['engine']['bytes'] / 2**20:.1f} MiB",
                      m["engine"]["sha256"][:12], str((m.get("built") or {}).get("how")), where)
    out.print(table)
