"""``edgeprune load-test``: simulated cameras on real clips against `edgeprune serve` (see edgeprune.serving.loadgen)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from edgeprune.core.console import out

VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "video"  # next to a checkout
CLIPS = ("highway_lane_960x540.mp4", "highway_cars_1280x720.mp4", "indoor_gym_426x240.mp4",
         "indoor_lab_1920x1080.mp4", "outdoor_pool_340x256.mp4")


def load_frames(cameras: int, count: int, size: tuple[int, int], videos: Path = VIDEOS) -> list[list[Any]]:
    """``count`` frames per camera from the real clips (camera i plays clip i mod 5, from a different start)."""
    from edgeprune.core.errors import EdgepruneError
    from edgeprune.imaging.images import resize_rgb
    from edgeprune.video import open_video

    width, height = size
    clips: dict[str, list[Any]] = {}
    frames = []
    for cam in range(cameras):
        name = CLIPS[cam % len(CLIPS)]
        if name not in clips:
            if not (videos / name).is_file():
                raise EdgepruneError(f"{videos / name} is missing (the load test streams the real clips)")
            with open_video(videos / name) as video:
                clips[name] = [resize_rgb(f, height, width) for _, f in zip(range(count + 40), video)]
        clip = clips[name]
        start = (cam // len(CLIPS)) * 17 % len(clip)
        frames.append([clip[(start + i) % len(clip)] for i in range(count)])
    return frames


def _floats(text: str, what: str) -> list[float]:
    from edgeprune.core.errors import EdgepruneError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EdgepruneError(f"{what} expects comma-separated numbers, got '{text}'") from None
    if any(v <= 0 for v in values):
        raise EdgepruneError(f"{what} expects rates > 0, got '{text}'")
    return values


def load_test(
    engine_set: Optional[Path] = typer.Option(None, "--set", help="Engine set to serve (default: the demo's reference set, made on first use)."),
    url: Optional[str] = typer.Option(None, "--url", help="Drive a running server instead: HOST:HTTP_PORT,HOST:GRPC_PORT."),
    cameras: int = typer.Option(8, "--cameras", min=1, help="Simulated cameras (one thread and client each)."),
    seconds: float = typer.Option(60.0, "--seconds", min=0.1, help="Length of each run."),
    fps: float = typer.Option(10.0, "--fps", min=0.01, help="Frames per second per camera."),
    fps_steps: str = typer.Option("", "--fps-steps", help="Comma-separated per-camera rates for the load-step run (first variant, gRPC)."),
    deadline_ms: float = typer.Option(60.0, "--deadline-ms", min=0.1, help="Deadline each frame is sent with."),
    frame_size: str = typer.Option("320x180", "--frame-size", help="WIDTHxHEIGHT the cameras stream."),
    variants: str = typer.Option("batch:8x2,single:1x1", "--variants", help="Servers to start, NAME:MAX_BATCHxINSTANCES, comma-separated."),
    protocols: str = typer.Option("http,grpc", "--protocols", help="Comma-separated: http, grpc."),
    queue_delay_us: int = typer.Option(2000, "--queue-delay-us", min=0, help="How long Triton's dynamic batcher may hold a request."),
    fault_at: Optional[float] = typer.Option(None, "--fault-at", min=0.0, help="Kill the server (SIGKILL) this many seconds into each run."),
    restart_after: float = typer.Option(3.0, "--restart-after", min=0.0, help="Restart the killed server this many seconds later, same ports."),
    retry_for: float = typer.Option(20.0, "--retry-for", min=0.0, help="Seconds a camera retries one frame before failing it."),
    check: int = typer.Option(0, "--check", min=0, help="Compare every Nth answered frame with the local Runtime (0: none)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report here."),
) -> None:
    """Simulated cameras against `edgeprune serve`: throughput, latency, budgets, deadline hits, failures.

    Each camera is a thread with its own client sending the frames of a real clip (../shared/data/video, resized to --frame-size) at --fps with a deadline, for --seconds; a frame whose time slot passed while waiting is skipped, as a live camera drops it.

    Every frame sent ends answered or failed (with the reason); "lost" must be 0. A server is started for each --variants entry (or give --url of a running one) and every protocol runs against it. See docs/serving.md.
    """
    from edgeprune.core.errors import EdgepruneError
    from edgeprune.serving.loadgen import LoadOptions, parse_variants, run_load_test, write_report

    try:
        width, height = (int(v) for v in frame_size.lower().split("x"))
    except ValueError:
        raise EdgepruneError(f"--frame-size expects WIDTHxHEIGHT (e.g. 320x180), got '{frame_size}'") from None
    if width < 1 or height < 1:
        raise EdgepruneError(f"--frame-size expects WIDTHxHEIGHT >= 1, got '{frame_size}'")
    chosen = [x for x in protocols.split(",") if x]
    if not chosen or any(p not in ("http", "grpc") for p in chosen):
        raise EdgepruneError(f"--protocols expects http and/or grpc, got '{protocols}'")
    given = None
    if url:
        given = tuple(u.strip() for u in url.split(","))
        if len(given) != 2 or not all(given):
            raise EdgepruneError(f"--url expects HOST:HTTP_PORT,HOST:GRPC_PORT, got '{url}'")
    if engine_set is not None and not engine_set.exists():
        raise EdgepruneError(f"--set {engine_set} does not exist")
    opts = LoadOptions(seconds=seconds, fps=fps, fps_steps=_floats(fps_steps, "--fps-steps"), deadline_ms=deadline_ms,
                       variants=parse_variants(variants), protocols=chosen, queue_delay_us=queue_delay_us,
                       fault_at=fault_at, restart_after=restart_after, retry_for=retry_for, check=check, url=given)

    frames_needed = int(max([fps, *opts.fps_steps]) * seconds) + 1
    frames = load_frames(cameras, min(frames_needed, 600), (width, height))
    report: dict[str, Any] = {"command": " ".join(sys.argv),
                              "cameras": cameras, "seconds": seconds, "fps": fps, "deadline_ms": deadline_ms,
                              "frame_size": [width, height], "runs": []}
    if engine_set is None and not url:
        from edgeprune.cli.common import default_model
        from edgeprune.core.progress import messages
        from edgeprune.video.default_demo import prepare

        engine_set = prepare(default_model(real=False), temporal=False, progress=messages(say)).engine_set
    report["set"] = str(engine_set)
    run_load_test(opts, frames, engine_set, report=report, say=say)
    if json_out is not None:
        write_report(json_out, report, say=say)


def say(message: str) -> None:
    out.print(message, highlight=False, soft_wrap=True, markup=False)

