"""The plans ``edgeprune tune`` searches: a schedule shape crossed with a reducer variant, each fitted
to the target so that every candidate costs the same.

A *shape* says where tokens go: reduction points every ``stride`` blocks from ``start``, and how
the removal is spread over them, ``gamma`` (cumulative removal after point j of m is
``R * (j/m) ** gamma``: 1 removes equally at every point like ToMe's constant r, < 1 removes more
early, > 1 more late). A *variant* says how (method, options, proportional attention). The total
removal ``R`` is then the one free number: the smallest R that meets the MACs or latency target is
found by bisection, which makes candidates comparable at equal cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from edgeprune.core.errors import EdgepruneError
from edgeprune.plan import methods
from edgeprune.plan.tiles import round_to_tile
from edgeprune.plan.token_plan import TokenPlan, check_options, min_tokens
from edgeprune.core.spec import ViTSpec

Cost = Callable[[TokenPlan], float]
SEARCH_METHODS = ("tome", "tofu", "prune-merge", "evit", "gsp")


@dataclass(frozen=True)
class Shape:
    start: int
    stride: int
    gamma: float = 1.0

    def points(self, reducing: int) -> list[int]:
        return list(range(self.start, reducing, self.stride))

    @property
    def label(self) -> str:
        return f"from {self.start} every {self.stride}, gamma {self.gamma:g}"


@dataclass(frozen=True)
class Variant:
    method: str
    options: tuple[tuple[str, Any], ...] = ()
    prop_attn: Optional[bool] = None  # None: the method's default

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.method}({opts})" if opts else self.method


@dataclass
class Candidate:
    shape: Shape
    variant: Variant
    plan: TokenPlan
    cost: float
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> kl, top1, agreement

    @property
    def key(self) -> str:
        """What identifies the evaluated model: method, options and the exact token schedule."""
        p = self.plan
        return json.dumps([p.method, sorted(p.options.items()), p.prop_attn, p.prefix_only_last, list(p.keep)])

    @property
    def label(self) -> str:
        return f"{self.variant.label} [{self.shape.label}]"


def removal_schedule(n0: int, depth: int, points: list[int], removed: int, gamma: float, floor: int) -> tuple[int, ...]:
    """Patch tokens after each block when ``removed`` tokens go in total over ``points``."""
    keep, n, m = [], n0, len(points)
    for block in range(depth):
        if block in points:
            j = points.index(block) + 1
            n = min(n, max(floor, n0 - round(removed * (j / m) ** gamma)))
        keep.append(n)
    return tuple(keep)


def plan_for(spec: ViTSpec, shape: Shape, variant: Variant, removed: int, prefix_only_last: bool,
             target_record: Optional[dict[str, Any]] = None, tile: int = 1) -> Optional[TokenPlan]:
    """The plan of this shape and variant that removes ``removed`` patch tokens in total (None when
    the shape has no reduction point on this model), its counts rounded to the engine ``tile``."""
    reducing = spec.depth - 1 if prefix_only_last else spec.depth
    points = shape.points(reducing)
    if not points:
        return None
    options = check_options(variant.method, dict(variant.options))
    if variant.method == "tofu":
        options.setdefault("prune_until", spec.depth // 4)
    prop = methods.get(variant.method).prop_attn if variant.prop_attn is None else variant.prop_attn
    floor = min_tokens(variant.method)
    keep = removal_schedule(spec.num_patches, spec.depth, points, removed, shape.gamma, floor)
    # Rounding each point to the nearest tile is monotone in ``removed``, so fit's bisection still holds.
    keep = round_to_tile(keep, spec.num_patches, spec.num_prefix, tile, floor)
    return TokenPlan(variant.method, spec, keep, prop, options, target=dict(target_record or {}, shape=shape.label,
                     variant=variant.label), prefix_only_last=prefix_only_last, tile=tile)


def max_removal(spec: ViTSpec, variant: Variant) -> int:
    return spec.num_patches - min_tokens(variant.method)


def fit(spec: ViTSpec, shape: Shape, variant: Variant, cost: Cost, target: float, prefix_only_last: bool,
        extra_target: Optional[dict[str, Any]] = None, tile: int = 1) -> Optional[Candidate]:
    """The candidate that removes the fewest tokens while ``cost(plan) <= target``; None when even
    the most aggressive schedule of this shape costs more."""
    def make(removed: int) -> Optional[TokenPlan]:
        return plan_for(spec, shape, variant, removed, prefix_only_last, extra_target, tile)

    low, high = 0, max_removal(spec, variant)
    aggressive = make(high)
    if aggressive is None or cost(aggressive) > target + 1e-9:
        return None
    while low < high:  # smallest removal within the target; cost falls as removal grows
        mid = (low + high) // 2
        if cost(make(mid)) <= target + 1e-9:
            high = mid
        else:
            low = mid + 1
    plan = make(low)
    return Candidate(shape, variant, plan, cost(plan))


def shapes(spec: ViTSpec, prefix_only_last: bool) -> list[Shape]:
    """Starts early to mid-depth; strides 1 (every block, ToMe-like) and 2 (3 for 9+ blocks: fewer
    points cost less fixed time per point on a batch-1 engine)."""
    reducing = spec.depth - 1 if prefix_only_last else spec.depth
    if reducing < 1:
        raise EdgepruneError("the model has no block that may reduce")
    starts = sorted({s for s in (0, 1, 2, 3, reducing // 3, reducing // 2) if s < reducing})
    strides = [1, 2] + ([3] if reducing >= 9 else [])
    seen: set[tuple[int, ...]] = set()
    out = []
    for start in starts:
        for stride in strides:
            points = tuple(Shape(start, stride).points(reducing))
            if points not in seen:  # e.g. a late start with one point whatever the stride
                seen.add(points)
                out.append(Shape(start, stride))
    return out


def variants(spec: ViTSpec, methods: list[str]) -> list[Variant]:
    """Each method with the option values worth trying (ToFu's switch block, prune-merge's share)."""
    out: list[Variant] = []
    for method in methods:
        if method not in SEARCH_METHODS:
            raise EdgepruneError(f"tune cannot search method '{method}' (choose from {', '.join(SEARCH_METHODS)})")
        if method == "tofu":
            out += [Variant("tofu", (("prune_until", u),)) for u in sorted({max(1, spec.depth // 4), spec.depth // 2})]
        elif method == "prune-merge":
            out += [Variant("prune-merge", (("prune_share", s),)) for s in (0.0, 0.5, 1.0)]
        else:
            out.append(Variant(method))
    return out


def screening_variants(all_variants: list[Variant]) -> list[Variant]:
    """The variants that rank the shapes: one merging and one importance-pruning reducer when
    searched (they favour different places), else the first."""
    picks = [v for v in all_variants if v == Variant("tome")]
    picks += [v for v in all_variants if v.method == "prune-merge" and dict(v.options).get("prune_share") == 0.5]
    return picks or all_variants[:1]


def constant_r(spec: ViTSpec, cost: Cost, target: float, prefix_only_last: bool, target_kind: str,
               latency_model: Optional[Cost] = None, tile: int = 1) -> Optional[Candidate]:
    """ToMe's constant-r plan as ``edgeprune export --schedule constant`` builds it: the reference a
    tuned plan must beat at the same cost."""
    from edgeprune.plan.token_plan import build_plan

    budget = {target_kind: target}
    try:
        plan = build_plan(spec, "tome", schedule="constant", prefix_only_last=prefix_only_last,
                          latency_model=latency_model, tile=tile, **budget)
    except EdgepruneError:
        return None
    return Candidate(Shape(0, 1, 1.0), Variant("tome"), plan, cost(plan))
