"""The runtime: one engine per token budget, one chosen per frame by a policy.

``Runtime(set, target_ms=..., policy=...)`` loads a calibrated engine set (see
:mod:`edgeprune.artifacts.engine_set`), turns its calibration into :class:`EngineProfile` s for the policy,
and for every frame: computes the cheap content signal, asks the policy for an engine, runs it,
and tells the policy the measured latency. Several threads may call :meth:`Runtime.infer` at once
(one per camera, say): the policy and per-stream state sit behind one lock that is held only for
the microseconds of choosing and observing, never while an engine runs; ONNX Runtime sessions
accept concurrent runs, and OpenVINO runners keep one infer request per thread.

The engine is ONNX Runtime (``provider`` cpu, cuda or tensorrt), OpenVINO (``provider="openvino"`` at
``precision`` on ``device``), ``auto`` (the fastest calibrated one, see
:func:`edgeprune.measure.calibrate.resolve_engine`), or the engines ``edgeprune build`` wrote
(``engines=``). Each engine plans with its own calibration; another engine's is used with a warning
(refused with ``strict_machine``), as another machine's is.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.runtime.policies import (Decision, EngineProfile, FrameContext, Policy, downscale_gray,
                                        frame_change, frame_complexity, make_policy)

INPUT_NAME = "pixel_values"
POOL_SIGNALS = ("complexity", "change", "both", "equal")


@dataclass(frozen=True)
class FrameResult:
    """One frame's outcome: what ran, how long it took, whether the deadline held."""

    frame: int
    stream: Hashable
    engine: str
    budget: float
    outputs: dict[str, np.ndarray]
    engine_ms: float  # the engine run alone
    total_ms: float  # preprocessing + scheduling + engine
    scheduler_ms: float  # content signal + choose + observe
    deadline_met: bool  # total_ms <= the frame's deadline
    decision: Decision

    @cached_property
    def labels(self) -> Optional[np.ndarray]:
        """[H, W] uint8 class ids at the model's input size (segmenters), computed on first use:
        the demo upsamples the logits itself, and an argmax per frame costs ~0.7 ms here."""
        return labels_of(self.outputs.get("logits"))


