"""``edgeprune demo``: a segmentation-overlay video with a latency HUD, from an engine set (budget per frame) or one model."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import typer

from edgeprune.cli.common import ProviderOpt, console, out
from edgeprune.errors import EdgepruneError

DEFAULT_MODEL = Path("models") / "scene_seg"


@dataclass
class Source:
    """Frames to segment: a decoded video or a generated clip; ``count`` is None when unknown."""

    name: str
    fps: float
    size: tuple[int, int]  # (width, height)
    frames: Iterable[np.ndarray]
    count: Optional[int]


@dataclass
class Step:
    engine: str
    budget: float
    logits: np.ndarray  # [K, h, w] at the model's input size
    engine_ms: float
    total_ms: float


class _Engine:
    """One frame -> logits plus timing, hiding whether a Runtime (engine set) or one model runs it."""

    def __init__(self, model: Path, target_ms: float, policy: str, threads: int, provider: str,
                 engines: Optional[Path] = None) -> None:
        from edgeprune.engine_set import is_engine_set
        from edgeprune.images import palette_array
        from edgeprune.runtime.temporal import is_temporal

        self._runtime: Any = None
        self._temporal: Any = None
        self._net: Any = None
        self._source = 0
        if is_temporal(model):
            from edgeprune.runtime.temporal import TemporalRuntime

            with console.status("loading temporal artifact"):
                self._temporal = TemporalRuntime(model, threads=threads, provider=provider)
            info = self._temporal.artifact.model
            k = int(info.get("num_classes") or len(info.get("classes") or []) or 1)
            self.kind, self.palette = "temporal reuse", palette_array(info.get("palette"), k)
            self.budgets = [1.0, round(self._temporal.recompute_share, 4)]
        elif is_engine_set(model):
            from edgeprune.runtime.runtime import Runtime

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                with console.status("loading engine set"):
                    self._runtime = Runtime(model, target_ms, policy, threads=threads, provider=provider, engines=engines)
            for w in caught:
                console.print(f"warning: {w.message}", highlight=False, soft_wrap=True)
            info = self._runtime.set.manifest.get("model") or {}
            k = int(info.get("num_classes") or len(info.get("classes") or []) or 1)
            self.kind, self.palette = f"engine set, policy {policy}", palette_array(info.get("palette"), k)
            self.budgets = self._runtime.budgets
        else:
            from edgeprune.cli.segment_cmd import _load

            self._net = _load(model, threads, provider)
            self.kind, self.palette = self._net.kind, self._net.palette
            self.budgets = [_budget_of(model)]
            self._name = model.name
            self._net.run(np.zeros((self._net.batch or 1, 3, *self._net.size), np.float32))  # warm-up, untimed

    def new_source(self) -> None:
        """A new video starts: temporal caches of the last one must not leak into it."""
        self._source += 1

    def step(self, frame: np.ndarray) -> Step:
        if self._temporal is not None:
            t = self._temporal.infer(frame, stream=self._source)
            name = f"refresh ({t.reason})" if t.refreshed else f"update {t.recomputed:.0%} of patches"
            return Step(name, t.recomputed, t.logits[0], t.engine_ms, t.total_ms)
        if self._runtime is not None:
            r = self._runtime.infer(frame)
            return Step(r.engine, r.budget, r.outputs["logits"][0], r.engine_ms, r.total_ms)
        from edgeprune.cli.segment_cmd import _prepare

        t0 = time.perf_counter()
        pixels = _prepare([frame], self._net)
        t1 = time.perf_counter()
        logits = self._net.run(pixels)[0]
        t2 = time.perf_counter()
        return Step(self._name, self.budgets[0], logits, (t2 - t1) * 1e3, (t2 - t0) * 1e3)

    def close(self) -> None:
        if self._temporal is not None:
            self._temporal.close()
        if self._runtime is not None:
            self._runtime.close()
        if self._net is not None:
            self._net.close()


def _budget_of(model: Path) -> float:
    """An artifact's MACs ratio; an eager segmenter folder is the unreduced model (1.0)."""
    try:
        return float(json.loads((model / "manifest.json").read_text())["flops"]["macs_ratio"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1.0


def vmrss_mb() -> Optional[float]:
    """Resident memory of this process in MB from /proc/self/status (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def generated_source(seed: int = 0, frames: int = 300, size: int = 256) -> Source:
    """A synthetic scene clip (rendered at 128x128, upscaled to ``size``), so the demo needs no video file."""
    from edgeprune.data.scenes import SceneConfig, make_clip
    from edgeprune.images import resize_rgb

    def gen() -> Iterator[np.ndarray]:
        clip, _ = make_clip(seed, frames, SceneConfig(height=128, width=128))
        for f in clip:
            yield resize_rgb(f, size, size)

    return Source(f"generated clip (seed {seed})", 30.0, (size, size), gen(), frames)


def video_source(path: Path) -> Source:
    from edgeprune.video import open_video

    reader = open_video(path)
    return Source(str(path), reader.fps, reader.size, reader, reader.frame_count or None)


def output_paths(out_path: Path) -> tuple[Path, Path, Path]:
    return out_path, out_path.with_name(f"{out_path.stem}.metrics.json"), out_path.with_name(f"{out_path.stem}.plot.png")


def _check_outputs(out_path: Path, inputs: list[Path], force: bool) -> None:
    if out_path.suffix.lower() != ".mp4":
        raise EdgepruneError(f"--out {out_path}: the output must be an .mp4 file")
    if out_path.parent.exists() and not out_path.parent.is_dir():
        raise EdgepruneError(f"cannot write --out {out_path}: {out_path.parent} is not a directory")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)  # like export's --out: a new folder is fine
    except OSError as exc:
        raise EdgepruneError(f"cannot write --out {out_path}: {exc.strerror or exc}") from None
    resolved = {p.resolve() for p in inputs}
    for p in output_paths(out_path):
        if p.resolve() in resolved:
            raise EdgepruneError(f"--out {out_path} would overwrite the input {p}")
        if p.is_dir():
            raise EdgepruneError(f"cannot write {p}: it is a directory")
        if p.exists() and not force:
            raise EdgepruneError(f"{p} exists; pass --force to overwrite it")


def _plot(rows: list[dict[str, Any]], target_ms: float, path: Path, title: str) -> None:
    from edgeprune.plotting import plot_timeline

    plot_timeline(path, [r["index"] for r in rows], {"budget": [r["budget"] for r in rows]},
                  {"total": [r["total_ms"] for r in rows], "engine": [r["engine_ms"] for r in rows]}, target_ms,
                  title=title, budget_label="patches recomputed" if "temporal" in title else "budget (MACs ratio)")


def run_demo(sources: list[Source], model: Path, out_path: Path, *, target_fps: float = 30.0, policy: str = "deadline",
             max_frames: Optional[int] = None, threads: int = 2, provider: str = "cpu", alpha: float = 0.5,
             force: bool = False, progress: bool = True,
             on_frame: Optional[Callable[[int, dict[str, Any]], None]] = None,
             engines: Optional[Path] = None) -> dict[str, Any]:
    """Segment every frame of ``sources`` into one overlay mp4 + metrics JSON + plot; returns the summary.

    All three outputs appear only when the whole run succeeds (the CLI and scripts/soak_demo.py share this).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeprune.images import overlay, resize_rgb, upsample_argmax
    from edgeprune.runtime.policies import POLICIES
    from edgeprune.video import VideoWriter, draw_hud

    if not target_fps > 0:
        raise EdgepruneError(f"--target-fps must be > 0, got {target_fps}")
    if policy not in POLICIES:
        raise EdgepruneError(f"--policy: unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    _check_outputs(out_path, [Path(s.name) for s in sources], force)
    video_path = output_paths(out_path)[0]
    target_ms = 1000.0 / target_fps
    from edgeprune.engine_set import is_engine_set

    if engines is not None and not is_engine_set(model):
        raise EdgepruneError("--engines runs the built engines of an engine set; --model must be that set")
    engine = _Engine(model, target_ms, policy, threads, provider, engines)
    w, h = sources[0].size
    total = sum(s.count or 0 for s in sources) if all(s.count for s in sources) else None
    if max_frames:
        total = min(total, max_frames) if total else max_frames
    temporal = engine.kind == "temporal reuse"
    rows: list[dict[str, Any]] = []
    hits = 0
    rss_start = vmrss_mb()
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with all_or_nothing(out_path) as created, VideoWriter(video_path, sources[0].fps, (w, h)) as writer, \
                Progress(*columns, console=console, transient=True, disable=not progress) as bar:
            task = bar.add_task("demo", total=total)
            for source in sources:
                engine.new_source()
                bar.update(task, description=Path(source.name).name)
                for frame in source.frames:
                    if max_frames and len(rows) >= max_frames:
                        break
                    if frame.shape[:2] != (h, w):
                        frame = resize_rgb(frame, h, w)
                    st = engine.step(frame)
                    met = st.total_ms <= target_ms
                    hits += met
                    i = len(rows)
                    image = overlay(frame, upsample_argmax(np.asarray(st.logits, np.float32), h, w), engine.palette, alpha)
                    draw_hud(image, [
                        (f"frame {i}", (255, 255, 255)),
                        (f"{st.engine}" if temporal else f"{st.engine}  budget {st.budget:.2f}", (255, 255, 255)),
                        (f"{st.total_ms:.1f} ms / target {target_ms:.1f} ms", (120, 255, 120) if met else (255, 90, 90)),
                        (f"hits {hits / (i + 1):.1%}", (255, 255, 255)),
                    ])
                    writer.write(image)
                    row = {"index": i, "engine": st.engine, "budget": round(st.budget, 4), "engine_ms": round(st.engine_ms, 3),
                           "total_ms": round(st.total_ms, 3), "deadline_met": bool(met)}
                    rows.append(row)
                    if on_frame is not None:
                        on_frame(i, row)
                    bar.advance(task)
            if not rows:
                raise EdgepruneError("no frames to process")
            wall = time.perf_counter() - started
            lat = np.asarray([r["total_ms"] for r in rows])
            summary = {
                "frames": len(rows), "wall_s": round(wall, 3), "fps_achieved": round(len(rows) / wall, 2),
                "target_fps": target_fps, "target_ms": round(target_ms, 3), "hit_rate": round(hits / len(rows), 4),
                "mean_budget": round(float(np.mean([r["budget"] for r in rows])), 4),
                "p50_ms": round(float(np.percentile(lat, 50)), 3), "p95_ms": round(float(np.percentile(lat, 95)), 3),
                "engines": dict(Counter(r["engine"].split(" (")[0] for r in rows)),
                "rss_start_mb": rss_start, "rss_end_mb": vmrss_mb(),
            }
            data = {"model": str(model), "kind": engine.kind, "policy": policy if "set" in engine.kind else None,
                    "budgets": engine.budgets, "sources": [s.name for s in sources], "size": [w, h],
                    "video": str(video_path), "summary": summary, "frames": rows}
            title = f"{model.name} ({engine.kind}), target {target_fps:g} fps"
            write_side_outputs(created, out_path, json.dumps(data, indent=1) + "\n",
                               lambda path: _plot(rows, target_ms, path, title))
    finally:
        engine.close()
    return summary


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def all_or_nothing(out_path: Path) -> Iterator[list[Path]]:
    """Collects the side outputs written inside; any failure removes them (the video writer
    discards its own file), so a failed run leaves nothing beside ``out_path``."""
    created: list[Path] = []
    try:
        yield created
    except OSError as exc:
        _remove(created)
        raise EdgepruneError(f"cannot write outputs beside {out_path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(created)
        raise


def write_side_outputs(created: list[Path], out_path: Path, text: str, plot: Callable[[Path], None]) -> None:
    """The metrics JSON (atomically) and the plot beside ``out_path``, recorded in ``created``."""
    from edgeprune.images import write_atomic

    _, metrics_path, plot_path = output_paths(out_path)
    created.append(metrics_path)
    write_atomic(metrics_path, lambda tmp: Path(tmp).write_text(text))
    created.append(plot_path)
    plot(plot_path)


def _default_model() -> Path:
    """models/scene_seg from the working directory, else from the source checkout this package runs from."""
    if DEFAULT_MODEL.is_dir():
        return DEFAULT_MODEL
    return Path(__file__).resolve().parents[2] / DEFAULT_MODEL


def demo(
    videos: Optional[list[Path]] = typer.Argument(None, help="Videos to segment, one after another into one output; none: a generated clip."),
    model: Optional[Path] = typer.Option(None, "--model", help="Engine set (set.json; a budget per frame), temporal artifact (export --temporal; reuse across frames), artifact or segmenter folder [default: models/scene_seg]."),
    out_path: Path = typer.Option(Path("demo.mp4"), "--out", "-o", help="Output .mp4; <stem>.metrics.json and <stem>.plot.png go beside it."),
    target_fps: float = typer.Option(30.0, "--target-fps", help="Frame rate to keep up with; the deadline is 1000/fps ms."),
    policy: str = typer.Option("deadline", "--policy", help="Engine sets: deadline, fixed, content or combined."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after N frames."),
    clip_frames: int = typer.Option(300, "--clip-frames", min=1, help="Length of the generated clip (no VIDEO)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated clip."),
    threads: int = typer.Option(2, "--threads", min=1, help="Intra-op threads (PyTorch or ONNX Runtime)."),
    provider: str = ProviderOpt,
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Weight of the class colour in the overlay."),
    cameras: bool = typer.Option(False, "--cameras", help="Play the VIDEOs side by side as simultaneous cameras sharing one token pool per tick (needs an engine set)."),
    pool: Optional[float] = typer.Option(None, "--pool", help="--cameras: sum of per-frame budgets per tick [default: 0.5 per camera]."),
    minimum: float = typer.Option(0.0, "--minimum", min=0.0, max=1.0, help="--cameras: budget every camera gets at least."),
    signal: str = typer.Option("complexity", "--signal", help="--cameras: what earns a camera more of the pool: complexity, change, both or equal."),
    engines: Optional[Path] = typer.Option(None, "--engines", help="Engine sets: run the engines `edgeprune build SET` wrote (e.g. fp16, TensorRT) instead of the set's ONNX graphs."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
) -> None:
    """Segment a video (or a generated clip) into an overlay mp4 with a latency HUD, plus metrics JSON and a plot."""
    model = model if model is not None else _default_model()
    if not model.is_dir():
        raise EdgepruneError(f"--model {model}: no such directory")
    if cameras:
        _run_cameras(videos or [], model, out_path, pool, minimum, signal, target_fps, max_frames, threads, provider, alpha, force)
        return
    sources = [video_source(v) for v in videos] if videos else [generated_source(seed, min(clip_frames, max_frames or clip_frames))]
    try:
        s = run_demo(sources, model, out_path, target_fps=target_fps, policy=policy, max_frames=max_frames,
                     threads=threads, provider=provider, alpha=alpha, force=force, engines=engines)
    finally:
        for src in sources:
            getattr(src.frames, "close", lambda: None)()
    engines = ", ".join(f"{k} x{v}" for k, v in sorted(s["engines"].items()))
    out.print(f"{s['frames']} frames in {s['wall_s']:.1f} s ({s['fps_achieved']:.1f} fps achieved, target {target_fps:g}): "
              f"hits {s['hit_rate']:.1%}, mean budget {s['mean_budget']:.2f}, latency p50 {s['p50_ms']:.1f} ms "
              f"p95 {s['p95_ms']:.1f} ms, RSS {s['rss_start_mb']} -> {s['rss_end_mb']} MB; engines: {engines}",
              highlight=False, soft_wrap=True)
    for p in output_paths(out_path):
        out.print(f"wrote {p}", highlight=False)


def _run_cameras(videos: list[Path], model: Path, out_path: Path, pool: Optional[float], minimum: float, signal: str,
                 target_fps: float, max_frames: Optional[int], threads: int, provider: str, alpha: float, force: bool) -> None:
    from edgeprune.cli.cameras import run_cameras

    from edgeprune.runtime.runtime import POOL_SIGNALS

    if signal not in POOL_SIGNALS:
        raise EdgepruneError(f"--signal must be one of {', '.join(POOL_SIGNALS)}, got {signal!r}")
    sources = [video_source(v) for v in videos]
    try:
        s = run_cameras(sources, model, out_path, pool=pool, minimum=minimum, signal=signal, target_fps=target_fps,
                        max_frames=max_frames, threads=threads, provider=provider, alpha=alpha, force=force)
    finally:
        for src in sources:
            getattr(src.frames, "close", lambda: None)()
    budgets = ", ".join(f"{k} {v:.2f}" for k, v in s["mean_budget"].items())
    out.print(f"{s['ticks']} ticks x {s['cameras']} cameras in {s['wall_s']:.1f} s: pool {s['pool']:g} per tick "
              f"(signal {s['signal']}), tick p50 {s['tick_p50_ms']:.1f} ms, hits {s['hit_rate']:.1%} "
              f"(target {s['target_ms']:.1f} ms); mean budget: {budgets}", highlight=False, soft_wrap=True)
    for p in output_paths(out_path):
        out.print(f"wrote {p}", highlight=False)
