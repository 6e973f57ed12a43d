"""Token plans: how many tokens each block keeps, built from what the user asks for.

A plan lists, per block, the number of patch (non-protected) tokens left after that block's
reduction point, which sits between its attention and its MLP. A batch-1 engine pays a fixed cost
per reduction point, so besides ToMe's constant-r schedule a plan can reduce at a few points with
large steps (``points``), each point keeping the same fraction of the tokens it receives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.spec import ViTSpec
from edgeprune.plan import methods
from edgeprune.plan.macs import baseline_macs, plan_macs
from edgeprune.plan.methods import Option
from edgeprune.plan.tiles import MAX_TILE, round_to_tile
from edgeprune.plan.token_counts import center_grid, feasible_center_counts

PLAN_FORMAT = 1


@dataclass(frozen=True)
class TokenPlan:
    method: str
    spec: ViTSpec
    keep: tuple[int, ...]  # patch tokens after each block's reduction point
    prop_attn: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)  # what the user asked for, for the record
    # The last block computes attention and MLP for the prefix tokens only (exact when the head
    # reads only CLS/distillation tokens): its patch tokens are never used again.
    prefix_only_last: bool = False
    # The engine tile the reduction points were rounded to (prefix tokens included), for the record
    # and for the planners that refine this plan; 1 = counts taken as computed.
    tile: int = 1

    def __post_init__(self) -> None:
        if methods.get(self.method).family == "dense" and not self.spec.dense:
            raise EdgepruneError(f"method '{self.method}' is for segmentation models (it restores one token per patch)")
        if len(self.keep) != self.spec.depth:
            raise EdgepruneError(f"plan has {len(self.keep)} blocks, model has {self.spec.depth}")
        prev = self.spec.num_patches
        for i, k in enumerate(self.keep):
            if k > prev:
                raise EdgepruneError(f"plan grows tokens at block {i} ({prev} -> {k})")
            if k < min_tokens(self.method) or (self.method == "none" and k != prev):
                raise EdgepruneError(f"plan keeps {k} tokens at block {i}; method '{self.method}' cannot")
            prev = k
        if self.method == "cluster":
            _check_cluster_plan(self)
        if self.prefix_only_last:
            if not (self.spec.prefix_head and self.spec.num_prefix > 0):
                raise EdgepruneError("prefix_only_last needs a classifier whose head reads only its CLS/prefix tokens")
            last = self.spec.depth - 1
            if self.keep[last] < self.tokens_in(last):
                raise EdgepruneError(f"with prefix_only_last the last block ({last}) keeps only the prefix tokens; do not reduce there")

    def tokens_in(self, block: int) -> int:
        """Patch tokens entering ``block``."""
        return self.spec.num_patches if block == 0 else self.keep[block - 1]

    @property
    def reduction_points(self) -> list[int]:
        return [i for i in range(self.spec.depth) if self.keep[i] < self.tokens_in(i)]

    @property
    def final_tokens(self) -> int:
        return self.keep[-1]

    @property
    def macs(self) -> int:
        return plan_macs(self)

    @property
    def baseline_macs(self) -> int:
        return baseline_macs(self.spec)

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.baseline_macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "method": self.method,
            "spec": self.spec.to_dict(),
            "keep": list(self.keep),
            "prop_attn": self.prop_attn,
            "options": dict(self.options),
            "target": dict(self.target),
            "prefix_only_last": self.prefix_only_last,
            "tile": self.tile,
            "reduction_points": self.reduction_points,
            "macs": self.macs,
            "baseline_macs": self.baseline_macs,
            "macs_ratio": round(self.macs_ratio, 6),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenPlan":
        try:
            if d.get("format") != PLAN_FORMAT:
                raise EdgepruneError(f"unsupported plan format {d.get('format')!r}")
            return cls(
                method=d["method"],
                spec=ViTSpec.from_dict(d["spec"]),
                keep=tuple(int(k) for k in d["keep"]),
                prop_attn=bool(d.get("prop_attn", False)),
                options=dict(d.get("options", {})),
                target=dict(d.get("target", {})),
                prefix_only_last=bool(d.get("prefix_only_last", False)),
                tile=int(d.get("tile", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgepruneError(f"malformed plan: {exc}") from None


def min_tokens(method: str) -> int:
    return methods.get(method).min_tokens


def _check_cluster_plan(plan: TokenPlan) -> None:
    points = plan.reduction_points
    if len(points) > 1:
        raise EdgepruneError(f"method 'cluster' clusters once; this plan reduces at blocks {points}")
    if points:
        k = plan.keep[points[0]]
        try:
            center_grid(k, plan.spec.grid)
        except ValueError as exc:
            raise EdgepruneError(f"{exc}; choose a count such as {_near_counts(plan.spec.grid, k)}") from None


def _near_counts(grid: tuple[int, int], k: int) -> str:
    counts = feasible_center_counts(grid)
    return ", ".join(str(c) for c in sorted(counts, key=lambda c: abs(c - k))[:3])


def points_schedule(num_patches: int, depth: int, points: Sequence[int], final: int) -> tuple[int, ...]:
    """Reduce at ``points`` only, each keeping the same fraction, ending at ``final`` tokens."""
    keep, n, done = [], num_patches, 0
    ratio = final / num_patches
    for block in range(depth):
        if block in points:
            done += 1
            n = final if done == len(points) else max(final, round(num_patches * ratio ** (done / len(points))))
        keep.append(n)
    return tuple(keep)


def constant_schedule(num_patches: int, depth: int, r: int, start: int = 0, floor: int = 1) -> tuple[int, ...]:
    """ToMe's schedule: ``r`` tokens fewer at every block from ``start`` on, never below ``floor``."""
    keep, n = [], num_patches
    for block in range(depth):
        if block >= start:
            n = max(floor, n - r)
        keep.append(n)
    return tuple(keep)


