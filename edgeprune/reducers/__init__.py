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

from edgeprune.plan import methods
from edgeprune.reducers.common import ReductionContext
from edgeprune.reducers.evit import evit_prune
from edgeprune.reducers.gsp import gsp_prune
from edgeprune.reducers.prune_merge import prune_merge
from edgeprune.reducers.tome import tofu_reduce, tome_merge

Reducer = Callable[[Tensor, Tensor, ReductionContext, int], tuple[Tensor, Tensor, Tensor]]

# The functions the model families call at a reduction point, as the method registry declares them
# (dense methods, cluster and pass, are run by the dense adapter itself).
REDUCERS: dict[str, Reducer] = {name: method.load() for name, method in methods.REGISTRY["tokens"].items()
                                if method.family == "reducer" and method.function}

__all__ = ["REDUCERS", "Reducer", "ReductionContext", "tome_merge", "tofu_reduce", "prune_merge", "evit_prune", "gsp_prune"]
