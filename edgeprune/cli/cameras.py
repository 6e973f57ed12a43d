"""``edgeprune demo A.mp4 B.mp4 --cameras``: several cameras at once, one token pool per tick.

The videos play side by side as simultaneous cameras. Every tick each camera delivers a frame and
:meth:`edgeprune.runtime.Runtime.infer_pool` shares ``--pool`` (a sum of per-frame budgets) among
them by their content signal, each getting at least ``--minimum``. The output video tiles the
cameras with one HUD each; the metrics JSON has every camera's budget and latency per tick.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.core.console import console
from edgeprune.core.errors import EdgepruneError

MAX_TILE_HEIGHT = 360


def tile_size(width: int, height: int) -> tuple[int, int]:
    """The first camera's size, scaled down to at most MAX_TILE_HEIGHT rows (even sizes for codecs)."""
    if height > MAX_TILE_HEIGHT:
        width, height = round(width * MAX_TILE_HEIGHT / height), MAX_TILE_HEIGHT
    return width - width % 2, height - height % 2


def _plot(rows: list[dict[str, Any]], names: list[str], target_ms: float, path: Path, title: str) -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # the runtime install: video and metrics, no plot
        console.print(f"note: matplotlib is not installed, so no plot ({path.name}): pip install matplotlib", highlight=False)
        path.unlink(missing_ok=True)
        return
    from edgeprune.measure.plotting import plot_timeline

    plot_timeline(path, [r["index"] for r in rows], {n: [r["budgets"][n] for r in rows] for n in names},
                  {"tick (all cameras)": [r["tick_ms"] for r in rows]}, target_ms, title=title, x_label="tick")


def run_cameras(sources: list[Any], model: Path, out_path: Path, *, pool: Optional[float] = None, minimum: float = 0.0,
                signal: str = "complexity", target_fps: float = 30.0, max_frames: Optional[int] = None,
                threads: int = 2, provider: str = "cpu", alpha: float = 0.5, force: bool = False,
                progress: bool = True, precision: Optional[str] = None, device: Optional[str] = None) -> dict[str, Any]:
    """Run ``sources`` as simultaneous cameras through one engine set and one token pool per tick."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeprune.artifacts.engine_set import is_engine_set
    from edgeprune.imaging.images import palette_array, resize_rgb
    from edgeprune.imaging.frames import labels_fast, overlay_fast
    from edgeprune.runtime.runtime import Runtime
    from edgeprune.video import VideoWriter, draw_hud
    from edgeprune.video.outputs import all_or_nothing, check_outputs, output_paths, vmrss_mb, write_side_outputs

    if len(sources) < 2:
        raise EdgepruneError("--cameras needs at least two videos (one per camera)")
    if not is_engine_set(model):
        raise EdgepruneError(f"--cameras needs an engine set (export --budgets, then calibrate); {model} is not one")
    if not target_fps > 0:
        raise EdgepruneError(f"--target-fps must be > 0, got {target_fps}")
    names = [Path(s.name).name for s in sources]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    pool = 0.5 * len(sources) if pool is None else pool
    check_outputs(out_path, [Path(s.name) for s in sources], force)
    video_path = output_paths(out_path)[0]
    target_ms = 1000.0 / target_fps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        runtime = Runtime(model, target_ms, "deadline", threads=threads, provider=provider, precision=precision,
                          device=device)
    for w in caught:
        console.print(f"warning: {w.message}", highlight=False, soft_wrap=True)
    if runtime.engine_reason:
        from edgeprune.backends.runners import auto_line

        console.print(auto_line(runtime.engine, runtime.engine_reason), highlight=False, soft_wrap=True)
    info = runtime.set.manifest.get("model") or {}
    palette = palette_array(info.get("palette"), int(info.get("num_classes") or len(info.get("classes") or []) or 1))
    if minimum * len(sources) > pool + 1e-9 or minimum > max(runtime.budgets):
        runtime.close()
        raise EdgepruneError(f"--pool {pool:g} cannot give {len(sources)} cameras --minimum {minimum:g} each")
    tw, th = tile_size(*sources[0].size)
    counts = [s.count for s in sources]
    total = min(counts) if all(counts) else None
    if max_frames:
        total = min(total, max_frames) if total else max_frames
    rows: list[dict[str, Any]] = []
    hits = 0
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with all_or_nothing(out_path) as created, VideoWriter(video_path, sources[0].fps, (tw * len(sources), th)) as writer, \
                Progress(*columns, console=console, transient=True, disable=not progress) as bar:
            task = bar.add_task(f"{len(sources)} cameras", total=total)
            for frames in zip(*(s.frames for s in sources)):
                if max_frames and len(rows) >= max_frames:
                    break
                frames = [f if f.shape[:2] == (th, tw) else resize_rgb(f, th, tw) for f in frames]
                turn = len(rows) % len(names)  # with equal weights, leftover levels rotate between cameras
                order = list(zip(names, frames))
                results = runtime.infer_pool(dict(order[turn:] + order[:turn]), pool=pool, minimum=minimum, signal=signal)
                tick_ms = sum(r.total_ms for r in results.values())
                met = tick_ms <= target_ms
                hits += met
                tiles = []
                tick_lines = [(f"tick {len(rows)}: {tick_ms:.1f} / {target_ms:.1f} ms", (120, 255, 120) if met else (255, 90, 90)),
                              (f"pool {sum(r.budget for r in results.values()):.2f} of {pool:g}, hits {hits / (len(rows) + 1):.0%}",
                               (255, 255, 255))]
                for k, (name, frame) in enumerate(zip(names, frames)):
                    r = results[name]
                    image = overlay_fast(frame, labels_fast(r.outputs["logits"][0], th, tw), palette, alpha)
                    lines = [(name, (255, 255, 255)), (f"budget {r.budget:.2f}  {r.total_ms:.1f} ms", (255, 255, 255))]
                    draw_hud(image, lines + (tick_lines if k == 0 else []))
                    tiles.append(image)
                writer.write(np.concatenate(tiles, axis=1))
                rows.append({"index": len(rows), "budgets": {n: results[n].budget for n in names},
                             "engine_ms": {n: round(results[n].engine_ms, 3) for n in names},
                             "tick_ms": round(tick_ms, 3), "deadline_met": bool(met)})
                bar.advance(task)
            if not rows:
                raise EdgepruneError("no frames to process")
            wall = time.perf_counter() - started
            summary = {
                "ticks": len(rows), "cameras": len(names), "wall_s": round(wall, 3), "target_ms": round(target_ms, 3),
                "pool": pool, "minimum": minimum, "signal": signal, "hit_rate": round(hits / len(rows), 4),
                "mean_budget": {n: round(float(np.mean([r["budgets"][n] for r in rows])), 4) for n in names},
                "tick_p50_ms": round(float(np.median([r["tick_ms"] for r in rows])), 3), "rss_end_mb": vmrss_mb(),
            }
            text = json.dumps({"model": str(model), "kind": "cameras", "sources": [s.name for s in sources],
                               "video": str(video_path), "summary": summary, "ticks": rows}, indent=1) + "\n"
            title = f"{model.name}: {len(names)} cameras, pool {pool:g}, signal {signal}"
            write_side_outputs(created, out_path, text, lambda path: _plot(rows, names, target_ms, path, title))
    finally:
        runtime.close()
    return summary
