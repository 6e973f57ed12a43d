"""Per-frame engine choice: which budget (engine) runs the next frame.

The runtime holds K engines sorted by budget, largest first (fastest last). A policy sees a cheap
:class:`FrameContext` before the frame runs, returns a :class:`Decision`, and is told the measured
latency afterwards, so it can track drift (CPU contention, thermal throttling) online. Everything
here is pure Python on purpose: the scheduler runs every frame and must cost microseconds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgeprune.core.errors import EdgepruneError


@dataclass(frozen=True)
class EngineProfile:
    """Offline calibration of one engine: its budget (MACs ratio) and latency percentiles."""

    name: str
    budget: float
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True, slots=True)
class Decision:
    """Which engine runs this frame, the latency the policy expects, and why (for logs)."""

    index: int
    budget: float
    predicted_ms: float
    reason: str


@dataclass(frozen=True, slots=True)
class FrameContext:
    """What is known before the engine runs: the frame index, an optional content signal in
    [0, 1] (change/complexity, see :func:`frame_change`) and an optional
    per-frame deadline that overrides the policy's target."""

    frame: int
    content: float | None = None
    deadline_ms: float | None = None


def validate_profiles(profiles: Sequence[EngineProfile]) -> tuple[EngineProfile, ...]:
    """Profiles must be non-empty, budgets strictly decreasing (fastest last), latencies positive."""
    profiles = tuple(profiles)
    if not profiles:
        raise EdgepruneError("scheduler: no engine profiles given")
    for p in profiles:
        if not (p.p50_ms > 0 and p.p95_ms >= p.p50_ms and p.budget > 0):
            raise EdgepruneError(f"scheduler: engine {p.name!r} needs budget > 0 and 0 < p50_ms <= p95_ms")
    budgets = [p.budget for p in profiles]
    if any(a <= b for a, b in zip(budgets, budgets[1:])):
        raise EdgepruneError(f"scheduler: profiles must be sorted by budget, largest first; got {budgets}")
    return profiles


class Policy(ABC):
    """Chooses an engine per frame; learns from measured latencies through :meth:`observe`."""

    def __init__(self, profiles: Sequence[EngineProfile]):
        self.profiles = validate_profiles(profiles)

    @abstractmethod
    def choose(self, frame_ctx: FrameContext) -> Decision: ...

    def observe(self, index: int, latency_ms: float) -> None:
        """Measured latency of the engine that ran; stateless policies ignore it."""

    def reset(self) -> None:
        """Forget everything learnt online (new session, new device)."""


