"""Interleaved latency benchmark of artifacts: every round runs each artifact once, in shuffled order,
so machine noise hits all of them alike; speedups are medians of per-round ratios."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from edgeprune.artifacts.artifact import Artifact
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress
from edgeprune.core.timing import interleaved_times


@dataclass
class BenchRow:
    name: str
    path: str
    method: str
    macs: int
    macs_ratio: float
    final_tokens: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # images per second at p50
    speedup: float  # median over rounds of baseline time / this time
    predicted_speedup: float  # from MACs
    realized_vs_predicted: float
    latency_model_speedup: Optional[float]  # what the calibrated latency model predicted, if planned with one
    samples_ms: list[float] = field(default_factory=list, repr=False)


@dataclass
class BenchResult:
    batch: int
    threads: int
    providers: list[str]  # what ran the engines (ONNX Runtime's provider, "OpenVINO CPU f32", ...)
    rounds: int
    baseline: str
    rows: list[BenchRow]
    engines: list[str] = field(default_factory=list)  # per row, what ran it

    def to_dict(self, samples: bool = False) -> dict:
        d = asdict(self)
        if not samples:
            for row in d["rows"]:
                row.pop("samples_ms")
        return d


def pick_baseline(artifacts: Sequence[Artifact], baseline: Optional[str]) -> int:
    if baseline is not None:
        for i, a in enumerate(artifacts):
            if baseline in (str(a.path), a.name):
                return i
        raise EdgepruneError(f"--baseline {baseline} is not among the benchmarked artifacts")
    for i, a in enumerate(artifacts):
        if a.method == "none":
            return i
    return max(range(len(artifacts)), key=lambda i: artifacts[i].macs)


def benchmark(
    artifacts: Sequence[Artifact],
    *,
    batch: int = 1,
    rounds: int = 50,
    warmup: int = 5,
    threads: int = 2,
    provider: Any = "cpu",
    precision: Optional[str] = None,
    device: Optional[str] = None,
    baseline: Optional[str] = None,
    seed: int = 0,
    settle: int = 2,
    progress: Optional[Progress] = None,
    pause: float = 0.05,
    spinning: bool = True,
    runners: Optional[Sequence[Any]] = None,
) -> BenchResult:
    """Time ``artifacts`` interleaved on ``provider`` (an ONNX Runtime provider, or ``openvino`` at ``precision``
    on ``device``; or an :class:`edgeprune.backends.runners.EngineChoice`); ``runners`` (one per artifact, not
    yet active) replace those default runners of their graphs, e.g. the engines ``edgeprune build`` wrote.
    ``progress`` is told ``(rounds done, rounds)``."""
    from edgeprune.backends.runners import make_runner, runner_label

    if not artifacts:
        raise EdgepruneError("nothing to benchmark")
    if rounds < 1 or warmup < 0 or settle < 0 or pause < 0:
        raise EdgepruneError("--rounds must be >= 1, --warmup, --settle and pause >= 0")
    base = pick_baseline(artifacts, baseline)
    if len({tuple(a.input_shape(batch)) for a in artifacts}) > 1:
        raise EdgepruneError("artifacts take different input shapes; benchmark models of one configuration together")
    rng = np.random.default_rng(seed)
    feeds = [{a.manifest["inputs"][0]["name"]: rng.standard_normal(a.input_shape(batch)).astype(np.float32)} for a in artifacts]
    if runners is not None and len(runners) != len(artifacts):
        raise EdgepruneError(f"{len(runners)} runners for {len(artifacts)} artifacts")
    if runners is None:
        runners = [make_runner(a.onnx_path, provider, threads, precision=precision, device=device, spinning=spinning)
                   for a in artifacts]
    active = []
    try:
        for runner in runners:
            active.append(runner.activate())
        labels = [runner_label(runner) for runner in runners]
        # Each session's thread pool keeps spinning for tens of ms after its run and steals the cores
        # from the next session (seen as 2x p50s and per-round ratios all over the place), so every
        # artifact first idles for `pause` seconds, then runs `settle` untimed calls (core.timing).
        calls = [[lambda runner=runner, feed=feed: runner.run_raw(feed)] for runner, feed in zip(runners, feeds)]
        samples = interleaved_times(calls, runs=rounds, warmup=warmup, settle_calls=settle, pause_s=pause,
                                    seed=seed, progress=progress)
        times = np.array([s[0] for s in samples]).T  # [rounds, artifacts]
    finally:
        for runner in active:
            runner.deactivate()

    rows = []
    for i, a in enumerate(artifacts):
        t = times[:, i]
        speedup = float(np.median(times[:, base] / t))
        predicted = artifacts[base].macs / a.macs
        p50 = float(np.percentile(t, 50))
        rows.append(
            BenchRow(
                name=a.name,
                path=str(a.path),
                method=a.method,
                macs=a.macs,
                macs_ratio=a.macs / artifacts[base].macs,
                final_tokens=a.plan.final_tokens,
                p50_ms=p50,
                p90_ms=float(np.percentile(t, 90)),
                p99_ms=float(np.percentile(t, 99)),
                throughput=batch * 1e3 / p50,
                speedup=speedup,
                predicted_speedup=predicted,
                realized_vs_predicted=speedup / predicted,
                latency_model_speedup=_latency_model_speedup(a),
                samples_ms=t.tolist(),
            )
        )
    return BenchResult(batch, threads, sorted(set(labels)), rounds, artifacts[base].name, rows, labels)


def _latency_model_speedup(artifact: Artifact) -> Optional[float]:
    ratio = artifact.manifest["plan"].get("target", {}).get("predicted_latency_ratio")
    return 1.0 / ratio if ratio else None
