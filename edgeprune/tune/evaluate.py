"""Scoring candidate plans on calibration images, fast enough to try dozens of them.

The unreduced model runs once per image set; its logits are the reference and its tokens entering
the blocks where candidates start reducing are kept, so a candidate only runs from its first
reduction point on. Scores: KL divergence from the unreduced model's predictions (what the search
ranks by: continuous, so 1000 images separate candidates that top-1 cannot), agreement of top-1
with the unreduced model, and top-1 accuracy when labels exist.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.core.cache import cache_dir as core_cache_dir
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json, write_json_atomic
from edgeprune.families.base import FamilyAdapter, ReducedViT
from edgeprune.plan.token_plan import TokenPlan, build_plan
from edgeprune.tune.data import ImageSet


def first_reduction(plan: TokenPlan) -> int:
    """The first block whose tokens differ from the unreduced model's: where a candidate starts."""
    points = plan.reduction_points
    first = points[0] if points else plan.spec.depth
    return min(first, plan.spec.depth - 1) if plan.prefix_only_last else first


class Evaluator:
    """One image set: the unreduced reference, the cached block inputs, and candidate scores."""

    def __init__(self, adapter: FamilyAdapter, images: ImageSet, starts: Iterable[int], batch_size: int = 50) -> None:
        if "logits" not in adapter.output_names:
            raise EdgepruneError("tune needs a classifier (a model whose output is logits); this model returns tokens")
        self.adapter, self.images, self.batch_size = adapter, images, batch_size
        self.starts = sorted(set(starts))
        self.reference = ReducedViT(adapter, build_plan(adapter.spec, "none"))
        started = time.perf_counter()
        entries: dict[int, list[torch.Tensor]] = {s: [] for s in self.starts}
        logits = []
        with torch.inference_mode():
            for batch in self._batches(images.images):
                x = adapter.embed(batch)
                views = self.reference.views
                for i in range(adapter.spec.depth + 1):
                    if i in entries:
                        entries[i].append(x)
                    if i < adapter.spec.depth:
                        x, _ = self.reference._block(views[i], x, torch.ones_like(x[..., :1]), None, i, self.reference._reduce)
                logits.append(adapter.finish(x, torch.ones_like(x[..., :1]))[0])
        self.entries = {s: torch.cat(v) for s, v in entries.items()}
        self.logits = torch.cat(logits)
        self.log_probs = F.log_softmax(self.logits, dim=-1)
        self.seconds_per_image = (time.perf_counter() - started) / max(1, len(images))

    def subset(self, n: int) -> "Evaluator":
        """The same reference on the first ``n`` images, without running anything again."""
        if n >= len(self.images):
            return self
        sub = object.__new__(Evaluator)
        sub.__dict__.update(self.__dict__)
        labels = self.images.labels[:n] if self.images.labels is not None else None
        sub.images = ImageSet(self.images.images[:n], labels, f"{self.images.description}, first {n}")
        sub.entries = {s: t[:n] for s, t in self.entries.items()}
        sub.logits, sub.log_probs = self.logits[:n], self.log_probs[:n]
        return sub

    def _batches(self, t: torch.Tensor) -> Iterable[torch.Tensor]:
        for i in range(0, t.shape[0], self.batch_size):
            yield t[i : i + self.batch_size]

    def outputs(self, plan: TokenPlan) -> torch.Tensor:
        """The candidate's logits on every image, from its cached starting block."""
        start = first_reduction(plan)
        if start not in self.entries:
            start = max((s for s in self.starts if s <= start), default=None)
            if start is None:
                raise EdgepruneError(f"no cached block input at or before block {first_reduction(plan)}")
        reduced = ReducedViT(self.adapter, plan)
        with torch.inference_mode():
            return torch.cat([reduced.forward_from(x, start)[0] for x in self._batches(self.entries[start])])

    def score(self, plan: TokenPlan) -> dict[str, float]:
        logits = self.outputs(plan)
        return self.score_logits(logits)

    def score_logits(self, logits: torch.Tensor) -> dict[str, float]:
        log_q = F.log_softmax(logits, dim=-1)
        kl = (self.log_probs.exp() * (self.log_probs - log_q)).sum(dim=-1).mean()
        pred = logits.argmax(dim=-1)
        scores = {"kl": float(kl), "agreement": float((pred == self.logits.argmax(dim=-1)).float().mean()), "n": len(self.images)}
        if self.images.labels is not None:
            scores["top1"] = float((pred == self.images.labels).float().mean())
            scores["reference_top1"] = float((self.logits.argmax(dim=-1) == self.images.labels).float().mean())
        return scores


class ScoreCache:
    """Scores already measured, in one JSON file written atomically after each candidate, so an
    interrupted search resumes where it stopped."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                self.data = read_json(path)
            except (OSError, ValueError):
                self.data = {}  # an unreadable cache only costs a re-measure

    def get(self, stage: str, key: str) -> Optional[dict[str, float]]:
        return self.data.get(stage, {}).get(key)

    def put(self, stage: str, key: str, scores: dict[str, float]) -> None:
        self.data.setdefault(stage, {})[key] = scores
        if self.path is None:
            return
        try:
            write_json_atomic(self.path, self.data, indent=None, mkdir=True)
        except EdgepruneError:
            pass  # caching is a convenience; the search goes on

    def __len__(self) -> int:
        return sum(len(v) for v in self.data.values() if isinstance(v, dict))


def cache_path(cache_dir: Optional[Path], material: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir else core_cache_dir("tune")
    return root / f"tune-{key}.json"
