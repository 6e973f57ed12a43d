"""Deterministic replay of a policy against a latency trace, with the hindsight oracle.

A trace gives, for every frame, the latency *each* engine would have taken then, so the policy's
choices can be scored against an oracle that knows the future: per frame, the largest budget whose
true latency meets the target. Synthetic traces model what drifts on a robot (a process taking a
core, thermal throttling); measured traces load from JSON or CSV.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json
from edgeprune.runtime.policies import Decision, EngineProfile, FrameContext, Policy


@dataclass
class Trace:
    """Per-frame, per-engine latencies: ``ms[frame, engine]``; callable as a ``latency_fn``."""

    names: list[str]
    budgets: list[float]
    ms: np.ndarray

    def __call__(self, frame_index: int, engine_index: int) -> float:
        return float(self.ms[frame_index, engine_index])

    def __len__(self) -> int:
        return int(self.ms.shape[0])


@dataclass
class SimResult:
    """Scores of one replay; ``overhead_us`` is wall-clock and so excluded from equality."""

    decisions: list[Decision]
    latencies: list[float]
    target_ms: float
    misses: int
    miss_rate: float
    unavoidable_misses: int  # frames where even the fastest engine missed: no policy could help
    mean_budget: float
    oracle_mean_budget: float
    budget_ratio: float
    switches: int
    overhead_us: float = field(default=0.0, compare=False)  # mean choose+observe per frame
    # The per-frame oracle also knows each frame's jitter, which nothing causal can; the window
    # oracle knows only each stretch's latency distribution (see window_oracle_budget).
    window_oracle_mean_budget: float = 0.0
    window_ratio: float = 0.0

    @property
    def indices(self) -> list[int]:
        return [d.index for d in self.decisions]


def simulate(policy: Policy, latency_fn: Callable[[int, int], float], frames: int, target_ms: float,
             content: Sequence[float | None] | None = None) -> SimResult:
    """Replay ``frames`` frames: choose, 'run' (look up the trace), observe; then score."""
    if frames < 1 or not target_ms > 0:
        raise EdgepruneError(f"simulate: need frames >= 1 and target_ms > 0, got {frames}, {target_ms}")
    if content is not None and len(content) < frames:
        raise EdgepruneError(f"simulate: content has {len(content)} values for {frames} frames")
    budgets = [p.budget for p in policy.profiles]
    k = len(budgets)
    decisions: list[Decision] = []
    latencies: list[float] = []
    spent = 0.0
    for i in range(frames):
        ctx = FrameContext(i, None if content is None else content[i])
        t0 = time.perf_counter()
        d = policy.choose(ctx)
        t1 = time.perf_counter()
        lat = latency_fn(i, d.index)
        t2 = time.perf_counter()
        policy.observe(d.index, lat)
        spent += (t1 - t0) + (time.perf_counter() - t2)
        decisions.append(d)
        latencies.append(lat)
    oracle = 0.0
    unavoidable = 0
    for i in range(frames):
        row = [latency_fn(i, e) for e in range(k)]
        fit = [budgets[e] for e in range(k) if row[e] <= target_ms]
        oracle += max(fit) if fit else budgets[-1]
        unavoidable += not fit
    misses = sum(lat > target_ms for lat in latencies)
    mean_budget = sum(d.budget for d in decisions) / frames
    oracle_mean = oracle / frames
    switches = sum(a.index != b.index for a, b in zip(decisions, decisions[1:]))
    window_mean = window_oracle_budget(latency_fn, frames, budgets, target_ms)
    return SimResult(decisions, latencies, float(target_ms), misses, misses / frames, unavoidable, mean_budget,
                     oracle_mean, mean_budget / oracle_mean, switches, spent / frames * 1e6,
                     window_mean, mean_budget / window_mean)


def window_oracle_budget(latency_fn: Callable[[int, int], float], frames: int, budgets: Sequence[float],
                         target_ms: float, window: int = 50, miss_budget: float = 0.02) -> float:
    """Mean budget of the hindsight oracle that holds one engine per ``window`` frames: in each
    stretch, the largest budget whose misses there stay within ``miss_budget`` (else the fastest).
    It knows how loaded every stretch was, but not the jitter of single frames."""
    total = 0.0
    for start in range(0, frames, window):
        stop = min(frames, start + window)
        pick = budgets[-1]
        for e, budget in enumerate(budgets):
            missed = sum(latency_fn(i, e) > target_ms for i in range(start, stop))
            if missed <= miss_budget * (stop - start):
                pick = budget
                break
        total += pick * (stop - start)
    return total / frames


def trace_from_profiles(profiles: Sequence[EngineProfile], n: int, seed: int = 0,
                        load_steps: Sequence[tuple[int, int, float]] = (), noise: float | None = 0.05,
                        drift: float = 0.0, common: float = 0.5) -> Trace:
    """Synthetic trace: ``p50 * load(frame) * (1 + drift * frame/n) * lognormal noise``.

    ``load_steps`` are ``(start, end, factor)`` windows (another process takes a core: every engine
    slows by ``factor`` at once). ``drift`` is a linear slowdown reaching ``1 + drift`` at the end
    (thermal throttling). ``noise`` is the lognormal sigma; ``None`` derives it per engine from the
    calibration (``ln(p95/p50) / 1.645``). A fraction ``common`` of the noise variance is shared by
    all engines on a frame (system jitter), the rest is per engine. Deterministic in ``seed``.
    """
    if n < 1:
        raise EdgepruneError(f"trace: need n >= 1 frames, got {n}")
    rng = np.random.default_rng(seed)
    p50 = np.array([p.p50_ms for p in profiles], dtype=float)
    if noise is None:
        sigma = np.array([np.log(p.p95_ms / p.p50_ms) / 1.645 for p in profiles])
    else:
        sigma = np.full(len(profiles), float(noise))
    shared = rng.standard_normal((n, 1))
    own = rng.standard_normal((n, len(profiles)))
    z = np.sqrt(common) * shared + np.sqrt(1.0 - common) * own
    factor = 1.0 + drift * np.arange(n) / n
    for start, end, f in load_steps:
        if not (0 <= start <= end and f > 0):
            raise EdgepruneError(f"trace: bad load step {(start, end, f)}; need 0 <= start <= end, factor > 0")
        factor[start:end] *= f
    ms = p50[None, :] * factor[:, None] * np.exp(sigma[None, :] * z)
    return Trace([p.name for p in profiles], [p.budget for p in profiles], ms)


def save_trace(path: str | Path, trace: Trace) -> None:
    """Write a trace as JSON (``.json``) or CSV (anything else: one column per engine)."""
    path = Path(path)
    if path.suffix == ".json":
        engines = [dict(name=n, budget=b) for n, b in zip(trace.names, trace.budgets)]
        path.write_text(json.dumps(dict(engines=engines, latency_ms=np.round(trace.ms, 6).tolist())))
        return
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame"] + [f"{n}@{b}" for n, b in zip(trace.names, trace.budgets)])
        for i, row in enumerate(trace.ms):
            w.writerow([i] + [f"{v:.6f}" for v in row])


def load_trace(path: str | Path) -> Trace:
    """Read a trace written by :func:`save_trace` (or by hand in the same layout)."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            data = read_json(path)
            names = [e["name"] for e in data["engines"]]
            budgets = [float(e["budget"]) for e in data["engines"]]
            ms = np.asarray(data["latency_ms"], dtype=float)
        else:
            with path.open(newline="") as fh:
                rows = list(csv.reader(fh))
            heads = [h.rpartition("@") for h in rows[0][1:]]
            names, budgets = [h[0] for h in heads], [float(h[2]) for h in heads]
            ms = np.asarray([[float(v) for v in r[1:]] for r in rows[1:]], dtype=float)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise EdgepruneError(f"trace: cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if ms.ndim != 2 or ms.shape[0] < 1 or ms.shape[1] != len(names) or not np.all(ms > 0):
        raise EdgepruneError(f"trace: {path} needs a positive frames x {len(names)} latency table, got shape {ms.shape}")
    return Trace(names, budgets, ms)
