"""Latency-calibrated planning: a model of this machine's per-block cost, and the plan search on it.

MACs say little about batch-1 latency on a CPU: small matmuls run far below peak and every
reduction point has a fixed cost. :func:`edgeprune.exporting.block_latency.calibrate` measures the
curves once (it exports blocks, so it needs the export extra); :class:`LatencyModel` interpolates
them to predict a plan's latency ratio, and :func:`search_plan` picks the reduction schedule that
retains the most information within a target. Pure Python and numpy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Optional, Sequence

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.spec import ViTSpec
from edgeprune.plan import methods
from edgeprune.plan.token_counts import round_sizes
from edgeprune.plan.token_plan import TokenPlan, build_plan, min_tokens

CALIBRATION_FORMAT = 1
BLOCK_DIMS = ("embed_dim", "num_heads", "head_dim", "mlp_hidden", "num_prefix", "num_patches")


def _interp(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Piecewise-linear through the points, extended linearly past both ends, never negative."""
    if len(xs) == 1:
        return float(ys[0])
    if xs[0] <= x <= xs[-1]:
        return float(np.interp(x, xs, ys))
    i = 0 if x < xs[0] else -2
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return max(0.0, float(ys[i] + slope * (x - xs[i])))


def _curve(ms: Sequence[float]) -> np.ndarray:
    """Measured medians made non-decreasing, so planning never relies on timing noise that makes
    more tokens look cheaper (the raw points stay in the model and its JSON)."""
    return np.maximum.accumulate(np.asarray(ms, dtype=float))


