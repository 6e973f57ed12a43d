#!/usr/bin/env python
"""Deadline scheduling on this machine: a real latency trace with a CPU load step, replayed for
every policy against the hindsight oracle, then a live run of the Runtime under the same load.

1. An engine set of the reference segmenter (tome, budgets 1.0/0.75/0.5/0.35) is exported and
   calibrated (reused from --work when present).
2. Trace: for each of --frames frames, every engine runs once on that frame (shuffled order) and
   its latency is recorded; a second process spins on one core for the middle third of the frames.
   The trace therefore says what each engine *would* have taken at every frame, which is what the
   oracle needs: per frame, the largest budget whose latency met the target.
3. Replay: each policy chooses frame by frame on the trace (it sees only the past), through
   edgeprune.runtime.simulate; misses and mean budget vs the oracle's.
4. Live: the Runtime with the deadline policy on the same frames and load schedule; misses, mean
   budget and the scheduler's own time per frame (content signal + choose + observe).

    python scripts/bench_runtime.py --work out/runtime_bench [--frames 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (1.0, 0.75, 0.5, 0.35)


def spin(stop) -> None:
    """The load: one process busy on one core until told to stop."""
    x = 0
    while not stop.is_set():
        for _ in range(10000):
            x += 1


class LoadStep:
    """Starts the busy process at frame ``start`` and stops it at ``end``."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.stop = mp.Event()
        self.proc = None

    def at(self, frame: int) -> None:
        if frame == self.start:
            self.stop.clear()
            self.proc = mp.Process(target=spin, args=(self.stop,), daemon=True)
            self.proc.start()
            time.sleep(0.05)
        elif frame == self.end:
            self.close()

    def close(self) -> None:
        if self.proc is not None:
            self.stop.set()
            self.proc.join(timeout=5)
            self.proc = None


def engine_set(work: Path, threads: int, model_dir: Path = REPO / "models" / "scene_seg"):
    from edgeprune.core.progress import messages
    from edgeprune.train.engine_sets import reference_engine_set

    return reference_engine_set(work, threads, model_dir, BUDGETS, progress=messages(lambda m: print(m, flush=True)))


def camvid_frames(n: int) -> list[np.ndarray]:
    """The CamVid test frames in sequence order, cycled to ``n`` frames (real driving scenes)."""
    from edgeprune.data import camvid

    images, _, names = camvid.load_split("test")
    order = [i for idx in camvid.sequences(names).values() for i in idx]
    return [images[order[i % len(order)]] for i in range(n)]


def clip(n: int, size: int) -> list[np.ndarray]:
    from edgeprune.data import SceneConfig, make_clip

    frames, _ = make_clip(7, min(n, 200), SceneConfig(height=size, width=size))
    return [frames[i % len(frames)] for i in range(n)]


def record_trace(engines, frames: list[np.ndarray], threads: int, load: LoadStep) -> np.ndarray:
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.imaging.evaluation import normalize

    members = sorted(engines.members, key=lambda m: -m.budget)
    info = members[0].artifact.manifest["model"]["input"]
    runners = [OrtRunner(m.artifact.onnx_path, threads=threads, spinning=False) for m in members]  # as the Runtime runs them
    for r in runners:
        r.activate()
    ms = np.zeros((len(frames), len(members)))
    order = list(range(len(members)))
    shuffle = random.Random(0)
    try:
        for f, frame in enumerate(frames):
            load.at(f)
            feed = {"pixel_values": normalize(frame[None], info["mean"], info["std"])}
            shuffle.shuffle(order)
            for e in order:
                t0 = time.perf_counter()
                runners[e].run_raw(feed)
                ms[f, e] = (time.perf_counter() - t0) * 1e3
    finally:
        load.close()
        for r in runners:
            r.deactivate()
    return ms


