#!/usr/bin/env python
"""Stills of ``edgeprune demo VIDEO`` for the docs, with where each class landed.

Runs the demo exactly as a user would (``edgeprune demo VIDEO --max-frames N``, no --model: the
CamVid model's cached engine set), then saves chosen frames of the output video as PNGs and, for
the same input frames, the class shares the unreduced model gives in the top quarter, the middle
and the bottom quarter of the picture (sky on top, road at the bottom is what a driving clip
should show).

    python scripts/demo_stills.py ../shared/data/video/highway_lane_960x540.mp4 --frames 60,200 --out docs/images
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def band_shares(labels: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Class shares (>= 1 %) in the top quarter, the middle half and the bottom quarter of a label map."""
    h = labels.shape[0]
    bands = {"top": labels[: h // 4], "middle": labels[h // 4: 3 * h // 4], "bottom": labels[3 * h // 4:]}
    out = {}
    for name, part in bands.items():
        counts = np.bincount(part.ravel(), minlength=len(classes)) / part.size
        out[name] = {classes[k]: round(float(c), 3) for k, c in sorted(enumerate(counts), key=lambda kv: -kv[1]) if c >= 0.01}
    return out


def main(argv: list[str] | None = None) -> int:
    from edgeprune.cli.common import default_model
    from edgeprune.cli.main import main as cli
    from edgeprune.imaging.evaluation import normalize
    from edgeprune.families.timm_seg import load_segmenter
    from edgeprune.imaging.images import resize_rgb, save_png_atomic, upsample_argmax
    from edgeprune.video import open_video

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", type=Path)
    ap.add_argument("--frames", default="60,200", help="frame indices to keep, comma-separated (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    picks = sorted({int(t) for t in args.frames.split(",") if t.strip()})
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        demo_out = Path(tmp) / "demo.mp4"
        code = cli(["demo", str(args.video), "--max-frames", str(picks[-1] + 1), "--out", str(demo_out),
                    "--threads", str(args.threads)])
        if code != 0:
            return code
        metrics = json.loads(demo_out.with_suffix(".metrics.json").read_text())
        rendered = {i: f for i, f in enumerate(open_video(demo_out)) if i in picks}
    originals = {i: f for i, f in enumerate(open_video(args.video)) if i in picks}
    missing = [i for i in picks if i not in rendered or i not in originals]
    if missing:
        print(f"error: {args.video} has no frame {missing[0]} (it has {len(rendered)} frames)", file=sys.stderr)
        return 2
    model = load_segmenter(default_model(real=True))
    info = model.info
    classes = list(info["classes"])
    _, h, w = info["input"]["size"]
    report = {"video": str(args.video), "demo_summary": metrics["summary"], "frames": {}}
    import torch

    torch.set_num_threads(args.threads)
    for i in picks:
        target = args.out / f"demo_{args.video.stem}_{i:04d}.png"
        save_png_atomic(target, np.ascontiguousarray(rendered[i]))
        frame = originals[i]
        x = normalize(resize_rgb(frame, h, w)[None], info["input"]["mean"], info["input"]["std"])
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()[0]
        labels = upsample_argmax(logits, *frame.shape[:2])
        report["frames"][i] = {"png": str(target), "shares": band_shares(labels, classes)}
        print(f"frame {i}: {target}")
        for band, shares in report["frames"][i]["shares"].items():
            print(f"  {band:6s} " + ", ".join(f"{c} {s:.0%}" for c, s in shares.items()))
    s = metrics["summary"]
    print(f"demo: {s['frames']} frames, budgets used {s['budgets_used']} (mean {s['mean_budget']:.2f}), "
          f"end to end {s['fps_end_to_end']:.1f} fps, engine alone {s['fps_engine_only']} fps, deadline hits {s['hit_rate']:.0%}")
    (args.out / f"demo_{args.video.stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
