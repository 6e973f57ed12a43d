"""The video demo: segment a clip through an engine set, temporal artifact or one model, pipelined, into an
overlay video whose HUD shows each frame's budget and the end-to-end frame rate, plus metrics JSON and a plot.

Stages (see :mod:`edgeprune.video.pipeline`): the decoder thread reads and scales frames to the
output size; this thread resizes them to the model (pre), schedules and runs the engine; the output
thread turns logits into labels at the output size (post, :func:`labels_fast` or the exact
reference), blends the overlay, draws the HUD (draw) and encodes. Every stage is timed per frame.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.video.engine import FrameEngine, Step
from edgeprune.video.sources import Source

STAGES = ("decode", "pre", "engine", "scheduler", "post", "draw", "encode")


def parse_targets(text: str) -> list[tuple[int, float]]:
    """``"30"`` or ``"30,60@150"`` (30 fps, then 60 fps from frame 150) -> [(first frame, fps), ...]."""
    steps: list[tuple[int, float]] = []
    for k, item in enumerate(t.strip() for t in str(text).split(",")):
        fps_text, _, frame_text = item.partition("@")
        try:
            fps = float(fps_text)
            frame = int(frame_text) if frame_text else 0
        except ValueError:
            raise EdgepruneError(f"--target-fps expects FPS or FPS,FPS@FRAME,..., got {text!r}") from None
        if not fps > 0 or frame < 0 or (k == 0) != (frame == 0) or (steps and frame <= steps[-1][0]):
            raise EdgepruneError(f"--target-fps {text!r}: frame rates must be > 0, the first without @, "
                                 "later ones at increasing frames > 0")
        steps.append((frame, fps))
    return steps


def check_policy(policy: str) -> None:
    from edgeprune.runtime.policies import POLICIES

    if policy not in POLICIES:
        raise EdgepruneError(f"--policy: unknown policy {policy!r}; choose from {', '.join(POLICIES)}")


def target_ms_at(targets: Sequence[tuple[int, float]], index: int) -> float:
    fps = targets[0][1]
    for start, value in targets:
        if index >= start:
            fps = value
    return 1000.0 / fps


def output_size(width: int, height: int, max_height: int) -> tuple[int, int]:
    """The source size, scaled down to ``max_height`` rows when taller (0: no limit); even, for codecs."""
    if max_height and height > max_height:
        width, height = round(width * max_height / height), max_height
    return max(2, width - width % 2), max(2, height - height % 2)


@dataclass
class _Rendered:
    post_ms: float
    draw_ms: float
    encode_ms: float
    done: float


class _Renderer:
    """Output-thread work: labels at the output size, overlay, HUD, encode; keeps the end-to-end frame rate."""

    def __init__(self, writer: Any, palette: np.ndarray, alpha: float, exact: bool, temporal: bool) -> None:
        from edgeprune.imaging.frames import labels_exact, labels_fast

        self.writer, self.palette, self.alpha, self.temporal = writer, palette, alpha, temporal
        self.labels = labels_exact if exact else labels_fast
        self._recent: deque[float] = deque(maxlen=30)
        self.hits = 0

    def __call__(self, index: int, frame: np.ndarray, step: Step, target_ms: float) -> _Rendered:
        from edgeprune.imaging.frames import overlay_fast
        from edgeprune.video.io import draw_hud

        h, w = frame.shape[:2]
        t0 = time.perf_counter()
        made = step.labels is not None and step.labels.shape == (h, w)
        labels = step.labels if made else self.labels(step.logits, h, w)
        t1 = time.perf_counter()
        image = overlay_fast(frame, labels, self.palette, self.alpha)
        met = step.total_ms <= target_ms
        self.hits += met
        fps = (len(self._recent) - 1) / (self._recent[-1] - self._recent[0]) if len(self._recent) > 1 else 0.0
        what = step.engine if self.temporal else f"budget {step.budget:.2f}"
        draw_hud(image, [
            (f"frame {index}  {fps:.1f} fps end to end", (255, 255, 255)),
            (what, (255, 230, 120)),
            (f"{step.total_ms:.1f} ms (engine {step.engine_ms:.1f}) / {target_ms:.1f}",
             (120, 255, 120) if met else (255, 90, 90)),
            (f"deadline hits {self.hits / (index + 1):.1%}", (255, 255, 255)),
        ])
        t2 = time.perf_counter()
        self.writer.write(image)
        t3 = time.perf_counter()
        self._recent.append(t3)
        return _Rendered(step.post_ms if made else (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, t3)


def _stage_stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    stats = {}
    for stage in STAGES:
        values = np.asarray([r["ms"][stage] for r in rows], np.float64)
        stats[stage] = {"mean_ms": round(float(values.mean()), 3), "p50_ms": round(float(np.median(values)), 3),
                        "p95_ms": round(float(np.percentile(values, 95)), 3)}
    return stats


def run_demo(sources: list[Source], model: Path, out_path: Path, *, target_fps: float | str = 30.0,
             policy: str = "deadline", max_frames: Optional[int] = None, threads: int = 2, provider: str = "cpu",
             alpha: float = 0.5, force: bool = False, progress: bool = True,
             on_frame: Optional[Callable[[int, dict[str, Any]], None]] = None, engines: Optional[Path] = None,
             out_height: int = 720, exact_labels: bool = False, queue_size: int = 4,
             native: bool = False, precision: Optional[str] = None, device: Optional[str] = None) -> dict[str, Any]:
    """Segment every frame of ``sources`` into one overlay mp4 + metrics JSON + plot; returns the summary.

    All three outputs appear only when the whole run succeeds (the CLI and scripts share this). ``provider``
    (ONNX Runtime's cpu/cuda/tensorrt, ``openvino`` at ``precision`` on ``device``, or ``auto``) runs the model.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeprune.core.console import console
    from edgeprune.imaging.frames import resize_frame
    from edgeprune.video.io import VideoWriter
    from edgeprune.video.outputs import all_or_nothing, check_outputs, output_paths, vmrss_mb, write_side_outputs
    from edgeprune.video.pipeline import run_pipeline

    targets = parse_targets(str(target_fps))
    check_policy(policy)
    if out_height < 0:
        raise EdgepruneError(f"--out-height must be >= 0, got {out_height}")
    check_outputs(out_path, [Path(s.name) for s in sources], force)
    video_path = output_paths(out_path)[0]
    engine = FrameEngine(model, target_ms_at(targets, 0), policy, threads, provider, engines, native=native,
                         precision=precision, device=device)
    w, h = output_size(*sources[0].size, out_height)
    total = sum(s.count or 0 for s in sources) if all(s.count for s in sources) else None
    if max_frames:
        total = min(total, max_frames) if total else max_frames
    temporal = engine.kind == "temporal reuse"
    rows: list[dict[str, Any]] = []
    rss_start = vmrss_mb()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())

    def prepare(frame: np.ndarray) -> np.ndarray:
        return frame if frame.shape[:2] == (h, w) else resize_frame(frame, h, w)

    try:
        with all_or_nothing(out_path) as created, VideoWriter(video_path, sources[0].fps, (w, h)) as writer, \
                Progress(*columns, console=console, transient=True, disable=not progress) as bar:
            task = bar.add_task(Path(sources[0].name).name, total=total)
            render = _Renderer(writer, engine.palette, alpha, exact_labels, temporal)
            processed = [0]

            def infer(item: Any) -> tuple[int, Step, float]:
                i = processed[0]
                processed[0] += 1
                target_ms = target_ms_at(targets, i)
                return i, engine.step(item.frame, deadline_ms=target_ms), target_ms

            def finish(item: Any, result: tuple[int, Step, float]) -> None:
                i, st, target_ms = result
                r = render(i, item.frame, st, target_ms)
                ms = {"decode": item.decode_ms, "pre": st.pre_ms, "engine": st.engine_ms, "scheduler": st.scheduler_ms,
                      "post": r.post_ms, "draw": r.draw_ms, "encode": r.encode_ms}
                row = {"index": i, "engine": st.engine, "budget": round(st.budget, 4), "provider": st.provider,
                       "target_ms": round(target_ms, 3), "engine_ms": round(st.engine_ms, 3),
                       "total_ms": round(st.total_ms, 3), "deadline_met": bool(st.total_ms <= target_ms),
                       "latency_ms": round((r.done - item.captured) * 1e3, 3),
                       "ms": {k: round(v, 3) for k, v in ms.items()}}
                if st.reason:
                    row["reason"] = st.reason
                rows.append(row)
                if on_frame is not None:
                    on_frame(i, row)
                bar.advance(task)

            def new_source(k: int) -> None:
                engine.new_source()
                bar.update(task, description=Path(sources[k].name).name)

            stats = run_pipeline(sources, prepare, infer, finish, max_frames=max_frames, queue_size=queue_size,
                                 on_new_source=new_source)
            if not rows:
                raise EdgepruneError("no frames to process")
            engine_mean = float(np.mean([r["engine_ms"] for r in rows]))
            lat = np.asarray([r["total_ms"] for r in rows])
            summary = {
                "frames": len(rows), "dropped": stats.dropped, "wall_s": round(stats.wall_s, 3),
                "fps_end_to_end": round(len(rows) / stats.wall_s, 2),
                "fps_engine_only": round(1000.0 / engine_mean, 2) if engine_mean > 0 else None,
                "target_fps": [{"from_frame": f, "fps": v} for f, v in targets],
                "hit_rate": round(float(np.mean([r["deadline_met"] for r in rows])), 4),
                "mean_budget": round(float(np.mean([r["budget"] for r in rows])), 4),
                "budgets_used": sorted({r["budget"] for r in rows}, reverse=True),
                "p50_ms": round(float(np.percentile(lat, 50)), 3), "p95_ms": round(float(np.percentile(lat, 95)), 3),
                "stages": _stage_stats(rows), "labels": "exact" if exact_labels else "fast",
                "output_size": [w, h], "input_size": list(sources[0].size),
                "engines": dict(Counter(r["engine"].split(" (")[0] for r in rows)),
                "providers": dict(Counter(r["provider"] for r in rows)),
                "rss_start_mb": rss_start, "rss_end_mb": vmrss_mb(),
            }
            data = {"model": str(model), "kind": engine.kind, "policy": policy if "set" in engine.kind else None,
                    "budgets": engine.budgets, "sources": [s.name for s in sources], "size": [w, h],
                    "video": str(video_path), "summary": summary, "frames": rows}
            title = f"{model.name} ({engine.kind}), target {str(target_fps)} fps"
            write_side_outputs(created, out_path, json.dumps(data, indent=1) + "\n",
                               lambda path: _plot(rows, path, title, temporal))
    finally:
        engine.close()
    return summary