@dataclass
class LatencyModel:
    """Measured ms per sub-layer vs token count (prefix tokens included; a timed call's median
    divided by the sub-layers it holds) for one block shape, one reduction method and one machine.
    Patch embedding and head are not modelled: they cost the same in every plan, so ratios are
    ratios of the blocks' time and slightly understate the end-to-end ratio."""

    method: str
    dims: dict[str, int]  # BLOCK_DIMS of the spec the curves belong to
    tokens: list[int]  # grid of the attention and MLP curves
    attention_ms: list[float]
    mlp_ms: list[float]
    reducer_tokens: list[int]  # tokens entering one reduction round
    reducer_ms: list[float]
    info: dict[str, Any] = field(default_factory=dict)  # machine, libraries, cache key, timing
    # Attention sub-layer for the prefix queries only (the last block under prefix_only_last), on
    # the same token grid; empty when the model's head reads every token.
    prefix_attention_ms: list[float] = field(default_factory=list)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "head_dim" not in self.dims and {"embed_dim", "num_heads"} <= set(self.dims):
            # Curves measured before head widths were recorded: those models all split evenly.
            self.dims = dict(self.dims, head_dim=self.dims["embed_dim"] // self.dims["num_heads"])
        n = len(self.tokens)
        ok = n > 0 and len(self.attention_ms) == len(self.mlp_ms) == n and len(self.reducer_tokens) == len(self.reducer_ms)
        ok = ok and (self.method == "none" or len(self.reducer_ms) > 0) and len(self.prefix_attention_ms) in (0, n)
        ok = ok and bool(np.all(np.diff(self.tokens) > 0) and np.all(np.diff(self.reducer_tokens) > 0))
        timings = [*self.attention_ms, *self.mlp_ms, *self.reducer_ms, *self.prefix_attention_ms]
        if not (ok and all(np.isfinite(v) and v > 0 for v in timings)):
            raise EdgepruneError("malformed latency model: curve lengths, token grids or timings")
        self._xs, self._rx = np.asarray(self.tokens, float), np.asarray(self.reducer_tokens, float)
        self._att, self._mlp, self._red = _curve(self.attention_ms), _curve(self.mlp_ms), _curve(self.reducer_ms)
        self._pre = _curve(self.prefix_attention_ms) if self.prefix_attention_ms else None

    def attention(self, n: float) -> float:
        return _interp(n, self._xs, self._att)

    def mlp(self, n: float) -> float:
        return _interp(n, self._xs, self._mlp)

    def reducer(self, n_in: float) -> float:
        """One reduction round (about half the patch tokens go) entering with ``n_in`` tokens."""
        return _interp(n_in, self._rx, self._red) if len(self._rx) else 0.0

    def reduction_ms(self, n_in: int, n_out: int) -> float:
        """A reduction point; ToMe and gsp take several halving rounds for big steps, as they run."""
        p = self.dims["num_prefix"]
        if n_out >= n_in:
            return 0.0
        term = methods.get(self.method).latency
        if term == "none":
            return 0.0
        if term == "one-ranking":  # one ranking, whatever the step
            return self.reducer(n_in)
        total, n = 0.0, n_in - p
        for r in round_sizes(n, n_out - p):
            total += self.reducer(p + n)
            n -= r
        return total

    def block_ms(self, n_in_total: int, n_out_total: int) -> float:
        """Attention at ``n_in_total`` tokens, the reducer if tokens drop, MLP at ``n_out_total``."""
        key = (n_in_total, n_out_total)
        if key not in self._memo:
            self._memo[key] = self.attention(n_in_total) + self.reduction_ms(n_in_total, n_out_total) + self.mlp(n_out_total)
        return self._memo[key]

    def plan_ms(self, plan: TokenPlan) -> float:
        """Predicted ms of the plan's blocks (embedding and head excluded, see the class)."""
        if {k: getattr(plan.spec, k) for k in BLOCK_DIMS} != self.dims:
            raise EdgepruneError("the latency model was calibrated for a different model configuration")
        if plan.method != self.method and plan.reduction_points:
            raise EdgepruneError(f"the latency model was calibrated for '{self.method}', the plan uses '{plan.method}'")
        p = plan.spec.num_prefix
        blocks = [self.block_ms(p + plan.tokens_in(i), p + k) for i, k in enumerate(plan.keep)]
        if plan.prefix_only_last:
            if self._pre is None:
                raise EdgepruneError("the latency model has no prefix-only attention curve; calibrate again (refresh)")
            blocks[-1] = _interp(p + plan.tokens_in(plan.spec.depth - 1), self._xs, self._pre) + self.mlp(p)
        return sum(blocks)

    def ratio(self, plan: TokenPlan) -> float:
        """Predicted latency of ``plan`` over the unreduced model's: ``build_plan``'s latency_model."""
        n = plan.spec.num_tokens
        return self.plan_ms(plan) / (plan.spec.depth * self.block_ms(n, n))

    __call__ = ratio

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyModel":
        if d.get("format") != CALIBRATION_FORMAT:
            raise EdgepruneError(f"unsupported latency model format {d.get('format')!r}")
        lists = {k: [(int if k.endswith("tokens") else float)(v) for v in d.get(k, [])]
                 for k in ("tokens", "attention_ms", "mlp_ms", "reducer_tokens", "reducer_ms", "prefix_attention_ms")}
        return cls(method=str(d["method"]), dims={k: int(v) for k, v in d["dims"].items() if k in BLOCK_DIMS},
                   info=dict(d.get("info", {})), **lists)


def with_prediction(plan: TokenPlan, latency_model: LatencyModel, **extra: Any) -> TokenPlan:
    """``plan`` with its predicted latency ratio recorded in ``target`` (for the manifest)."""
    target = dict(plan.target, predicted_latency_ratio=round(latency_model.ratio(plan), 4),
                  latency_model=latency_model.info.get("key", "")[:16], **extra)
    return dataclasses.replace(plan, target=target)


def retained_information(plan: TokenPlan) -> float:
    """Sum over blocks of log(tokens the block's MLP sees): the planner's accuracy proxy.

    MACs alone rank one late cut to a handful of tokens above a moderate early one (they process
    about as many token-blocks), yet a block that sees 6 tokens has lost most of the image; the log
    makes each halving cost the same wherever it happens and punishes near-empty blocks."""
    p = plan.spec.num_prefix
    return float(sum(np.log(p + k) for k in plan.keep))


def search_plan(spec: ViTSpec, method: str, latency: float, latency_model: LatencyModel, *,
                max_points: int = 3, prop_attn: Optional[bool] = None, options: Optional[dict[str, Any]] = None,
                prefix_only_last: bool = False, tile: int = 1) -> TokenPlan:
    """The plan within ``latency`` (predicted ratio) that retains the most information (see
    :func:`retained_information`; fewer reduction points on ties), over every set of 1..``max_points`` reduction points among
    blocks 0..depth-2 plus ToMe's constant schedule, every count rounded to ``tile`` (see
    :mod:`edgeprune.plan.tiles`). Each point costs a fixed reducer time on a
    batch-1 engine, so the best schedule depends on the machine, which is why it is searched."""
    if not isinstance(spec, ViTSpec):
        raise EdgepruneError("search_plan takes a ViTSpec (edgeprune.families.spec_of(model) gives a model's)")
    method = method.lower()
    if method == "none" or method != latency_model.method:
        raise EdgepruneError(f"cannot plan '{method}' with a latency model calibrated for '{latency_model.method}'")
    if not 0 < latency <= 1:
        raise EdgepruneError(f"the latency target must be in (0, 1], got {latency}")
    blocks = range(max(1, spec.depth - 2 if prefix_only_last else spec.depth - 1))
    schedules = [("points", list(c)) for k in range(1, max_points + 1) for c in combinations(blocks, k)]
    schedules.append(("constant", None))
    common = dict(prop_attn=prop_attn, options=options, latency_model=latency_model.ratio, prefix_only_last=prefix_only_last,
                  tile=tile)

    def attempt(schedule: str, pts: Optional[list[int]], **budget: Any) -> Optional[TokenPlan]:
        try:
            return build_plan(spec, method, points=pts, schedule=schedule, **common, **budget)
        except EdgepruneError:  # infeasible for this schedule
            return None

    feasible = [plan for schedule, pts in schedules if (plan := attempt(schedule, pts, latency=latency)) is not None]
    if not feasible:
        floor = [latency_model.ratio(p) for schedule, pts in schedules if (p := attempt(schedule, pts, tokens=min_tokens(method))) is not None]
        raise EdgepruneError(f"no reduction schedule reaches a latency ratio of {latency} with '{method}' on this machine "
                             f"(the smallest achievable is {min(floor, default=1.0):.3f})")
    best = max(feasible, key=lambda p: (retained_information(p), -len(p.reduction_points)))
    return with_prediction(best, latency_model, planner="latency-search", schedules_searched=len(schedules))
