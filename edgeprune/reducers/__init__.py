"""Token reducers: small pure functions with static output shapes.

Each reducer takes the token tensor ``x`` [B, N, C], the token sizes ``size`` [B, N, 1] (how many
patches each token stands for), a :class:`ReductionContext` with what the block computed
(attention keys, queries), and the number of non-protected tokens to keep. Protected tokens (the
first ``num_prefix`` tokens: CLS, distillation, registers) are passed through untouched and stay
first. Besides the new tokens and sizes a reducer returns ``where`` [B, N_patch_in] (int64): the
index, among its output patch tokens, of the token each input patch token went into (merged, kept,
or absorbed). Dense heads follow it back to put one token per patch before the head; classifiers
ignore it and the exporter prunes it from their graphs. Everything is expressed with gathers, TopK and one-hot matmuls so the exported ONNX graph has
no ScatterElements/ScatterND reductions.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from edgeprune.reducers.common import ReductionContext
from edgeprune.reducers.evit import evit_prune
from edgeprune.reducers.gsp import gsp_prune
from edgeprune.reducers.prune_merge import prune_merge
from edgeprune.reducers.tome import tofu_reduce, tome_merge

Reducer = Callable[[Tensor, Tensor, ReductionContext, int], tuple[Tensor, Tensor, Tensor]]

REDUCERS: dict[str, Reducer] = {
    "tome": tome_merge,
    "evit": evit_prune,
    "gsp": gsp_prune,
    "tofu": tofu_reduce,
    "prune-merge": prune_merge,
}

METHODS: tuple[str, ...] = ("none", *REDUCERS)
# Methods that only make sense when every patch gets its token back before a dense head.
DENSE_METHODS: tuple[str, ...] = ("cluster", "pass")
ALL_METHODS: tuple[str, ...] = (*METHODS, *DENSE_METHODS)

# Options a plan may carry, per method: name -> (type, allowed values or None).
OPTIONS: dict[str, dict[str, tuple[type, tuple | None]]] = {
    "gsp": {"gsp_alpha": (float, None), "gsp_threshold": (float, None)},
    "tofu": {"prune_until": (int, None)},
    "prune-merge": {"prune_share": (float, None), "merge_mode": (str, ("mean", "mlerp"))},
    "cluster": {"cluster_iters": (int, None), "cluster_tau": (float, None), "cluster_window": (int, None),
                "cluster_topk": (int, None), "cluster_residual": (bool, None)},
    "pass": {"pass_signal": (str, ("redundancy", "update")), "pass_carry": (bool, None)},
}

# Numeric options with a valid range: name -> (low, high), None for open.
RANGES: dict[str, tuple[float | None, float | None]] = {"prune_share": (0.0, 1.0), "prune_until": (0, None)}

__all__ = ["REDUCERS", "RANGES", "METHODS", "DENSE_METHODS", "ALL_METHODS", "OPTIONS", "Reducer", "ReductionContext", "tome_merge", "tofu_reduce", "prune_merge", "evit_prune", "gsp_prune"]
