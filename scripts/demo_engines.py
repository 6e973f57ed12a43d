#!/usr/bin/env python
"""The video demo on ONNX Runtime and on OpenVINO, same engine set, same clips, in one run (issue 24).

    python scripts/demo_engines.py --max-frames 60
    python scripts/demo_engines.py --videos ../shared/data/video --model out/engines --precision bf16

For every clip in ``--videos`` this runs :func:`edgeprune.video.demo.run_demo` — the pipeline
``edgeprune demo VIDEO`` runs (decode, budget per frame under the deadline, engine, overlay, encode) —
once with ``--provider cpu`` (ONNX Runtime) and once with ``--provider openvino``, alternating which
goes first from clip to clip, and prints end-to-end fps and engine p50 side by side. The default
model is the demo's own: the CamVid engine set, exported and calibrated into the user cache on first
use, here calibrated for both engines so that each plans its budgets with its own latencies. Writes
``--json`` (default docs/results/demo_engines.json) atomically. Exit 2 on bad input, one line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from edgeprune.core.errors import EdgepruneError

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"onnxruntime": "cpu", "openvino": "openvino"}  # column -> the demo's --provider
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


def prepared_set(model: Optional[Path], precision: Optional[str], threads: int) -> Path:
    """``--model``, or the demo's CamVid engine set calibrated for ONNX Runtime and for OpenVINO (cached)."""
    from edgeprune.cli.common import default_model
    from edgeprune.video import default_demo

    if model is not None:
        return model
    for provider in ENGINES.values():
        models = default_demo.prepare(default_model(real=True), threads=threads, temporal=False, provider=provider,
                                      precision=precision if provider == "openvino" else None,
                                      progress=lambda _done, _total, message="": message and print(message))
    return models.engine_set


def run_clip(clip: Path, engine_set: Path, provider: str, precision: Optional[str], args: argparse.Namespace,
             work: Path) -> dict[str, Any]:
    from edgeprune.video.demo import run_demo
    from edgeprune.video.sources import video_source

    source = video_source(clip)
    try:
        summary = run_demo([source], engine_set, work / f"{clip.stem}.{provider}.mp4", target_fps=args.target_fps,
                           max_frames=args.max_frames, threads=args.threads, provider=provider, precision=precision,
                           progress=False, force=True)
    finally:
        source.close()
    return {"fps_end_to_end": summary["fps_end_to_end"], "engine_p50_ms": summary["stages"]["engine"]["p50_ms"],
            "fps_engine_only": summary["fps_engine_only"], "frames": summary["frames"],
            "mean_budget": summary["mean_budget"], "hit_rate": summary["hit_rate"],
            "runs_as": sorted(summary["providers"]), "input_size": summary["input_size"]}


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'clip':<28} {'frames':>6}  {'ORT fps':>8} {'OV fps':>8} {'OV/ORT':>7}  "
            f"{'ORT eng p50':>11} {'OV eng p50':>10}  {'ORT budget':>10} {'OV budget':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        a, b = r["engines"]["onnxruntime"], r["engines"]["openvino"]
        lines.append(f"{r['clip']:<28} {a['frames']:>6}  {a['fps_end_to_end']:>8.1f} {b['fps_end_to_end']:>8.1f} "
                     f"{b['fps_end_to_end'] / a['fps_end_to_end']:>6.2f}x  {a['engine_p50_ms']:>8.2f} ms "
                     f"{b['engine_p50_ms']:>7.2f} ms  {a['mean_budget']:>10.2f} {b['mean_budget']:>9.2f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "data" / "video",
                    help="folder of clips (default: ../shared/data/video)")
    ap.add_argument("--model", type=Path, default=None, help="engine set calibrated for both engines "
                    "(default: the demo's CamVid set)")
    ap.add_argument("--max-frames", type=int, default=None, help="frames per clip and engine (default: all)")
    ap.add_argument("--target-fps", default="30", help="the demo's --target-fps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default=None, help="OpenVINO's precision: fp32 (default), bf16 or fp16")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "demo_engines.json")
    args = ap.parse_args(argv)
    try:
        from edgeprune.backends.openvino import openvino_version
        from edgeprune.backends.runners import check_provider_options
        from edgeprune.core.files import write_json_atomic
        from edgeprune.core.machine import library_versions, machine_fingerprint

        check_provider_options("openvino", args.precision, None)
        if args.max_frames is not None and args.max_frames < 1:
            raise EdgepruneError(f"--max-frames must be >= 1, got {args.max_frames}")
        clips = sorted(p for p in args.videos.glob("*") if p.suffix.lower() in VIDEO_SUFFIXES) if args.videos.is_dir() else []
        if not clips:
            raise EdgepruneError(f"--videos {args.videos}: no video files ({', '.join(VIDEO_SUFFIXES)}) there")
        if not args.json.resolve().parent.is_dir():
            raise EdgepruneError(f"cannot write --json {args.json}: {args.json.parent} is not a directory")
        engine_set = prepared_set(args.model, args.precision, args.threads)
        rows = []
        with tempfile.TemporaryDirectory(prefix="demo-engines-") as work:
            for k, clip in enumerate(clips):
                order = list(ENGINES.items()) if k % 2 == 0 else list(ENGINES.items())[::-1]
                engines = {}
                for column, provider in order:
                    print(f"{clip.name}: {column}", flush=True)
                    engines[column] = run_clip(clip, engine_set, provider,
                                               args.precision if provider == "openvino" else None, args, Path(work))
                rows.append({"clip": clip.name, "first": order[0][0], "engines": engines,
                             "openvino_vs_onnxruntime_fps": round(engines["openvino"]["fps_end_to_end"]
                                                                  / engines["onnxruntime"]["fps_end_to_end"], 3)})
        print(table(rows))
        write_json_atomic(args.json, {
            "script": "scripts/demo_engines.py", "argv": sys.argv[1:] if argv is None else argv,
            "engine_set": str(engine_set), "target_fps": args.target_fps, "max_frames": args.max_frames,
            "threads": args.threads, "openvino_precision": args.precision or "fp32",
            "machine": machine_fingerprint(), "versions": {**library_versions(), "openvino": openvino_version()},
            "clips": rows})
        print(f"wrote {args.json}")
    except EdgepruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