def live_run(engines, frames, target_ms: float, threads: int, load: LoadStep) -> dict:
    from edgeprune.runtime import Runtime

    results = []
    with Runtime(engines, target_ms=target_ms, policy="deadline", threads=threads) as rt:
        for _ in range(20):  # warm the sessions up outside the record
            rt.infer(frames[0], stream="warmup")
        try:
            for f, frame in enumerate(frames):
                load.at(f)
                results.append(rt.infer(frame))
        finally:
            load.close()
    engine = np.array([r.engine_ms for r in results])
    return {
        "frames": len(results),
        "miss_rate": float(np.mean(engine > target_ms)),
        "miss_rate_total": float(np.mean([not r.deadline_met for r in results])),
        "mean_budget": float(np.mean([r.budget for r in results])),
        "scheduler_ms_mean": float(np.mean([r.scheduler_ms for r in results])),
        "scheduler_ms_p99": float(np.percentile([r.scheduler_ms for r in results], 99)),
        "budgets": [r.budget for r in results],
        "engine_ms": engine.round(3).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    from edgeprune.runtime import Trace, make_policy, profiles_from_calibration, simulate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("out/runtime_bench"))
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target-ms", type=float, default=None,
                    help="default: replay at 50/70/90%% of the way from the fastest to the slowest engine's "
                         "p50 in the recorded trace, live at 70%%")
    ap.add_argument("--data", choices=("scenes", "camvid"), default="scenes",
                    help="frames: a generated clip with the scenes model, or the CamVid test sequences with the CamVid model")
    ap.add_argument("--model", type=Path, help="segmenter folder (default: models/scene_seg or models/camvid_seg)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or REPO / "models" / ("camvid_seg" if args.data == "camvid" else "scene_seg")

    engines = engine_set(args.work, args.threads, model_dir)
    profiles = profiles_from_calibration(engines)
    size = engines.members[0].artifact.input_shape()[-1]
    frames = camvid_frames(args.frames) if args.data == "camvid" else clip(args.frames, size)
    third = args.frames // 3
    print("calibrated p50 ms: " + ", ".join(f"{p.name} {p.p50_ms:.2f}" for p in profiles), flush=True)

    print(f"recording the trace: {args.frames} frames x {len(profiles)} engines, load on frames {third}..{2 * third} ...", flush=True)
    ms = record_trace(engines, frames, args.threads, LoadStep(third, 2 * third))
    trace = Trace([p.name for p in profiles], [p.budget for p in profiles], ms)
    quiet, loaded = ms[:third].mean(0), ms[third:2 * third].mean(0)
    print("mean ms quiet / under load: " + ", ".join(f"{p.name} {q:.2f}/{w:.2f}" for p, q, w in zip(profiles, quiet, loaded)))
    # This machine's speed drifts by 10-20% within minutes (shared host), so the target range comes
    # from the p50s of this very trace (all frames, load included), not from the calibration.
    p50 = np.median(ms, axis=0)
    slow, fast = float(p50[0]), float(p50[-1])
    target = args.target_ms or fast + 0.7 * (slow - fast)  # the live run's
    print("trace p50 ms: " + ", ".join(f"{p.name} {v:.2f}" for p, v in zip(profiles, p50)) + f"; live target {target:.2f} ms")

    positions = [None] if args.target_ms else [0.5, 0.7, 0.9]
    rows = {}
    print("\nreplay; oracle = per frame, in hindsight (knows every frame's jitter); window = one engine per "
          "50 frames, in hindsight, <= 2% misses in each")
    print(f"{'target':>12s} {'policy':10s} {'misses':>7s} {'unavoid':>7s} {'budget':>7s} {'oracle':>7s} {'ratio':>6s} "
          f"{'window':>7s} {'ratio':>6s} {'switch':>6s} {'us/frm':>6s}")
    for pos in positions:
        t = args.target_ms or fast + pos * (slow - fast)
        label = f"{t:.2f}" + (f" ({pos:.1f})" if pos is not None else "")
        for name in ("fixed", "deadline", "combined"):
            policy = make_policy(name, profiles, t, **({"index": len(profiles) - 1} if name == "fixed" else {}))
            r = simulate(policy, trace, args.frames, t)
            keys = ("miss_rate", "unavoidable_misses", "mean_budget", "oracle_mean_budget", "budget_ratio",
                    "window_oracle_mean_budget", "window_ratio", "switches", "overhead_us")
            rows[f"{label} {name}"] = {"target_ms": t, "policy": name, **{k: getattr(r, k) for k in keys}}
            print(f"{label:>12s} {name:10s} {r.miss_rate:7.2%} {r.unavoidable_misses / args.frames:7.2%} {r.mean_budget:7.3f} "
                  f"{r.oracle_mean_budget:7.3f} {r.budget_ratio:6.2f} {r.window_oracle_mean_budget:7.3f} {r.window_ratio:6.2f} "
                  f"{r.switches:6d} {r.overhead_us:6.1f}")

    print("\nlive Runtime (deadline policy), same frames and load step ...", flush=True)
    live = live_run(engines, frames, target, args.threads, LoadStep(third, 2 * third))
    print(f"live: misses {live['miss_rate']:.2%} (engine time), {live['miss_rate_total']:.2%} (whole frame); "
          f"mean budget {live['mean_budget']:.3f}; scheduler {live['scheduler_ms_mean'] * 1e3:.0f} us/frame mean, "
          f"{live['scheduler_ms_p99'] * 1e3:.0f} us p99")
    deadline = [r for r in rows.values() if r["policy"] == "deadline"]
    met = [r for r in deadline if r["miss_rate"] <= 0.02 and r["budget_ratio"] >= 0.8]
    ok = bool(met) and live["scheduler_ms_mean"] <= 0.2
    print(f"acceptance (replay at some target: misses <= 2% and budget >= 80% of the per-frame oracle; "
          f"scheduler <= 0.2 ms): {'PASS' if ok else 'FAIL'}")
    unavoidable = min(r["unavoidable_misses"] for r in deadline) / args.frames
    if unavoidable > 0.01:
        print(f"  note: even the fastest engine missed on {unavoidable:.1%}+ of frames at every target (latency spikes of this machine)")
    out = args.work / "results.json"
    out.write_text(json.dumps({"target_ms": target, "profiles": [p.__dict__ for p in profiles], "replay": rows,
                               "live": live, "trace_ms": ms.round(3).tolist()}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
