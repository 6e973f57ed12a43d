"""``tune``: search per-block token counts, reduction points and reducer on calibration images, at
equal cost (MACs or this machine's measured latency), and return the plan that changes the
model's predictions least.

Three stages keep it within minutes on a CPU: (1) every schedule shape with one merging and one
pruning reducer, on a subset of the calibration images sized to the time budget; (2) the best
shapes with other removal profiles and every reducer variant, on the same subset; (3) the best few
on all calibration images. Scores go to a cache file after each candidate, so an interrupted run
resumes. The result records what was tried and, on hold-out images, how the chosen plan and
edgeprune's ToMe-style constant-r plan at the same cost compare with the unreduced model.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, advance, say
from edgeprune.families import adapter_for
from edgeprune.families.weights import model_fingerprint
from edgeprune.plan.token_plan import TokenPlan
from edgeprune.tune.data import ImageSet
from edgeprune.tune.evaluate import Evaluator, ScoreCache, cache_path, first_reduction
from edgeprune.tune.space import Candidate, Shape, constant_r, fit, screening_variants, shapes, variants

SEARCH_VERSION = 1
DEFAULT_METHODS = ("tome", "tofu", "prune-merge")


@dataclass
class TuneResult:
    plan: TokenPlan
    target: dict[str, float]
    candidates: list[Candidate]
    reference: Optional[Candidate]  # ToMe constant r at the same cost
    holdout: dict[str, dict[str, float]] = field(default_factory=dict)  # baseline / tuned / constant-r
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def row(c: Candidate) -> dict[str, Any]:
            return {"label": c.label, "method": c.plan.method, "options": c.plan.options, "keep": list(c.plan.keep),
                    "macs_ratio": round(c.plan.macs_ratio, 4), "cost": round(c.cost, 4), "scores": c.scores}

        ranked = sorted(self.candidates, key=_rank_key)
        return {"target": self.target, "chosen": row(next(c for c in self.candidates if c.plan == self.plan)),
                "constant_r": row(self.reference) if self.reference else None, "holdout": self.holdout,
                "info": self.info, "candidates": [row(c) for c in ranked]}


def _rank_key(c: Candidate) -> tuple:
    full = c.scores.get("full")
    screen = c.scores.get("screen", {})
    return (0, full["kl"]) if full else (1, screen.get("kl", float("inf")))


def _cost_function(model: nn.Module, kind: str, method_names: Sequence[str], threads: int,
                   progress: Optional[Progress], engine: Optional[str] = None) -> tuple[Callable[[TokenPlan], float], dict[str, Any]]:
    if kind == "flops":
        return (lambda plan: plan.macs_ratio), {}
    from edgeprune.exporting.block_latency import calibrate

    on = {"engine": engine} if engine else {}
    models = {m: calibrate(model, m, threads=threads, progress=progress, **on) for m in sorted(set(method_names))}
    return (lambda plan: models[plan.method].ratio(plan)), models


def tune(model: nn.Module, calib: ImageSet, *, flops: Optional[float] = None, latency: Optional[float] = None,
         methods: Sequence[str] = DEFAULT_METHODS, prefix_only_last: Optional[bool] = None,
         holdout: Optional[ImageSet] = None, budget_minutes: float = 12.0, finalists: int = 3, batch_size: int = 50,
         threads: int = 2, cache_dir: Optional[Path] = None, progress: Optional[Progress] = None,
         tile: int = 1, engine: Optional[str] = None) -> TuneResult:
    """The plan within the ``flops`` or ``latency`` ratio that keeps the model's predictions closest
    to the unreduced ones on ``calib`` (see the module doc). ``progress`` gets the steps as messages and
    each candidate scored as ``(done, total, "stage: candidate")``; the total grows as the search
    learns how many candidates its later stages hold. ``tile`` rounds every candidate's reduction
    points to the engine's tile (:mod:`edgeprune.plan.tiles`); ``engine`` is where a latency target
    is measured (:func:`edgeprune.exporting.block_latency.calibrate`, default ONNX Runtime fp32)."""
    started = time.perf_counter()
    budgets = {k: v for k, v in (("flops", flops), ("latency", latency)) if v is not None}
    if len(budgets) != 1:
        raise EdgepruneError("give exactly one target: --flops or --latency")
    kind, target = next(iter(budgets.items()))
    if not 0 < target <= 1:
        raise EdgepruneError(f"the {kind} target must be in (0, 1], got {target}")
    adapter = adapter_for(model.eval())
    spec = adapter.spec
    if prefix_only_last is None:
        prefix_only_last = spec.prefix_head and spec.num_prefix > 0
    all_variants = variants(spec, list(methods))
    cost, latency_models = _cost_function(model, kind, [v.method for v in all_variants] + ["tome"], threads, progress, engine)
    record = {kind: target}

    def fitted(shape_list: list[Shape], variant_list: list) -> list[Candidate]:
        found = [fit(spec, sh, v, cost, target, prefix_only_last, record, tile) for sh in shape_list for v in variant_list]
        return [c for c in found if c is not None]

    all_shapes = shapes(spec, prefix_only_last)
    stage_a = fitted(all_shapes, screening_variants(all_variants))
    if not stage_a:
        raise EdgepruneError(f"no schedule reaches a {kind} ratio of {target} for this model "
                             f"(the smallest reachable is {_smallest_cost(spec, all_shapes, all_variants, cost, prefix_only_last):.3f})")
    starts = {first_reduction(c.plan) for c in stage_a} | {spec.depth - 1}
    chosen_threads = _pick_threads(model, calib.images[:batch_size], threads)
    say(progress, f"running the unreduced model on {len(calib)} calibration images ({chosen_threads} torch threads)")
    full = Evaluator(adapter, calib, starts, batch_size)

    material = {"version": SEARCH_VERSION, "model": model_fingerprint(model), "calib": calib.fingerprint(),
                kind: target, "prefix_only_last": prefix_only_last, "methods": sorted(methods),
                **({"tile": tile} if tile > 1 else {}), **({"engine": engine} if engine else {})}
    cache = ScoreCache(cache_path(cache_dir, material))
    resumed = len(cache)
    if resumed:
        say(progress, f"resuming: {resumed} scores cached in {cache.path}")

    # Size the screening subset to the budget: the reference pass just measured the cost per image.
    mean_cost = sum(c.plan.macs_ratio for c in stage_a) / len(stage_a)
    n_screen = len(stage_a) + 4 * len(screening_variants(all_variants)) + 3 * len(all_variants)
    final_s = (finalists + 1) * mean_cost * full.seconds_per_image * len(calib)
    hold_s = (3 * full.seconds_per_image * len(holdout)) if holdout is not None else 0.0
    left = budget_minutes * 60 - (time.perf_counter() - started) - final_s - hold_s
    per_image = max(1e-9, n_screen * mean_cost * full.seconds_per_image)
    subset = int(min(len(calib), max(min(len(calib), 64), left / per_image)))
    # A resumed search screens on as many images as the interrupted one did (timings vary between
    # runs), or none of its scores would be reused.
    subset = int(cache.data.setdefault("screen_images", subset))
    screen = full.subset(subset)
    say(progress, f"screening on {subset} of {len(calib)} images ({full.seconds_per_image * 1e3:.1f} ms per image unreduced)")
    total = [n_screen + finalists + 1]
    done = [0]

    def evaluate(cands: list[Candidate], stage: str, evaluator: Evaluator) -> None:
        for c in cands:
            if stage in c.scores:
                continue
            advance(progress, done[0], total[0], f"{stage}: {c.label}")
            scores = cache.get(f"{stage}{len(evaluator.images)}", c.key)
            if scores is None:
                scores = evaluator.score(c.plan)
                cache.put(f"{stage}{len(evaluator.images)}", c.key, scores)
            c.scores[stage] = scores
            done[0] += 1
        advance(progress, done[0], total[0], stage)

    evaluate(stage_a, "screen", screen)
    best_shapes = _top_shapes(stage_a, 2)
    stage_b = fitted([dataclasses.replace(sh, gamma=g) for sh in best_shapes for g in (0.5, 2.0)],
                     screening_variants(all_variants))
    evaluate(stage_b, "screen", screen)
    pool = stage_a + stage_b
    best_shapes = _top_shapes(pool, 3)
    seen = {c.key for c in pool}
    stage_c = [c for c in fitted(best_shapes, all_variants) if c.key not in seen]
    evaluate(stage_c, "screen", screen)
    pool += stage_c
    total[0] = done[0] + finalists + 1

    ranked = sorted(pool, key=lambda c: c.scores["screen"]["kl"])
    finals: list[Candidate] = []
    for c in ranked:
        if c.key not in {f.key for f in finals}:
            finals.append(c)
        if len(finals) == finalists:
            break
    reference = constant_r(spec, cost, target, False, kind, latency_models.get("tome").ratio if latency_models else None, tile)
    evaluate(finals + ([reference] if reference else []), "full", full)
    chosen = min(finals, key=lambda c: (c.scores["full"]["kl"], -c.scores["full"].get("top1", 0.0)))
    plan = dataclasses.replace(chosen.plan, target=dict(chosen.plan.target, planner="tune", calibration=calib.description,
                                                        calibration_scores=chosen.scores["full"]))
    if latency_models:
        plan = dataclasses.replace(plan, target=dict(plan.target, predicted_latency_ratio=round(cost(plan), 4)))
    chosen.plan = plan

    result = TuneResult(plan, {kind: target}, pool + ([reference] if reference and reference not in pool else []), reference)
    if holdout is not None:
        say(progress, f"scoring the chosen plan on {len(holdout)} hold-out images")
        hold = Evaluator(adapter, holdout, {first_reduction(plan), *( [first_reduction(reference.plan)] if reference else [])}, batch_size)
        result.holdout["baseline"] = hold.score_logits(hold.logits)
        result.holdout["tuned"] = hold.score(plan)
        if reference is not None:
            result.holdout["constant_r"] = hold.score(reference.plan)
        result.holdout["description"] = holdout.description  # type: ignore[assignment]
    result.info = {"seconds": round(time.perf_counter() - started, 1), "screen_images": subset,
                   "calibration_images": len(calib), "candidates": len(pool), "resumed_scores": resumed,
                   "cache": str(cache.path), "prefix_only_last": prefix_only_last,
                   "ms_per_image_unreduced": round(full.seconds_per_image * 1e3, 3), "torch_threads": torch.get_num_threads()}
    advance(progress, total[0], total[0], "done")
    return result


def _smallest_cost(spec, shape_list: list[Shape], variant_list: list, cost: Callable[[TokenPlan], float],
                   prefix_only_last: bool) -> float:
    """The lowest cost any searched schedule reaches (its most aggressive plan), for the error."""
    from edgeprune.tune.space import max_removal, plan_for

    plans = [plan_for(spec, sh, v, max_removal(spec, v), prefix_only_last) for sh in shape_list for v in variant_list]
    return min((cost(p) for p in plans if p is not None), default=1.0)


def _pick_threads(model: nn.Module, batch: torch.Tensor, threads: int) -> int:
    """Small models (and any model on a busy machine) can run several times slower with more intra-op
    threads than with one, since the threads spin waiting for each other; time both and keep the faster."""
    timings = {}
    with torch.inference_mode():
        for n in sorted({1, max(1, threads)}):
            torch.set_num_threads(n)
            model(batch)  # warm-up
            start = time.perf_counter()
            model(batch)
            timings[n] = time.perf_counter() - start
    best = min(timings, key=timings.get)
    torch.set_num_threads(best)
    return best


def _top_shapes(cands: list[Candidate], n: int) -> list[Shape]:
    out: list[Shape] = []
    for c in sorted(cands, key=lambda c: c.scores["screen"]["kl"]):
        if c.shape not in out:
            out.append(c.shape)
        if len(out) == n:
            break
    return out
