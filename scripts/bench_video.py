"""Issue 11's figures: the pipelined demo end to end vs the engine alone, pre + post per frame, and the fast
labels' agreement with the exact reference, on every clip in ../shared/data/video (plus the 1080p clip
re-encoded to 720p and 480p).

    python scripts/bench_video.py --frames 150 --json docs/results/video.json

Per clip, alternating (engine alone, then the demo, ``--repeats`` times, a settle pause between):
* engine only: the b1.00 member of the reference engine set (``edgeprune demo``'s default set) on the
  clip's frames already resized to the model, timed back to back — the engine's own frame rate;
* demo: ``run_demo`` with the fixed policy on the same member, the full pipeline (decode, pre, engine,
  post, overlay, encode), output at the clip's size (``--out-height 0``) and at the default 720 rows;
* demo --native: the same through the C library (labels at the output size made there too);
* pre + post: resize to the model + labels at the clip's full size, timed alone on its frames, for the
  Python/OpenCV path and the native library's;
* agreement: fast labels vs the exact reference (bilinear logits, argmax) on every 5th frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgeprune.backends.ort import OrtRunner

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "video"


def reencode(src: Path, height: int, folder: Path, frames: int) -> Path:
    from edgeprune.video import VideoWriter, open_video
    from edgeprune.imaging.frames import resize_frame
    from edgeprune.video.demo import output_size

    reader = open_video(src)
    w, h = output_size(*reader.size, height)
    out = folder / f"{src.stem.rsplit('_', 1)[0]}_{w}x{h}.mp4"
    with VideoWriter(out, reader.fps, (w, h)) as writer:
        for _, frame in zip(range(frames), reader):
            writer.write(resize_frame(frame, h, w))
    return out


VARIANTS = (("full", 0, False), ("720", 720, False), ("native", 0, True))  # label, --out-height, --native


def settle() -> None:
    time.sleep(0.5)  # ONNX Runtime's and OpenCV's thread pools stop spinning before the next variant


def engine_only(runner: "OrtRunner", pixels: list[np.ndarray]) -> float:
    """Frames/s of the engine alone on ``pixels``, after a few untimed runs (the settle of bench)."""
    for x in pixels[:5]:
        runner.run_raw({"pixel_values": x})
    start = time.perf_counter()
    for x in pixels:
        runner.run_raw({"pixel_values": x})
    return len(pixels) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150, help="frames per clip")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from edgeprune.artifacts.engine_set import load_engine_set
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.core.progress import messages
    from edgeprune.imaging.evaluation import normalize
    from edgeprune.video import default_demo, open_video
    from edgeprune.video.demo import run_demo
    from edgeprune.imaging.frames import labels_exact, labels_fast, resize_frame
    from edgeprune.video.sources import video_source

    try:
        import edgeprune.native as native

        native.build_native()
        native.load_library()
    except Exception as exc:  # noqa: BLE001 - the Python figures stand on their own
        print(f"native library unavailable ({exc}); its columns are left out")
        native = None
    models = default_demo.prepare(ROOT / "models" / "scene_seg", threads=args.threads, progress=messages(print))
    engine_set = load_engine_set(models.engine_set)
    member = engine_set.member(1.0)
    info = member.artifact.manifest["model"]["input"]
    h_model, w_model = member.artifact.input_shape()[2:]

    runner = OrtRunner(member.artifact.onnx_path, threads=args.threads, spinning=False).activate()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = sorted(VIDEOS.glob("*.mp4"))
        big = [c for c in clips if "1920x1080" in c.name]
        if big:
            clips += [reencode(big[0], 720, Path(tmp), args.frames), reencode(big[0], 480, Path(tmp), args.frames)]
        for clip in clips:
            frames = [f for _, f in zip(range(args.frames), open_video(clip))]
            height, width = frames[0].shape[:2]
            pixels = [normalize(resize_frame(f, h_model, w_model)[None], info["mean"], info["std"]) for f in frames]
            agree = []
            for x in pixels[::5]:
                logits = runner.infer({"pixel_values": x})["logits"][0]
                agree.append(float((labels_fast(logits, height, width) == labels_exact(logits, height, width)).mean()))
            logits = [runner.infer({"pixel_values": x})["logits"][0] for x in pixels[:30]]
            settle()
            t0 = time.perf_counter()
            for f in frames[:30]:
                resize_frame(f, h_model, w_model)
            t1 = time.perf_counter()
            for lg in logits:
                labels_fast(lg, height, width)
            t2 = time.perf_counter()
            pre_ms, post_ms = (t1 - t0) / 30 * 1e3, (t2 - t1) / 30 * 1e3
            native_pre_ms = native_post_ms = None
            if native is not None:
                settle()
                t0 = time.perf_counter()
                for f in frames[:30]:
                    native.resize_rgb(f, h_model, w_model)
                t1 = time.perf_counter()
                for lg in logits:
                    native.upsample_argmax(lg, height, width)
                t2 = time.perf_counter()
                native_pre_ms, native_post_ms = (t1 - t0) / 30 * 1e3, (t2 - t1) / 30 * 1e3
            engine_fps, demo = [], {label: [] for label, _, nat in VARIANTS if native is not None or not nat}
            for _ in range(args.repeats):
                settle()
                engine_fps.append(engine_only(runner, pixels))
                for label, out_height, use_native in VARIANTS:
                    if label not in demo:
                        continue
                    settle()
                    source = video_source(clip)
                    try:
                        s = run_demo([source], models.engine_set, Path(tmp) / "demo.mp4", target_fps="1", policy="fixed",
                                     max_frames=args.frames, threads=args.threads, force=True, progress=False,
                                     out_height=out_height, native=use_native)
                    finally:
                        source.close()
                    demo[label].append(s)
            best = float(np.median(engine_fps))
            row = {"clip": clip.name, "size": [width, height], "frames": len(frames),
                   "engine_only_fps": round(best, 1),
                   "pre_ms": round(pre_ms, 2), "post_ms": round(post_ms, 2), "pre_plus_post_ms": round(pre_ms + post_ms, 2),
                   "native_pre_plus_post_ms": None if native_pre_ms is None else round(native_pre_ms + native_post_ms, 2),
                   "label_agreement_min": round(min(agree), 6), "label_agreement_mean": round(float(np.mean(agree)), 6)}
            for label, runs in demo.items():
                fps = float(np.median([s["fps_end_to_end"] for s in runs]))
                stages = {k: v["mean_ms"] for k, v in runs[-1]["stages"].items()}
                row[f"demo_{label}"] = {"fps_end_to_end": round(fps, 1), "ratio_to_engine_only": round(fps / best, 2),
                                        "output_size": runs[-1]["output_size"], "stages_mean_ms": stages}
            rows.append(row)
            print(f"{clip.name:32s} {width}x{height}: engine alone {best:6.1f} fps | demo full-size "
                  f"{row['demo_full']['fps_end_to_end']:6.1f} fps ({row['demo_full']['ratio_to_engine_only']:.2f}x) | "
                  f"demo <=720 rows {row['demo_720']['fps_end_to_end']:6.1f} fps ({row['demo_720']['ratio_to_engine_only']:.2f}x) | "
                  f"pre {pre_ms:.2f} + post {post_ms:.2f} ms | labels agree {min(agree):.5%} (min)", flush=True)
            if "native" in demo:
                print(f"{'':32s}   native: demo full-size {row['demo_native']['fps_end_to_end']:6.1f} fps "
                      f"({row['demo_native']['ratio_to_engine_only']:.2f}x), pre {native_pre_ms:.2f} + post "
                      f"{native_post_ms:.2f} ms", flush=True)
            for label in demo:
                st = row[f"demo_{label}"]["stages_mean_ms"]
                print(f"{'':32s}   stages ({label}): " + ", ".join(f"{k} {v:.1f}" for k, v in st.items()), flush=True)
    runner.deactivate()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "threads": args.threads,
                                         "engine": f"{models.engine_set}/b1.00 (ONNX Runtime CPU)", "clips": rows},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
