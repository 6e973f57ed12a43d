"""Soak test of ``edgeprune demo``: run the CLI's own demo path in-process over N frames and report memory growth.

A generated clip is looped for ``--frames`` frames (default 5000); resident memory (VmRSS) is read after
``--warmup`` frames (allocators, ORT arenas and caches have settled) and at the last frame (before the
one-off matplotlib import of the plot). The limit is 50 MB of growth; the script exits 1 above it.

    python scripts/soak_demo.py --frames 1000 --model models/scene_seg --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

LIMIT_MB = 50.0


def main(argv: list[str] | None = None) -> int:
    from edgeprune.cli.common import default_model
    from edgeprune.video.demo import run_demo
    from edgeprune.video.outputs import vmrss_mb
    from edgeprune.video.sources import Source
    from edgeprune.data.scenes import SceneConfig, make_clip
    from edgeprune.imaging.images import resize_rgb

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--model", type=Path, default=None, help="engine set, artifact or segmenter folder")
    parser.add_argument("--target-fps", type=float, default=30.0)
    parser.add_argument("--policy", default="deadline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="frame size of the looped clip")
    parser.add_argument("--out", type=Path, default=None, help="keep the outputs here (.mp4); default: a temp folder")
    args = parser.parse_args(argv)
    if args.warmup >= args.frames:
        parser.error("--warmup must be smaller than --frames")

    clip, _ = make_clip(0, 120, SceneConfig(height=128, width=128))
    frames = (resize_rgb(clip[i % len(clip)], args.size, args.size) for i in itertools.count())
    source = Source("looped generated clip", 30.0, (args.size, args.size), frames, args.frames)
    marks: dict[str, float | None] = {"start": vmrss_mb()}

    def on_frame(index: int, _row: dict) -> None:
        if index == args.warmup - 1:
            marks["warm"] = vmrss_mb()
        elif index == args.frames - 1:
            marks["last"] = vmrss_mb()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "soak.mp4"
        summary = run_demo([source], args.model or default_model(real=False), out, target_fps=args.target_fps,
                           policy=args.policy, max_frames=args.frames, threads=args.threads, force=True,
                           on_frame=on_frame)
        marks["end"] = vmrss_mb()
    if marks.get("warm") is None or marks.get("last") is None:
        print("VmRSS is not available on this system (needs /proc/self/status)")
        return 0
    growth = marks["last"] - marks["warm"]
    print(f"{summary['frames']} frames, {summary['fps_end_to_end']:.1f} fps, hits {summary['hit_rate']:.1%}; "
          f"VmRSS start {marks['start']} MB, after {args.warmup} warm-up frames {marks['warm']} MB, "
          f"at the last frame {marks['last']} MB: growth {growth:+.1f} MB (limit {LIMIT_MB:g} MB) -> {'OK' if growth <= LIMIT_MB else 'FAIL'}; "
          f"{marks['end']} MB after writing the metrics and plot (matplotlib's one-off import)")
    return 0 if growth <= LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
