"""``edgeprune demo``: a segmentation-overlay video with a HUD of each frame's budget and the end-to-end frame
rate, from an engine set (budget per frame), a temporal artifact, one model, a camera, or — with no
arguments — the reference model's cached engine set and temporal artifact on a generated clip.

Which model by default: real footage (VIDEO, --camera, --cameras) gets the CamVid driving-scene model
(models/camvid_seg) as a cached, calibrated engine set, so budgets follow the deadline; the
generated clip gets the scenes model it was made for (models/scene_seg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from edgeprune.cli.common import DeviceOpt, PrecisionOpt, ProviderOpt, check_engine_options, default_model
from edgeprune.core.console import console, out
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import messages
from edgeprune.video.demo import run_demo, summary_line
from edgeprune.video.sources import Source, camera_source, generated_source, video_source

def _real_engine_set(threads: int, engine: dict[str, Any]) -> Path:
    """The CamVid model as a cached engine set calibrated for ``engine`` (made on first use, like the default demo's)."""
    from edgeprune.video import default_demo

    with console.status("preparing the CamVid engine set") as status:
        models = default_demo.prepare(default_model(real=True), threads=threads, temporal=False,
                                      progress=messages(lambda m: (status.update(m), console.print(m, highlight=False))),
                                      **engine)
    return models.engine_set


def _print_outputs(summary: dict[str, Any], out_path: Path) -> None:
    from edgeprune.video.outputs import output_paths

    out.print(summary_line(summary), highlight=False, soft_wrap=True)

    for p in output_paths(out_path):
        if p.exists():  # the plot is skipped without matplotlib
            out.print(f"wrote {p}", highlight=False)


def demo(
    videos: Optional[list[Path]] = typer.Argument(None, help="Videos to segment, one after another into one output; none: a generated clip."),
    camera: Optional[str] = typer.Option(None, "--camera", help="A live source instead of files: a camera index (0), a device, or any URL OpenCV opens; frames the pipeline cannot keep up with are dropped (and counted). A video file given here plays in real time."),
    model: Optional[Path] = typer.Option(None, "--model", help="Engine set (set.json; a budget per frame), temporal artifact (export --temporal; reuse across frames), artifact or segmenter folder. Default with no VIDEO: the scenes model's cached engine set, then its temporal artifact, on the generated clip; with VIDEO or a camera: the CamVid driving-scene model (models/camvid_seg) as a cached engine set."),
    out_path: Path = typer.Option(Path("demo.mp4"), "--out", "-o", help="Output .mp4; <stem>.metrics.json and <stem>.plot.png go beside it."),
    target_fps: Optional[str] = typer.Option(None, "--target-fps", help="Frame rate to keep up with (deadline 1000/fps ms); a schedule FPS,FPS@FRAME,... changes it during the run. Default 30; with no arguments, a step half way through."),
    policy: str = typer.Option("deadline", "--policy", help="Engine sets: deadline, fixed, content or combined."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after N frames."),
    clip_frames: int = typer.Option(300, "--clip-frames", min=1, help="Length of the generated clip (no VIDEO)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated clip."),
    threads: int = typer.Option(2, "--threads", min=1, help="Intra-op threads (PyTorch or ONNX Runtime)."),
    provider: str = ProviderOpt,
    precision: Optional[str] = PrecisionOpt,
    device: Optional[str] = DeviceOpt,
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Weight of the class colour in the overlay."),
    out_height: int = typer.Option(720, "--out-height", min=0, help="Scale the output video down to this many rows when the input is taller (0: the input's size); labels are computed at the output size."),
    exact_labels: bool = typer.Option(False, "--exact-labels", help="Labels by the slow reference (bilinear upsampling of every class plane, then argmax) instead of the fast path (identical except at float ties)."),
    native: bool = typer.Option(False, "--native", help="Run engine sets and temporal artifacts through the native C library (edgeprune.native) instead of the Python runtime."),
    cameras: bool = typer.Option(False, "--cameras", help="Play the VIDEOs side by side as simultaneous cameras sharing one token pool per tick (needs an engine set)."),
    pool: Optional[float] = typer.Option(None, "--pool", help="--cameras: sum of per-frame budgets per tick. Default: 0.5 per camera."),
    minimum: float = typer.Option(0.0, "--minimum", min=0.0, max=1.0, help="--cameras: budget every camera gets at least."),
    signal: str = typer.Option("complexity", "--signal", help="--cameras: what earns a camera more of the pool: complexity, change, both or equal."),
    engines: Optional[Path] = typer.Option(None, "--engines", help="Engine sets: run the engines `edgeprune build SET` wrote (e.g. fp16, TensorRT; TensorRT and CUDA: not run on this project's machines yet) instead of the set's ONNX graphs."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
) -> None:
    """Segment a video, camera or generated clip into an overlay mp4 with a HUD (budget per frame, end-to-end fps), plus metrics JSON and a plot."""
    from edgeprune.video.demo import check_policy, parse_targets

    check_policy(policy)  # before the default demo's first-run export, not a minute later
    check_engine_options(provider, precision, device)
    engine = dict(provider=provider, precision=precision, device=device)
    targets = parse_targets(target_fps or "30")
    if camera is not None and (videos or cameras):
        raise EdgepruneError("--camera replaces VIDEO arguments and --cameras; give one source kind")
    if model is not None and not model.is_dir():
        raise EdgepruneError(f"--model {model}: no such directory")
    if cameras:
        if len(targets) > 1:
            raise EdgepruneError("--cameras takes one --target-fps, not a schedule")
        _run_cameras(videos or [], model, out_path, pool, minimum, signal, targets[0][1], max_frames, threads,
                     engine, alpha, force)
        return
    options = dict(policy=policy, max_frames=max_frames, threads=threads, alpha=alpha, force=force, engines=engines,
                   out_height=out_height, exact_labels=exact_labels, native=native, **engine)
    if model is None and not videos and camera is None:
        _run_default(out_path, target_fps, clip_frames, seed, options)
        return
    if camera is not None:
        from edgeprune.video.outputs import check_outputs

        check_outputs(out_path, [], force)  # before the camera opens: a bad --out wastes no capture
        sources = [camera_source(camera)]
    else:
        sources = [video_source(v) for v in videos] if videos else [generated_source(seed, min(clip_frames, max_frames or clip_frames))]
    try:
        if model is None:  # sources and --out first: bad input fails before a first-run export of the default model
            from edgeprune.video.outputs import check_outputs

            check_outputs(out_path, [], force)
            model = _real_engine_set(threads, engine) if (videos or camera is not None) else default_model(real=False)
        s = run_demo(sources, model, out_path, target_fps=target_fps or "30", **options)
    finally:
        for src in sources:
            src.close()
    _print_outputs(s, out_path)


def _run_default(out_path: Path, target_fps: Optional[str], clip_frames: int, seed: int, options: dict[str, Any]) -> None:
    """The product in one command: budgets switching under a deadline step, then temporal reuse, on a generated clip."""
    from edgeprune.video import default_demo
    from edgeprune.video.outputs import check_outputs

    temporal_out = out_path.with_name(f"{out_path.stem}.temporal{out_path.suffix}")
    check_outputs(out_path, [], options["force"])
    check_outputs(temporal_out, [], options["force"])
    engine = {k: options[k] for k in ("provider", "precision", "device")}
    with console.status("preparing the reference engine set") as status:
        models = default_demo.prepare(default_model(real=False), threads=options["threads"],
                                      progress=messages(lambda m: (status.update(m), console.print(m, highlight=False))),
                                      **engine)
    frames = min(clip_frames, options["max_frames"] or clip_frames)
    schedule = target_fps or default_demo.stepped_target(models.engine_set, frames, **engine)
    console.print(f"engine set {models.engine_set}, target {schedule} fps (FPS@FRAME: the deadline tightens there)",
                  highlight=False, soft_wrap=True)
    runs = [(models.engine_set, out_path), (models.temporal, temporal_out)]
    for model, path in runs:
        source = generated_source(seed, frames)
        s = run_demo([source], model, path, target_fps=schedule, **options)
        _print_outputs(s, path)


def _run_cameras(videos: list[Path], model: Optional[Path], out_path: Path, pool: Optional[float], minimum: float, signal: str,
                 target_fps: float, max_frames: Optional[int], threads: int, engine: dict[str, Any], alpha: float,
                 force: bool) -> None:
    from edgeprune.cli.cameras import run_cameras
    from edgeprune.runtime.runtime import POOL_SIGNALS

    if signal not in POOL_SIGNALS:
        raise EdgepruneError(f"--signal must be one of {', '.join(POOL_SIGNALS)}, got {signal!r}")
    sources = [video_source(v) for v in videos]
    try:
        if model is None:  # after the videos open: a bad path fails before a first-run export
            model = _real_engine_set(threads, engine) if videos else default_model(real=False)
        s = run_cameras(sources, model, out_path, pool=pool, minimum=minimum, signal=signal, target_fps=target_fps,
                        max_frames=max_frames, threads=threads, alpha=alpha, force=force, **engine)
    finally:
        for src in sources:
            src.close()
    budgets = ", ".join(f"{k} {v:.2f}" for k, v in s["mean_budget"].items())
    out.print(f"{s['ticks']} ticks x {s['cameras']} cameras in {s['wall_s']:.1f} s: pool {s['pool']:g} per tick "
              f"(signal {s['signal']}), tick p50 {s['tick_p50_ms']:.1f} ms, hits {s['hit_rate']:.1%} "
              f"(target {s['target_ms']:.1f} ms); mean budget: {budgets}", highlight=False, soft_wrap=True)
    from edgeprune.video.outputs import output_paths

    for p in output_paths(out_path):
        if p.exists():  # the plot is skipped without matplotlib
            out.print(f"wrote {p}", highlight=False)