def _plot(rows: list[dict[str, Any]], path: Path, title: str, temporal: bool) -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # the runtime install: video and metrics, no plot
        from edgeprune.core.console import console

        console.print(f"note: matplotlib is not installed, so no plot ({path.name}): pip install matplotlib", highlight=False)
        path.unlink(missing_ok=True)  # not a stale one from an earlier run (--force)
        return
    from edgeprune.measure.plotting import plot_timeline

    plot_timeline(path, [r["index"] for r in rows], {"budget": [r["budget"] for r in rows]},
                  {"frame (pre + scheduler + engine)": [r["total_ms"] for r in rows],
                   "engine": [r["engine_ms"] for r in rows]},
                  [r["target_ms"] for r in rows], title=title,
                  budget_label="patches recomputed" if temporal else "budget (MACs ratio)")


def summary_line(s: dict[str, Any]) -> str:
    """The one-line summary the CLI prints: end-to-end figures first, then the engine's."""
    st = s["stages"]
    stages = ", ".join(f"{k} {st[k]['mean_ms']:.1f}" for k in STAGES)
    dropped = f", {s['dropped']} dropped" if s["dropped"] else ""
    engines = ", ".join(f"{k} x{v}" for k, v in sorted(s["engines"].items()))
    return (f"{s['frames']} frames{dropped} in {s['wall_s']:.1f} s: {s['fps_end_to_end']:.1f} fps end to end "
            f"(engine alone {s['fps_engine_only']:.1f} fps); mean ms per stage: {stages}; "
            f"hits {s['hit_rate']:.1%}, budgets used {', '.join(f'{b:.2f}' for b in s['budgets_used'])} "
            f"(mean {s['mean_budget']:.2f}); RSS {s['rss_start_mb']} -> {s['rss_end_mb']} MB; engines: {engines}")


__all__ = ["STAGES", "check_policy", "output_size", "parse_targets", "run_demo", "summary_line", "target_ms_at"]
