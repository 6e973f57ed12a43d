"""The method registry: every token-reduction and token-selection method, declared once.

A :class:`Method` holds everything the rest of edgeprune needs to know about a method: the function
that runs it (a ``"module:function"`` reference, imported only by the torch-side code that runs
reducers, so plans, MACs and latency models stay usable where only the runtime is installed), its
options with types, choices, ranges and defaults, the fewest patch tokens it can leave, the default
for proportional attention, its MACs term, how its latency is modelled, and its plot colour.

Adding a method is one file (its function under :mod:`edgeprune.reducers` or
:mod:`edgeprune.mllm.select`) plus one :func:`register` call here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.spec import ViTSpec
from edgeprune.plan.token_counts import cluster_macs, round_sizes, split_removed

Family = Literal["reducer", "dense", "selection"]
# How the latency model prices one reduction point: nothing, one ranking whatever the step, or the
# bipartite rounds of at most half the tokens each that big steps run as.
LatencyTerm = Literal["none", "one-ranking", "halving-rounds"]


@dataclass(frozen=True)
class Option:
    kind: type
    default: Any = None
    choices: Optional[tuple] = None
    low: Optional[float] = None
    high: Optional[float] = None


# MACs of one reduction point: (spec, patch tokens in, patch tokens out, the plan's options) -> MACs.
MacsTerm = Callable[[ViTSpec, int, int, dict], int]


def _no_macs(spec: ViTSpec, n_in: int, n_out: int, options: dict) -> int:
    return 0


@dataclass(frozen=True)
class Method:
    name: str
    family: Family
    function: Optional[str]  # "module:function"; None for "none"
    description: str
    options: dict[str, Option] = field(default_factory=dict)
    prop_attn: bool = False  # proportional attention (log size on the logits) by default
    min_tokens: int = 1
    macs: MacsTerm = _no_macs
    latency: LatencyTerm = "halving-rounds"
    color: str = "gray"

    def load(self) -> Callable[..., Any]:
        """The function that runs the method (imports its module: torch for reducers)."""
        if self.function is None:
            raise EdgepruneError(f"method '{self.name}' runs no function")
        module, _, attr = self.function.partition(":")
        return getattr(importlib.import_module(module), attr)

    def defaults(self) -> dict[str, Any]:
        return {name: opt.default for name, opt in self.options.items() if opt.default is not None}


# Two name spaces: methods a TokenPlan runs inside the blocks ("reducer" and "dense"), and the
# K-token selections of multimodal front-ends; "none" is in both, and "gsp" names one of each.
GROUPS: dict[str, tuple[str, ...]] = {"tokens": ("reducer", "dense"), "selection": ("selection",)}
REGISTRY: dict[str, dict[str, Method]] = {group: {} for group in GROUPS}


def _group(family: str) -> str:
    return next(g for g, families in GROUPS.items() if family in families)


def register(method: Method, *, also: tuple[str, ...] = ()) -> Method:
    """Declare ``method`` (in its family's group, and in the groups named by ``also``)."""
    for group in (_group(method.family), *also):
        if method.name in REGISTRY[group]:
            raise ValueError(f"method '{method.name}' is registered twice in {group}")
        REGISTRY[group][method.name] = method
    return method


def get(name: str, group: str = "tokens") -> Method:
    """The method called ``name`` in ``group``, or a one-line error naming the choices."""
    method = REGISTRY[group].get(name)
    if method is None:
        raise EdgepruneError(f"unknown method '{name}' (choose from {', '.join(names(group))})")
    return method


def names(group: str = "tokens", family: Optional[str] = None) -> tuple[str, ...]:
    """Registered names of ``group`` (of ``family`` only, with "none", when given)."""
    return tuple(n for n, m in REGISTRY[group].items() if family is None or m.family == family or n == "none")


def color(name: str) -> str:
    """The method's plot colour (gray for names not registered, e.g. "unreduced" rows)."""
    method = REGISTRY["tokens"].get(name) or REGISTRY["selection"].get(name)
    return method.color if method else "gray"


def option_defaults(name: str, group: str = "tokens") -> dict[str, Any]:
    return get(name, group).defaults()


def option_table(name: str, group: str = "tokens") -> dict[str, Option]:
    return get(name, group).options


def _merged(name: str, options: dict) -> dict:
    return {**option_defaults(name), **(options or {})}


# ---- MACs terms: the matmuls each method adds at one reduction point ----

def _bipartite_macs(width_of: Callable[[ViTSpec], int]) -> MacsTerm:
    def macs(spec: ViTSpec, n_in: int, n_out: int, options: dict) -> int:
        total, n = 0, n_in
        for r in round_sizes(n_in, n_out):  # the rounds the reducers run
            n_a, n_b = (n + 1) // 2, n // 2
            total += n_a * n_b * width_of(spec) + n_b * r * spec.embed_dim
            n -= r
        return total

    return macs


def _evit_macs(spec: ViTSpec, n_in: int, n_out: int, options: dict) -> int:
    return spec.num_heads * n_in * spec.head_dim + n_in * spec.embed_dim


def _prune_merge_macs(spec: ViTSpec, n_in: int, n_out: int, options: dict) -> int:
    """CLS attention row, removed-to-kept similarity, the merge matmul."""
    removed = n_in - n_out
    merged, _ = split_removed(removed, float(_merged("prune-merge", options)["prune_share"]))
    return spec.num_heads * n_in * spec.head_dim + removed * n_out * spec.head_dim + merged * n_out * spec.embed_dim


def _cluster_macs(spec: ViTSpec, n_in: int, n_out: int, options: dict) -> int:
    iters = int(_merged("cluster", options)["cluster_iters"])
    return cluster_macs(n_in, n_out, spec.embed_dim, iters) + n_in * spec.embed_dim


_GSP_OPTIONS = {"gsp_alpha": Option(float), "gsp_threshold": Option(float, low=-1.0, high=1.0)}

register(Method("none", "reducer", None, "no reduction", latency="none", color="black"), also=("selection",))
register(Method("tome", "reducer", "edgeprune.reducers.tome:tome_merge",
                "ToMe: bipartite soft matching on the attention keys, size-weighted merging",
                prop_attn=True, macs=_bipartite_macs(lambda s: s.head_dim), color="tab:blue"))
register(Method("evit", "reducer", "edgeprune.reducers.evit:evit_prune",
                "EViT: keep the tokens the CLS query attends to most, fuse the rest into one",
                min_tokens=2, macs=_evit_macs, latency="one-ranking", color="tab:orange"))
register(Method("gsp", "reducer", "edgeprune.reducers.gsp:gsp_prune",
                "Script's graph-structured pruning: the most redundant sources of a similarity graph go",
                options=_GSP_OPTIONS, macs=_bipartite_macs(lambda s: s.embed_dim), color="tab:green"))
register(Method("tofu", "reducer", "edgeprune.reducers.tome:tofu_reduce",
                "ToFu: ToMe's matching, pruning early and norm-preserving (MLERP) merging later",
                options={"prune_until": Option(int, low=0)}, prop_attn=True,
                macs=_bipartite_macs(lambda s: s.head_dim), color="tab:cyan"))
register(Method("prune-merge", "reducer", "edgeprune.reducers.prune_merge:prune_merge",
                "importance-aware: the least important go, the next-ranked merge into kept tokens",
                options={"prune_share": Option(float, 0.5, low=0.0, high=1.0),
                         "merge_mode": Option(str, "mlerp", choices=("mean", "mlerp"))},
                prop_attn=True, macs=_prune_merge_macs, latency="one-ranking", color="tab:brown"))
register(Method("cluster", "dense", "edgeprune.reducers.cluster:cluster_tokens",
                "Expedite: cluster tokens into a grid of centers once, reconstruct per patch before the head",
                options={"cluster_iters": Option(int, 3), "cluster_tau": Option(float, 0.02),
                         "cluster_window": Option(int, 2), "cluster_topk": Option(int, 0),
                         "cluster_residual": Option(bool, True)},
                macs=_cluster_macs, latency="one-ranking", color="tab:red"))
register(Method("pass", "dense", "edgeprune.reducers.token_pass:pass_tokens",
                "DoViT token pass: settled tokens skip the remaining blocks and rejoin before the head",
                options={"pass_signal": Option(str, "redundancy", choices=("redundancy", "update")),
                         "pass_carry": Option(bool, True)},
                latency="one-ranking", color="tab:purple"))
# Selections for multimodal front-ends: K visual tokens out of a vision tower (edgeprune.mllm).
register(Method("visionzip", "selection", "edgeprune.mllm.select:visionzip_select",
                "VisionZip: dominant tokens by CLS attention plus contextual merged tokens",
                options={"dominant": Option(int, low=1)}, color="tab:olive"))
register(Method("gsp", "selection", "edgeprune.mllm.select:gsp_select",
                "Script's graph-structured pruning as a K-token selection", options=_GSP_OPTIONS, color="tab:green"))
register(Method("qcsp", "selection", "edgeprune.mllm.select:qcsp_select",
                "Script's query-conditioned semantic pruning: a greedy k-DPP over relevance and diversity",
                options={"negate_relevance": Option(bool)}, color="tab:cyan"))
register(Method("script", "selection", "edgeprune.mllm.select:script_select",
                "Script: graph pruning intersected with the query-conditioned DPP selection",
                options={"survivors": Option(int, low=1), **_GSP_OPTIONS, "negate_relevance": Option(bool)},
                color="tab:gray"))

REDUCER_METHODS = names("tokens", "reducer")  # "none" and the reducers every family runs
DENSE_METHODS = tuple(n for n, m in REGISTRY["tokens"].items() if m.family == "dense")  # one token per patch back
TOKEN_METHODS = names("tokens")  # what a TokenPlan may carry
SELECTION_METHODS = names("selection")  # what a multimodal export may select with