def labels_of(logits: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Logits [1, K, H, W] -> uint8 class ids [H, W]; None for outputs that are not dense logits."""
    return logits[0].argmax(0).astype(np.uint8) if logits is not None and logits.ndim == 4 else None


def profiles_from_calibration(engine_set: Any, calibration: Optional[dict[str, Any]] = None) -> list[EngineProfile]:
    """The set's calibrated p50/p95 per member (or those of ``calibration``), largest budget first; a
    clear error if uncalibrated."""
    calibration = calibration if calibration is not None else engine_set.calibration
    if not calibration:
        raise EdgepruneError(f"{engine_set.path}: the engine set is not calibrated; run `edgeprune calibrate {engine_set.path}`")
    stats = calibration.get("members", {})
    profiles = []
    for member in sorted(engine_set.members, key=lambda m: -m.budget):
        s = stats.get(member.path)
        if not s:
            raise EdgepruneError(f"{engine_set.path}: calibration lacks member {member.path}; run `edgeprune calibrate` again")
        profiles.append(EngineProfile(member.path, member.budget, float(s["p50_ms"]), max(float(s["p95_ms"]), float(s["p50_ms"]))))
    return profiles


class Runtime:
    """Per-frame budget selection over an engine set (see the module docstring)."""

    def __init__(self, engine_set: Union[str, Path, Any], target_ms: float, policy: Union[str, Policy] = "deadline",
                 *, threads: int = 2, provider: str = "cpu", precision: Optional[str] = None, device: Optional[str] = None,
                 policy_args: Optional[dict[str, Any]] = None, strict_machine: bool = False,
                 engines: Union[str, Path, None] = None) -> None:
        from edgeprune.artifacts.engine_set import calibration_matches, load_engine_set
        from edgeprune.backends.runners import make_runner, runner_label
        from edgeprune.measure.calibrate import calibration_for, resolve_engine

        self.set = load_engine_set(engine_set) if isinstance(engine_set, (str, Path)) else engine_set
        calibration = None
        # The engine the set's ONNX graphs run on, and why (``provider="auto"`` picks one); None with built engines.
        self.engine, self.engine_reason = None, ""
        if engines is not None:
            from edgeprune.engines.build import built_calibration

            if provider != "cpu" or precision is not None or device is not None:
                raise EdgepruneError("--engines runs built engines, whose backend and precision `edgeprune build` fixed; "
                                     "drop --provider, --precision and --device")
            calibration = built_calibration(engines)
            if calibration is None:
                warnings.warn(f"{engines}: the built engines are not calibrated, so the set's ONNX Runtime latencies "
                              f"stand in for theirs; run `edgeprune calibrate {self.set.path} --engines {engines}`",
                              RuntimeWarning, stacklevel=2)
        else:
            self.engine, self.engine_reason = resolve_engine(self.set, provider, precision, device)
            calibration, mismatch = calibration_for(self.set, self.engine)
            if mismatch:  # another engine's latencies: as with another machine's, refuse when strict, else warn
                if strict_machine:
                    raise EdgepruneError(f"{self.set.path}: {mismatch}")
                warnings.warn(f"{self.set.path}: {mismatch}", RuntimeWarning, stacklevel=2)
        self.profiles = profiles_from_calibration(self.set, calibration)
        ok, why = calibration_matches(self.set, calibration)
        if not ok:
            message = f"{self.set.path}: calibrated on another machine ({why}); latency predictions may be off"
            if strict_machine:
                raise EdgepruneError(message + "; run `edgeprune calibrate` here")
            warnings.warn(message + "; recalibrate with `edgeprune calibrate`", RuntimeWarning, stacklevel=2)
        self.target_ms = float(target_ms)
        fastest = self.profiles[-1]
        if self.target_ms < fastest.p50_ms:
            warnings.warn(f"target {self.target_ms:.2f} ms is below the fastest engine's calibrated p50 ({fastest.name}: "
                          f"{fastest.p50_ms:.2f} ms): every frame runs the smallest budget and most will miss; "
                          "lower the frame rate or add a smaller budget", RuntimeWarning, stacklevel=2)
        self.policy = policy if isinstance(policy, Policy) else make_policy(policy, self.profiles, self.target_ms, **dict(policy_args or {}))
        members = {m.path: m for m in self.set.members}
        self._members = [members[p.name] for p in self.profiles]
        first = self._members[0].artifact
        self._input = dict(first.manifest.get("model", {}).get("input") or {})
        self._batch_shape = first.input_shape()
        if engines is None:
            self._runners = [make_runner(m.artifact.onnx_path, self.engine, threads, spinning=False) for m in self._members]
        else:
            from edgeprune.engines.build import load_engines, set_runners

            self._runners = set_runners(load_engines(engines), self._members, threads, spinning=False)
        for runner in self._runners:
            runner.activate()
        # What really runs the engines (ONNX Runtime falls back to the CPU when an accelerator's provider
        # fails to load; OpenVINO runs f32 where the CPU lacks bf16), or the backend of built engines; read once.
        self.provider_name = runner_label(self._runners[0])
        self._lock = threading.Lock()
        self._previous: dict[Hashable, np.ndarray] = {}
        self._frames = 0
        # What a frame costs besides the engine (resize, normalise, signal, scheduling):
        # the policy plans the engine against the deadline minus this, as deadline_met counts it.
        self._overhead_ms = 0.0
        self._closed = False

    @property
    def budgets(self) -> list[float]:
        return [p.budget for p in self.profiles]

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """RGB uint8 [H, W, 3] -> the engine's normalised input [1, 3, h, w] (model input size)."""
        from edgeprune.imaging.evaluation import normalize
        from edgeprune.imaging.images import resize_rgb

        self._check_frame(frame)
        if "mean" not in self._input:
            raise EdgepruneError("this engine set's model records no input normalisation; pass preprocessed arrays to infer_array")
        _, _, h, w = self._batch_shape
        if frame.shape[:2] != (h, w):
            frame = resize_rgb(frame, h, w)
        return normalize(frame[None], self._input["mean"], self._input["std"])

    def infer(self, frame: np.ndarray, stream: Hashable = 0, deadline_ms: Optional[float] = None) -> FrameResult:
        """Run one RGB frame of ``stream`` through the engine the policy picks."""
        start = time.perf_counter()
        pixels = self.preprocess(frame)
        return self._run(pixels, downscale_gray(frame), stream, deadline_ms, start)

    def infer_pool(self, frames: Mapping[Hashable, np.ndarray], pool: float, minimum: float = 0.0,
                   maximum: float = 1.0, signal: str = "complexity") -> dict[Hashable, FrameResult]:
        """One tick of several cameras sharing one budget (EchoingPixels' single pool).

        ``pool`` is the sum of per-frame budgets (MACs ratios) this tick may spend, e.g. 1.5 for
        three cameras at 0.5 on average; each stream gets at least ``minimum``. The pool goes to the
        streams with the most ``signal`` (:func:`edgeprune.runtime.pool.allocate`): ``complexity``
        (spatial detail, :func:`frame_complexity`; busy scenes lose more to token reduction),
        ``change`` (difference from the stream's last frame), ``both`` (their mean) or ``equal``
        (the same weight for all; leftover levels go to the first streams of ``frames``, so rotate
        its order from tick to tick to share them). Each stream
        then runs the member of its allocated budget. Streams run one after another in the caller's
        thread; call it from one thread per tick.
        """
        from edgeprune.runtime.pool import StreamDemand, allocate

        if not frames:
            raise EdgepruneError("infer_pool: no frames given")
        if signal not in POOL_SIGNALS:
            raise EdgepruneError(f"infer_pool: signal must be one of {', '.join(POOL_SIGNALS)}, got {signal!r}")
        start = time.perf_counter()
        smalls = {s: downscale_gray(self._check_frame(f)) for s, f in frames.items()}
        with self._lock:
            change = {s: frame_change(self._previous.get(s), smalls[s]) for s in frames}
        detail = {s: frame_complexity(smalls[s]) for s in frames}
        weight = {"complexity": detail, "change": change, "equal": {s: 1.0 for s in frames},
                  "both": {s: (detail[s] + change[s]) / 2 for s in frames}}[signal]
        demands = [StreamDemand(str(s), weight[s], minimum, maximum) for s in frames]
        shares = allocate(pool, demands, self.budgets)
        allocation_ms = (time.perf_counter() - start) * 1e3
        results = {}
        for s, frame in frames.items():
            index = self.budgets.index(shares[str(s)])
            t0 = time.perf_counter()
            pixels = self.preprocess(frame)
            results[s] = self._run(pixels, smalls[s], s, None, t0, forced=index, extra_ms=allocation_ms / len(frames),
                                   content=change[s])
        return results

    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise EdgepruneError(f"frames must be RGB uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
        return frame

    def infer_array(self, pixels: np.ndarray, stream: Hashable = 0, deadline_ms: Optional[float] = None) -> FrameResult:
        """Run an already preprocessed input [1, C, H, W]; the content signal comes from its first channel."""
        start = time.perf_counter()
        gray = np.ascontiguousarray(pixels[0, 0])
        span = float(gray.max() - gray.min()) or 1.0
        small = downscale_gray(((gray - gray.min()) / span * 255).astype(np.uint8))
        return self._run(pixels.astype(np.float32, copy=False), small, stream, deadline_ms, start)

    def _run(self, pixels: np.ndarray, small: np.ndarray, stream: Hashable, deadline_ms: Optional[float],
             start: float, forced: Optional[int] = None, extra_ms: float = 0.0,
             content: Optional[float] = None) -> FrameResult:
        if self._closed:
            raise EdgepruneError("the runtime is closed")
        t0 = time.perf_counter()
        with self._lock:
            if content is None:
                content = frame_change(self._previous.get(stream), small)
            self._previous[stream] = small
            index = self._frames
            self._frames += 1
            if forced is None:
                budget_ms = (deadline_ms or self.target_ms) - self._overhead_ms
                decision = self.policy.choose(FrameContext(index, content, max(budget_ms, 1e-3)))
            else:
                p = self.profiles[forced]
                decision = Decision(forced, p.budget, p.p50_ms, "pool")
        t1 = time.perf_counter()
        outputs = self._runners[decision.index].infer({INPUT_NAME: pixels})
        t2 = time.perf_counter()
        engine_ms = (t2 - t1) * 1e3
        with self._lock:
            self.policy.observe(decision.index, engine_ms)
            t3 = time.perf_counter()
            total_ms = (t3 - start) * 1e3
            self._overhead_ms += 0.1 * (max(total_ms - engine_ms, 0.0) - self._overhead_ms)
        member = self._members[decision.index]
        return FrameResult(index, stream, member.path, member.budget, outputs, engine_ms, total_ms,
                           ((t1 - t0) + (t3 - t2)) * 1e3 + extra_ms, total_ms <= (deadline_ms or self.target_ms), decision)

    def close(self) -> None:
        if not self._closed:
            for runner in self._runners:
                runner.deactivate()
            self._closed = True

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["POOL_SIGNALS", "FrameResult", "Runtime", "profiles_from_calibration"]