class FixedPolicy(Policy):
    """Always the same engine: the baseline every adaptive policy is compared against."""

    def __init__(self, profiles: Sequence[EngineProfile], index: int = 0):
        super().__init__(profiles)
        if not 0 <= index < len(self.profiles):
            raise EdgepruneError(f"scheduler: fixed engine index {index} out of range 0..{len(self.profiles) - 1}")
        p = self.profiles[index]
        self._decision = Decision(index, p.budget, p.p50_ms, "fixed")

    def choose(self, frame_ctx: FrameContext) -> Decision:
        return self._decision


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class DeadlinePolicy(Policy):
    """Largest budget whose predicted latency meets the deadline, learnt online.

    Prediction for engine i is ``p50_i * scale``: one multiplicative correction shared by all
    engines, because contention and throttling slow every engine alike, so it is learnt from
    whichever engine ran. ``scale`` is an EWMA of measured/p50 ratios; a level shift (the last
    ``shift_frames`` residuals all outside the band) resets it to their median at once instead of
    waiting for the EWMA, which is what keeps misses low after a load step. The safety margin is the
    ``margin_quantile`` of the last ``window`` residuals (measured / predicted), seeded from the
    calibrated p95/p50 until data arrives. Engine i fits when
    ``p50_i * scale * (1 + margin) + safety_ms <= deadline``. Down-switches are immediate (deadline
    first); up-switches wait until a bigger engine has fitted ``hysteresis_frames`` frames in a row.
    If nothing fits, the fastest engine runs and the reason says "unreachable". O(K + window) per
    frame, a few microseconds.
    """

    def __init__(self, profiles: Sequence[EngineProfile], target_ms: float, alpha: float = 0.1,
                 margin_quantile: float = 0.95, window: int = 50, hysteresis_frames: int = 5,
                 safety_ms: float = 0.0, shift_frames: int = 3):
        super().__init__(profiles)
        if not target_ms > 0:
            raise EdgepruneError(f"scheduler: target_ms must be > 0, got {target_ms}")
        if not (0 < alpha <= 1 and 0 < margin_quantile < 1 and window >= 2 and hysteresis_frames >= 0
                and safety_ms >= 0 and shift_frames >= 1):
            raise EdgepruneError("scheduler: need 0 < alpha <= 1, 0 < margin_quantile < 1, window >= 2, "
                                 "hysteresis_frames >= 0, safety_ms >= 0, shift_frames >= 1")
        self.target_ms, self.alpha, self.q = float(target_ms), alpha, margin_quantile
        self.window, self.hysteresis_frames, self.safety_ms, self.shift_frames = window, hysteresis_frames, safety_ms, shift_frames
        self._p50 = [p.p50_ms for p in self.profiles]
        self._prior_margin = max(p.p95_ms / p.p50_ms for p in self.profiles) - 1.0
        self.reset()

    def reset(self) -> None:
        self.scale = 1.0
        self.margin = self._prior_margin
        self._resid: deque[float] = deque(maxlen=self.window)
        self._recent: deque[float] = deque(maxlen=self.shift_frames)  # last raw ratios, for shifts
        self.current: int | None = None
        self._streak = 0
        self._streak_best = 0

    def allowed(self, deadline_ms: float) -> int:
        """Index of the largest-budget engine that fits now, or -1 when none does."""
        limit = (deadline_ms - self.safety_ms) / (self.scale * (1.0 + self.margin))
        for i, p50 in enumerate(self._p50):
            if p50 <= limit:
                return i
        return -1

    def choose(self, frame_ctx: FrameContext) -> Decision:
        deadline = self.target_ms if frame_ctx.deadline_ms is None else frame_ctx.deadline_ms
        best = self.allowed(deadline)
        cur = self.current
        if best < 0:
            best, reason = len(self._p50) - 1, "unreachable"
            cur, self._streak = best, 0
        elif cur is None or best > cur:
            reason = "start" if cur is None else "down"
            cur, self._streak = best, 0
        elif best < cur:
            self._streak += 1
            self._streak_best = best if self._streak == 1 else max(self._streak_best, best)
            if self._streak > self.hysteresis_frames - 1:
                cur, reason, self._streak = self._streak_best, "up", 0
            else:
                reason = "hold"
        else:
            reason, self._streak = "fit", 0
        self.current = cur
        return Decision(cur, self.profiles[cur].budget, self._p50[cur] * self.scale, reason)

    def observe(self, index: int, latency_ms: float) -> None:
        ratio = latency_ms / self._p50[index]
        self._resid.append(ratio / self.scale)
        self._recent.append(ratio)
        band_hi = 1.0 + self.margin
        recent = self._recent
        if len(recent) == self.shift_frames and (
                all(r > band_hi * self.scale for r in recent) or all(r * band_hi < self.scale for r in recent)):
            self.scale = sorted(recent)[len(recent) // 2]
            for _ in recent:  # residuals of the shift itself are not noise; re-express them at the new level
                self._resid.pop()
            self._resid.extend(r / self.scale for r in recent)
            recent.clear()
        else:
            self.scale += self.alpha * (ratio - self.scale)
        if len(self._resid) >= 10:
            self.margin = max(0.0, _quantile(self._resid, self.q) - 1.0)


class ContentPolicy(Policy):
    """Budget from the content signal alone: more tokens for frames that changed or are complex.

    ``content <= low`` gets the smallest budget, ``content >= high`` the largest; in between the
    budget is interpolated linearly and rounded *up* to the next available budget (a changing
    frame should not be starved by rounding). No signal (``None``) means the largest budget: the
    content policy only ever lowers a budget when it has evidence the frame is easy.
    """

    def __init__(self, profiles: Sequence[EngineProfile], low: float = 0.1, high: float = 0.6):
        super().__init__(profiles)
        if not 0 <= low < high:
            raise EdgepruneError(f"scheduler: content thresholds need 0 <= low < high, got low={low} high={high}")
        self.low, self.high = low, high
        self._budgets = [p.budget for p in self.profiles]

    def desired(self, content: float | None) -> int:
        if content is None or content >= self.high:
            return 0
        b = self._budgets
        t = max(0.0, (content - self.low) / (self.high - self.low))
        want = b[-1] + t * (b[0] - b[-1])
        for i in range(len(b) - 1, -1, -1):  # smallest budget >= want
            if b[i] >= want - 1e-12:
                return i
        return 0

    def choose(self, frame_ctx: FrameContext) -> Decision:
        i = self.desired(frame_ctx.content)
        p = self.profiles[i]
        return Decision(i, p.budget, p.p50_ms, "content")


class CombinedPolicy(Policy):
    """Content proposes, deadline disposes: ``final = min(content budget, deadline-allowed budget)``.

    The deadline policy keeps its own state (scale, margin, hysteresis) about the largest budget
    that is safe; the content policy can only lower the budget below that on easy frames, never
    raise it past the deadline. Measured latencies feed the deadline policy whichever engine ran,
    since its scale is per-engine normalised.
    """

    def __init__(self, deadline: DeadlinePolicy, content: ContentPolicy):
        super().__init__(deadline.profiles)
        if [p.budget for p in content.profiles] != [p.budget for p in deadline.profiles]:
            raise EdgepruneError("scheduler: combined policy needs the same engines for content and deadline")
        self.deadline, self.content = deadline, content

    def choose(self, frame_ctx: FrameContext) -> Decision:
        d = self.deadline.choose(frame_ctx)
        c = self.content.desired(frame_ctx.content)
        if c <= d.index:
            return d
        return Decision(c, self.profiles[c].budget, self.deadline._p50[c] * self.deadline.scale, "content")

    def observe(self, index: int, latency_ms: float) -> None:
        self.deadline.observe(index, latency_ms)

    def reset(self) -> None:
        self.deadline.reset()
        self.content.reset()


def _combined(profiles: Sequence[EngineProfile], target_ms: float, low: float = 0.1, high: float = 0.6,
              **deadline_kw: Any) -> CombinedPolicy:
    return CombinedPolicy(DeadlinePolicy(profiles, target_ms, **deadline_kw), ContentPolicy(profiles, low, high))


POLICIES = {
    "fixed": lambda profiles, target_ms, **kw: FixedPolicy(profiles, **kw),
    "deadline": DeadlinePolicy,
    "content": lambda profiles, target_ms, **kw: ContentPolicy(profiles, **kw),
    "combined": _combined,
}


def make_policy(name: str, profiles: Sequence[EngineProfile], target_ms: float, **kw: Any) -> Policy:
    """Build a policy by name; every bad input is a one-line :class:`EdgepruneError`."""
    if name not in POLICIES:
        raise EdgepruneError(f"scheduler: unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if not (isinstance(target_ms, (int, float)) and target_ms > 0):
        raise EdgepruneError(f"scheduler: target_ms must be > 0, got {target_ms}")
    try:
        return POLICIES[name](profiles, target_ms, **kw)
    except TypeError as exc:
        raise EdgepruneError(f"scheduler: bad parameter for policy {name!r}: {exc}") from None


def _sample(f: np.ndarray, size: int) -> np.ndarray:
    """``2*size x 2*size`` pixels spread over the frame: strided views when the frame is big enough."""
    h, w, m = f.shape[0], f.shape[1], 2 * size
    if h >= m and w >= m:
        sh, sw = h // m, w // m
        return f[(h - sh * m) // 2::sh][:m, (w - sw * m) // 2::sw][:, :m]
    rows = ((np.arange(m) + 0.5) * (h / m)).astype(np.intp)
    cols = ((np.arange(m) + 0.5) * (w / m)).astype(np.intp)
    return f[rows][:, cols]


def downscale_gray(frame_rgb_uint8: np.ndarray, size: int = 32) -> np.ndarray:
    """A ``size x size`` uint8 luma thumbnail (strided sampling + 2x2 mean) for change detection.

    Only ``(2*size)^2`` pixels are read whatever the frame size, so it costs ~20 us even for 1080p:
    cheap enough to run before every frame. Luma is the integer (R + 2G + B) / 4.
    """
    f = np.asarray(frame_rgb_uint8)
    if f.ndim not in (2, 3) or f.shape[0] < 1 or f.shape[1] < 1 or (f.ndim == 3 and f.shape[2] < 1):
        raise EdgepruneError(f"downscale_gray: expected an HxW or HxWxC frame, got shape {f.shape}")
    s = _sample(f, size)
    if s.ndim == 3 and s.shape[2] >= 3:
        g = s[..., 1].astype(np.uint16) * 2
        g += s[..., 0]
        g += s[..., 2]
    else:
        g = (s if s.ndim == 2 else s[..., 0]).astype(np.uint16) * 4
    g = g.reshape(size, 2, size, 2)
    out = g[:, 0, :, 0] + g[:, 1, :, 0]
    out += g[:, 0, :, 1]
    out += g[:, 1, :, 1]
    return (out >> 4).astype(np.uint8)


def frame_complexity(small: np.ndarray) -> float:
    """Spatial detail of a thumbnail in [0, 1]: the mean absolute difference between neighbouring
    pixels (both directions), scaled so a hard checkerboard gives 1. Busy, textured frames need
    more tokens than flat ones to keep their segmentation."""
    g = small.astype(np.int16)
    detail = np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()
    return float(min(1.0, detail / 510.0))


def frame_change(prev_small: np.ndarray | None, cur_small: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, in [0, 1]; 1.0 when there is no previous frame."""
    if prev_small is None:
        return 1.0
    if prev_small.shape != cur_small.shape:
        raise EdgepruneError(f"frame_change: thumbnails differ in shape {prev_small.shape} vs {cur_small.shape}")
    diff = np.abs(prev_small.astype(np.int16) - cur_small.astype(np.int16))
    return float(diff.mean()) / 255.0
