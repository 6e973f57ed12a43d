"""Token reducers: small pure functions with static output shapes.

Each reducer takes the token tensor ``x`` [B, N, C], the token sizes ``size`` [B, N, 1] (how many
patches each token stands for), a :class:`ReductionContext` with what the block computed
(attention keys, queries), and the number of non-protected tokens to keep. Protected tokens (the
first ``num_prefix`` tokens: CLS, distillation, registers) are passed through untouched and stay
first. Everything is expressed with gathers, TopK and one-hot matmuls so the exported ONNX graph has
no ScatterElements/ScatterND reductions.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from edgeprune.reducers.common import ReductionContext
from edgeprune.reducers.evit import evit_prune
from edgeprune.reducers.gsp import gsp_prune
from edgeprune.reducers.tome import tome_merge

Reducer = Callable[[Tensor, Tensor, ReductionContext, int], tuple[Tensor, Tensor]]

REDUCERS: dict[str, Reducer] = {
    "tome": tome_merge,
    "evit": evit_prune,
    "gsp": gsp_prune,
}

METHODS: tuple[str, ...] = ("none", *REDUCERS)

__all__ = ["REDUCERS", "METHODS", "Reducer", "ReductionContext", "tome_merge", "evit_prune", "gsp_prune"]
