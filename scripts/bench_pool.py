#!/usr/bin/env python
"""Several cameras, one token pool: content-driven allocation vs an equal split, and threads.

1. Streams: the real clips in ../shared/data/video (default: three of them, run side by side as
   cameras) or --generated clips with 0, 1 and 4 moving objects. The reference segmenter's engine
   set (tome, budgets 1.0/0.75/0.5/0.35) is exported and calibrated into --work when absent.
2. For --ticks ticks, every camera delivers a frame; runtimes each spend a pool of --pool per
   tick (sum of MACs ratios): "equal" gives every camera the same level (the largest that fits
   pool/cameras); the pool runtimes allocate by each camera's signal (complexity, change, or
   both; see Runtime.infer_pool) with a --minimum per camera.
   Each camera's labels are compared with the full model's on the same frame (agreement mIoU).
3. Threads: one Runtime serving 4 streams from 1, 2 and 4 threads (fixed engine), frames/s.

    python scripts/bench_pool.py [--work out/pool_bench] [--ticks 300] [--pool 1.5] [--minimum 0.35]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VIDEOS = REPO.parent / "shared" / "data" / "video"
DEFAULT_CLIPS = ("indoor_lab_1920x1080.mp4", "highway_lane_960x540.mp4", "outdoor_pool_340x256.mp4")


def camera_frames(args) -> dict[str, list[np.ndarray]]:
    """A list of frames per camera, ``--ticks`` long (clips loop)."""
    from edgeprune.data import SceneConfig, make_clip
    from edgeprune.imaging.images import resize_rgb
    from edgeprune.video import open_video

    cams: dict[str, list[np.ndarray]] = {}
    if args.generated or not all((VIDEOS / c).is_file() for c in DEFAULT_CLIPS):
        for moving in (0, 1, 4):
            cams[f"moving{moving}"] = list(make_clip(11 + moving, min(args.ticks, 150), SceneConfig(), moving=moving)[0])
    else:
        for name in DEFAULT_CLIPS:
            with open_video(VIDEOS / name) as video:
                # Stored at the model's input size: decoding and resizing are not what is compared here.
                cams[name] = [resize_rgb(f, *args.size) for _, f in zip(range(args.ticks), video)]
    return {k: [v[i % len(v)] for i in range(args.ticks)] for k, v in cams.items()}


def agreement(conf: np.ndarray) -> float:
    from edgeprune.imaging.evaluation import iou_report

    return float(iou_report(conf)["miou"])


def run_pool(engines, cams, args, signal: str, full) -> dict:
    from edgeprune.imaging.evaluation import confusion
    from edgeprune.runtime import Runtime

    names = list(cams)
    k = int(engines.members[0].artifact.manifest["model"]["num_classes"])
    conf = {n: np.zeros((k, k), np.int64) for n in names}
    budgets = {n: [] for n in names}
    tick_ms = []
    with Runtime(engines, target_ms=1000.0, threads=args.threads) as rt:
        for t in range(args.ticks):
            turn = t % len(names)  # equal weights: the leftover levels rotate between cameras
            frames = {n: cams[n][t] for n in names[turn:] + names[:turn]}
            t0 = time.perf_counter()
            results = rt.infer_pool(frames, pool=args.pool, minimum=args.minimum, signal=signal)
            tick_ms.append((time.perf_counter() - t0) * 1e3)
            for n in names:
                conf[n] += confusion(full[n][t], results[n].labels, k)
                budgets[n].append(results[n].budget)
    return {"per_camera": {n: {"mean_budget": float(np.mean(budgets[n])), "agreement_miou": agreement(conf[n])} for n in names},
            "mean_agreement": float(np.mean([agreement(conf[n]) for n in names])),
            "pool_used": float(np.mean([sum(budgets[n][t] for n in names) for t in range(args.ticks)])),
            "tick_ms_p50": float(np.median(tick_ms))}


def full_labels(engines, cams) -> dict[str, list[np.ndarray]]:
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.imaging.evaluation import normalize
    from edgeprune.runtime.runtime import labels_of

    member = engines.member(1.0)
    info = member.artifact.manifest["model"]["input"]
    with OrtRunner(member.artifact.onnx_path, spinning=False) as runner:
        return {n: [labels_of(runner.infer({"pixel_values": normalize(f[None], info["mean"], info["std"])})["logits"])
                    for f in frames] for n, frames in cams.items()}


def threads_scaling(engines, cams, args) -> dict:
    from edgeprune.runtime import Runtime

    frames = [cams[n][:args.thread_frames] for n in cams]
    frames = (frames * 2)[:4]  # four streams
    out = {}
    with Runtime(engines, target_ms=1000.0, policy="fixed", policy_args={"index": 0}, threads=1) as rt:
        for workers in (1, 2, 4):
            streams = [list(range(s, 4, workers)) for s in range(workers)]
            errors: list[BaseException] = []

            def serve(mine: list[int]) -> None:
                try:
                    for i in range(args.thread_frames):
                        for s in mine:
                            rt.infer(frames[s][i], stream=s)
                except BaseException as exc:  # noqa: BLE001 - reported after join
                    errors.append(exc)

            t0 = time.perf_counter()
            pool = [threading.Thread(target=serve, args=(m,)) for m in streams]
            for th in pool:
                th.start()
            for th in pool:
                th.join()
            if errors:
                raise errors[0]
            out[workers] = 4 * args.thread_frames / (time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    from edgeprune.core.progress import messages
    from edgeprune.train.engine_sets import reference_engine_set as engine_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("out/pool_bench"))
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--pool", type=float, default=1.5, help="sum of budgets per tick")
    ap.add_argument("--minimum", type=float, default=0.35, help="budget every camera gets at least")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--thread-frames", type=int, default=100)
    ap.add_argument("--generated", action="store_true", help="generated clips instead of ../shared/data/video")
    ap.add_argument("--model", type=Path, default=REPO / "models" / "scene_seg",
                    help="segmenter folder (default: %(default)s; models/camvid_seg for the real-scene model)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    engines = engine_set(args.work, args.threads, args.model, progress=messages(lambda m: print(m, flush=True)))
    args.size = tuple(engines.members[0].artifact.input_shape()[-2:])
    cams = camera_frames(args)
    print(f"{len(cams)} cameras x {args.ticks} ticks; pool {args.pool:g} per tick, minimum {args.minimum:g}", flush=True)
    full = full_labels(engines, cams)
    kinds = ("equal", "complexity", "change", "both")
    rows = {k: run_pool(engines, cams, args, k, full) for k in kinds}
    print(f"\n{'camera':28s}" + "".join(f" {k + ': budget':>18s} {'agree':>6s}" for k in kinds))
    for n in cams:
        print(f"{n:28s}" + "".join(f" {rows[k]['per_camera'][n]['mean_budget']:18.3f} {rows[k]['per_camera'][n]['agreement_miou']:6.3f}"
                                  for k in kinds))
    for k in kinds:
        r = rows[k]
        print(f"{k:6s}: mean agreement mIoU {r['mean_agreement']:.4f}; budget used per tick {r['pool_used']:.3f}; "
              f"tick p50 {r['tick_ms_p50']:.1f} ms")
    scaling = threads_scaling(engines, cams, args)
    print("\none Runtime, 4 streams, fixed engine b1.00: " + ", ".join(f"{w} thread(s) {fps:.0f} frames/s" for w, fps in scaling.items()))
    out = args.work / "results.json"
    out.write_text(json.dumps({"settings": vars(args) | {"work": str(args.work), "model": str(args.model)}, "rows": rows, "threads_fps": scaling}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