def default_points(depth: int) -> list[int]:
    """Three early reduction points (blocks 1, 4, 7 of 12), scaled to the depth."""
    return sorted({min(depth - 1, round(depth * f)) for f in (1 / 12, 4 / 12, 7 / 12)})


def _check_points(points: Sequence[int], depth: int) -> list[int]:
    """``depth`` here is the number of blocks that may reduce (the last one may not, under prefix_only_last)."""
    pts = sorted(set(int(p) for p in points))
    if not pts or pts[0] < 0 or pts[-1] >= depth:
        raise EdgepruneError(f"reduction points must be block indices in 0..{depth - 1}, got {list(points)}")
    return pts


def build_plan(
    spec: ViTSpec,
    method: str,
    *,
    keep: Optional[float] = None,
    tokens: Optional[int] = None,
    flops: Optional[float] = None,
    latency: Optional[float] = None,
    points: Optional[Sequence[int]] = None,
    schedule: str = "points",
    prop_attn: Optional[bool] = None,
    options: Optional[dict[str, Any]] = None,
    latency_model: Optional[Callable[["TokenPlan"], float]] = None,
    prefix_only_last: bool = False,
    tile: int = 1,
) -> TokenPlan:
    """Build a plan from one budget: ``keep`` (fraction of patch tokens left at the end), ``tokens``
    (patch tokens left at the end), ``flops`` (target MACs ratio) or ``latency`` (target latency ratio,
    measured on this machine's engine once and cached; see :mod:`edgeprune.plan.latency`).

    ``schedule`` is ``"points"`` (reduce at ``points``, default blocks 1/4/7 of 12) or ``"constant"``
    (ToMe's constant r from block 0). ``prefix_only_last`` runs the last block for the CLS/prefix
    tokens alone (classifiers whose head reads only those; exact), so no schedule reduces there.
    ``tile`` rounds every reduction point's sequence (prefix + patch tokens) to the engine's tile
    (:mod:`edgeprune.plan.tiles`); a MACs or latency budget then picks the rounded plan that uses
    most of it.
    """
    if not isinstance(spec, ViTSpec):
        raise EdgepruneError("edgeprune.plan.build_plan takes a ViTSpec; for a model call edgeprune.build_plan(model, ...)")
    method = method.lower()
    declared = methods.get(method)
    if method == "cluster" and points is None and schedule == "points":
        points = [default_cluster_point(spec.depth)]
    elif spec.dense and points is None and schedule == "points":
        points = dense_default_points(spec.depth)
    prop = declared.prop_attn if prop_attn is None else bool(prop_attn)
    tile = int(tile)
    if not 1 <= tile <= MAX_TILE:
        raise EdgepruneError(f"tile must be a token count in 1..{MAX_TILE}, got {tile}")
    if tile > 1 and method == "cluster":
        raise EdgepruneError("method 'cluster' keeps a grid of centers; its counts cannot also follow an engine tile (use tile 1)")
    opts = check_options(method, options or {})
    if method == "tofu":  # ToFu prunes in the first quarter of the blocks and merges after
        opts.setdefault("prune_until", spec.depth // 4)
    budgets = {k: v for k, v in dict(keep=keep, tokens=tokens, flops=flops, latency=latency).items() if v is not None}
    n0, depth = spec.num_patches, spec.depth

    def make(keep_seq: tuple[int, ...]) -> TokenPlan:
        keep_seq = round_to_tile(keep_seq, n0, spec.num_prefix, tile, min_tokens(method))
        return TokenPlan(method, spec, keep_seq, prop, opts, target=dict(budgets, schedule=schedule, points=pts),
                         prefix_only_last=prefix_only_last, tile=tile)

    if method == "none":
        if budgets:
            raise EdgepruneError("method 'none' takes no budget")
        pts = []
        return make(tuple([n0] * depth))
    if len(budgets) != 1:
        raise EdgepruneError("give exactly one budget: --keep, --tokens, --flops or --latency")
    if schedule not in ("points", "constant"):
        raise EdgepruneError(f"unknown schedule '{schedule}' (points or constant)")
    reducing = depth - 1 if prefix_only_last else depth  # blocks that may reduce
    pts = _check_points(points if points is not None else default_points(reducing), reducing) if schedule == "points" else []
    lo = min_tokens(method)

    if method == "cluster" and (schedule != "points" or len(pts) != 1):
        raise EdgepruneError("method 'cluster' clusters at exactly one block: give one reduction point")
    counts = _final_counts(method, spec, lo)

    def by_final(final: int) -> tuple[int, ...]:
        if method == "cluster":  # the nearest center count that forms a grid, not above `final`
            final = max([c for c in counts if c <= final] or [counts[0]])
        if schedule == "points":
            return points_schedule(n0, depth, pts, final)
        keep_seq = constant_schedule(n0, reducing, math.ceil((n0 - final) / reducing), floor=lo)
        return keep_seq + keep_seq[-1:] * (depth - reducing)

    if "keep" in budgets:
        if not 0 < keep <= 1:
            raise EdgepruneError(f"--keep must be in (0, 1], got {keep}")
        return make(by_final(max(lo, round(keep * n0))))
    if "tokens" in budgets:
        if not lo <= tokens <= n0:
            raise EdgepruneError(f"--tokens must be in {lo}..{n0} for this model, got {tokens}")
        return make(by_final(int(tokens)))

    if "flops" in budgets:
        target, cost, what = flops, (lambda p: p.macs_ratio), "MACs"
    else:
        if latency_model is None:
            raise EdgepruneError("a latency budget needs a latency model (edgeprune.exporting.block_latency.calibrate)")
        target, cost, what = latency, latency_model, "latency"
    if not 0 < target <= 1:
        raise EdgepruneError(f"the {what} target must be in (0, 1], got {target}")
    # Keeping every token is the largest plan; when it already fits (a target of 1.0, or a measured
    # reducer so slow that any reduction costs more than it saves) it is the answer.
    unreduced = make(by_final(n0))
    if cost(unreduced) <= target + 1e-9:
        return unreduced
    best, low, high = None, lo, n0 - 1
    if tile > 1:
        # Rounded schedules jump a tile at a time at every point, so cost is a staircase in the final
        # count that is not monotone across points: take every distinct rounded plan and keep the
        # one that uses most of the budget (more tokens on ties).
        plans = {p.keep: p for p in (make(by_final(f)) for f in range(lo, n0))}.values()
        within = [p for p in plans if cost(p) <= target + 1e-9]
        best = max(within, key=lambda p: (cost(p), sum(p.keep)), default=None)
        low = high + 1  # skip the bisection below
    # Below that, cost grows with the final token count: binary-search the largest count within budget.
    while low <= high:
        mid = (low + high) // 2
        plan = make(by_final(mid))
        if cost(plan) <= target + 1e-9:
            best, low = plan, mid + 1
        else:
            high = mid - 1
    if best is None:
        smallest = cost(make(by_final(lo)))
        raise EdgepruneError(
            f"cannot reach a {what} ratio of {target} with method '{method}' and this schedule "
            f"(the most aggressive plan gives {smallest:.3f}); reduce earlier or at more points"
        )
    return best


def check_options(method: str, options: dict[str, Any], group: str = "tokens") -> dict[str, Any]:
    """Typed copy of ``options`` against the method's declaration in the registry (``group``
    "tokens" or "selection"); unknown names and bad values are one-line errors, not ignored."""
    known: dict[str, Option] = methods.option_table(method, group)
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name not in known:
            names = ", ".join(known) or "none"
            raise EdgepruneError(f"option '{name}' does not apply to {method} (its options: {names})")
        kind, allowed = known[name].kind, known[name].choices
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            value = value.lower() in ("true", "1")
        try:
            value = kind(value) if kind is not bool or isinstance(value, bool) else None
        except (TypeError, ValueError):
            value = None
        if value is None or (allowed is not None and value not in allowed):
            choices = f" (one of {', '.join(map(str, allowed))})" if allowed else ""
            raise EdgepruneError(f"option {name}={options[name]!r} is not a valid {kind.__name__}{choices}")
        low, high = known[name].low, known[name].high
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise EdgepruneError(f"option {name}={options[name]!r} must be {'in ' if high is not None else ''}{span}")
        checked[name] = value
    return checked


def dense_default_points(depth: int) -> list[int]:
    """Two early points for dense models (blocks 0 and 2 of 6): every point costs a fixed overhead
    plus an unmerge at each head tap, and on the reference segmenter two points kept 99.5% of the
    mIoU at 0.55 MACs where three points were slower for the same MACs."""
    return sorted({0, depth // 3})


def default_cluster_point(depth: int) -> int:
    """Cluster after a sixth of the blocks (block 1 of 6, 2 of 12): early enough to save most of
    the compute, late enough that tokens carry context to cluster on."""
    return min(depth - 1, round(depth / 6))


def _final_counts(method: str, spec: ViTSpec, lo: int) -> list[int]:
    if method != "cluster":
        return list(range(lo, spec.num_patches + 1))
    return feasible_center_counts(spec.grid)
