#!/usr/bin/env python
"""Replay every scheduler policy on a synthetic latency trace and compare with the hindsight oracle.

    python scripts/sim_scheduler.py                          # built-in calibration of the reference segmenter
    python scripts/sim_scheduler.py --set out/engines --target 6.0 --load-step 300:700:2.0
    python scripts/sim_scheduler.py --trace measured.csv     # a real per-frame, per-engine trace

The calibration comes from SET/set.json ("members": [{"budget", "path"}], "calibration"."members":
{path: {"p50_ms", "p95_ms"}}) or the defaults below, measured on the development machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.runtime import POLICIES, EngineProfile, load_trace, make_policy, simulate, trace_from_profiles

# Reference segmenter on this machine: budget -> p50 ms (p95 ~ +15 %).
DEFAULTS = [(1.0, 6.8), (0.8, 6.1), (0.6, 5.0), (0.5, 4.3), (0.4, 3.6)]


def profiles_from_set(root: Path) -> list[EngineProfile]:
    path = root / "set.json"
    try:
        data = json.loads(path.read_text())
        cal = data["calibration"]["members"]
        profs = [EngineProfile(m["path"], float(m["budget"]), float(cal[m["path"]]["p50_ms"]), float(cal[m["path"]]["p95_ms"]))
                 for m in data["members"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgepruneError(f"{path}: no usable calibration ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    return sorted(profs, key=lambda p: -p.budget)


def content_trace(n: int, seed: int) -> list[float]:
    """Mostly calm scene with bursts of motion: what a robot camera's change signal looks like."""
    rng = np.random.default_rng(seed + 1)
    base = np.clip(0.05 + 0.03 * rng.standard_normal(n), 0, 1)
    for start in rng.integers(0, n, max(1, n // 100)):
        base[start:start + rng.integers(10, 40)] += rng.uniform(0.4, 0.8)
    return np.clip(base, 0, 1).tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, help="engine set folder with set.json calibration")
    ap.add_argument("--trace", type=Path, help="measured trace (.json/.csv) instead of a synthetic one")
    ap.add_argument("--target", type=float, default=7.0, help="per-frame deadline in ms (default 7.0)")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load-step", default="middle:1.6", help="START:END:FACTOR, 'middle:FACTOR' or 'none'")
    ap.add_argument("--drift", type=float, default=0.0, help="linear slowdown reached at the end (thermal)")
    args = ap.parse_args()
    try:
        if args.trace:
            trace = load_trace(args.trace)
            ms = trace.ms
            profiles = [EngineProfile(n, b, float(np.median(ms[:, i])), float(np.quantile(ms[:, i], 0.95)))
                        for i, (n, b) in enumerate(zip(trace.names, trace.budgets))]
            frames = len(trace)
        else:
            profiles = (profiles_from_set(args.set) if args.set else
                        [EngineProfile(f"b{b}", b, p, round(p * 1.15, 2)) for b, p in DEFAULTS])
            frames = args.frames
            parts = args.load_step.split(":")
            if parts == ["none"]:
                steps = []
            elif parts[0] == "middle" and len(parts) == 2:
                steps = [(frames // 3, 2 * frames // 3, float(parts[1]))]
            elif len(parts) == 3:
                steps = [(int(parts[0]), int(parts[1]), float(parts[2]))]
            else:
                raise EdgepruneError(f"--load-step: expected START:END:FACTOR, middle:FACTOR or none, got {args.load_step!r}")
            trace = trace_from_profiles(profiles, frames, args.seed, steps, noise=None, drift=args.drift)
        content = content_trace(frames, args.seed)
        print("engines: " + ", ".join(f"{p.budget:g}@{p.p50_ms:g}ms" for p in profiles)
              + f" | target {args.target} ms | {frames} frames | load {args.load_step} | drift {args.drift}")
        print(f"{'policy':<16}{'miss rate':>10}{'mean budget':>13}{'oracle':>8}{'ratio':>7}{'switches':>10}{'us/frame':>10}")
        runs = [(f"fixed[{i}]", "fixed", dict(index=i)) for i in (0, len(profiles) - 1)]
        runs += [(name, name, {}) for name in POLICIES if name != "fixed"]
        for label, name, kw in runs:
            res = simulate(make_policy(name, profiles, args.target, **kw), trace, frames, args.target, content)
            print(f"{label:<16}{res.miss_rate:>10.3%}{res.mean_budget:>13.3f}{res.oracle_mean_budget:>8.3f}"
                  f"{res.budget_ratio:>7.2f}{res.switches:>10d}{res.overhead_us:>10.1f}")
        print(f"(frames where even the fastest engine missed: {res.unavoidable_misses})")
    except EdgepruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
