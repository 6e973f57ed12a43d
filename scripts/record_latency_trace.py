"""Record the latency trace that native and Python policies are replayed on (tests/data/latency_trace.json).

Every frame times every member of a calibrated engine set once (ONNX Runtime, 2 threads, no spinning,
shuffled order), so any policy's choice has a measured latency; from frame ``--step`` on, CPU hog
processes load the machine (a load step). Each frame's content signal is the change between
consecutive frames of a real clip (``frame_change`` of ``downscale_gray`` thumbnails).

    edgeprune export models/scene_seg --budgets 1.0,0.75,0.5,0.35 --out /tmp/set && edgeprune calibrate /tmp/set
    python scripts/record_latency_trace.py /tmp/set --out tests/data/latency_trace.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import time
from pathlib import Path

import numpy as np


def _hog(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2147483648


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set")
    ap.add_argument("--out", default="tests/data/latency_trace.json")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--step", type=int, default=500, help="frame where the load step starts")
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("--clip", default=str(Path(__file__).resolve().parents[2] / "shared/data/video/highway_lane_960x540.mp4"))
    args = ap.parse_args()

    import cv2

    from edgeprune.artifacts.engine_set import load_engine_set
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.runtime.policies import downscale_gray, frame_change
    from edgeprune.runtime.runtime import profiles_from_calibration

    engine_set = load_engine_set(args.set)
    profiles = profiles_from_calibration(engine_set)
    members = {m.path: m for m in engine_set.members}
    runners = [OrtRunner(members[p.name].artifact.onnx_path, threads=2, spinning=False) for p in profiles]
    for r in runners:
        r.activate()
    shape = members[profiles[0].name].artifact.input_shape()
    feed = {"pixel_values": np.random.default_rng(0).normal(size=shape).astype(np.float32)}
    cap = cv2.VideoCapture(args.clip)
    smalls = []
    while len(smalls) < 300:
        ok, bgr = cap.read()
        if not ok:
            break
        smalls.append(downscale_gray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    cap.release()
    if len(smalls) < 2:
        raise SystemExit(f"cannot read frames from {args.clip}")
    order = list(range(len(runners)))
    rng = random.Random(0)
    stop, hogs, frames = mp.Event(), [], []
    for r in runners:  # warm-up
        r.infer(feed)
    try:
        for i in range(args.frames):
            if i == args.step:
                hogs = [mp.Process(target=_hog, args=(stop,), daemon=True) for _ in range(args.hogs)]
                for h in hogs:
                    h.start()
                time.sleep(0.2)
            rng.shuffle(order)
            lat = [0.0] * len(runners)
            for k in order:
                t0 = time.perf_counter()
                runners[k].infer(feed)
                lat[k] = round((time.perf_counter() - t0) * 1e3, 4)
            j = i % (len(smalls) - 1)
            frames.append({"content": round(frame_change(smalls[j], smalls[j + 1]), 6), "latency_ms": lat})
    finally:
        stop.set()
        for h in hogs:
            h.join()
    trace = {
        "description": "measured ONNX Runtime latency of every member per frame; CPU load step from load_step_frame on",
        "set": str(args.set), "model": "models/scene_seg", "load_step_frame": args.step, "hogs": args.hogs,
        "profiles": [{"name": p.name, "budget": p.budget, "p50_ms": p.p50_ms, "p95_ms": p.p95_ms} for p in profiles],
        "target_ms": round(profiles[0].p50_ms * 1.25, 3),
        "frames": frames,
    }
    Path(args.out).write_text(json.dumps(trace, indent=0) + "\n")
    before = np.median([f["latency_ms"][0] for f in frames[:args.step]])
    after = np.median([f["latency_ms"][0] for f in frames[args.step:]])
    print(f"{args.out}: {len(frames)} frames; {profiles[0].name} median {before:.2f} ms before the step, {after:.2f} after")


if __name__ == "__main__":
    main()
