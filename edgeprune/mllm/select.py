"""Visual-token selection for multimodal LLMs: small pure functions with a static K.

Every selector takes the tower's patch tokens of one feature layer (CLS already removed) and returns
``Selection``: the K kept patches' raster indices ``index`` [B, K] (ascending, so the LLM sees them in
raster order) and ``sizes`` [B, K], how many of the N patches each kept token stands for (a dropped
patch counts towards the kept token most similar to it, so sizes always sum to N). Merging selectors
also return the merged features. Like the reducers, everything is TopK, ArgMax, gathers and one-hot
matmuls: the exported graph has no scatter and no data-dependent shape.

- :func:`greedy_dpp` — the greedy MAP inference of a determinantal point process (Chen et al. 2018's
  incremental Cholesky), K steps unrolled: a static trip count.
- :func:`qcsp_select` — Script's query-conditioned selection: relevance of each token to the query
  times cosine similarity between tokens, ``L = diag(r) S diag(r)``, then the DPP picks K relevant and
  diverse tokens.
- :func:`gsp_select` — Script's graph-structured pruning: bipartite graph over cosine similarity,
  the most redundant sources go, in rounds of at most half the sources (so every round chooses).
- :func:`script_select` — what the Script paper intends (its released code does not: see
  docs/mllm.md): graph pruning removes redundant tokens first, then the DPP picks K among survivors.
- :func:`visionzip_select` — VisionZip: dominant tokens by CLS attention, the rest merged into
  evenly spaced contextual targets by key similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from edgeprune.core.limits import TOPK_LIMIT
from edgeprune.reducers.common import cosine_normalize, descending_order, gather_tokens, in_token_order, one_hot
from edgeprune.reducers.gsp import graph_prune_choice

# A DPP step divides by the square root of the chosen token's remaining gain; once the kernel's rank
# is used up that gain is ~0, and the floor keeps the update finite (the pick stays the largest gain).
DPP_EPS = 1e-10
# Relevance is min-max normalised per image; the floor keeps a constant relevance from dividing by 0.
RELEVANCE_EPS = 1e-6


@dataclass
class Selection:
    index: Tensor  # [B, K] int64 raster indices of the kept patches, ascending
    sizes: Tensor  # [B, K] float: patches each kept token stands for (sums to N)
    tokens: Optional[Tensor] = None  # [B, K, C] merged features (merging selectors only)


def gather_rows(t: Tensor, idx: Tensor) -> Tensor:
    """``t[b, idx[b]]`` for [B, N] or [B, N, C] tensors."""
    if t.dim() == 2:
        return gather_tokens(t.unsqueeze(-1), idx).squeeze(-1)
    return gather_tokens(t, idx)


def relevance(joint: Tensor, query: Tensor, negate: bool = False) -> Tensor:
    """Each token's relevance to the query, min-max normalised to [0, 1] per image: [B, N].

    ``joint`` [B, N, D] are the tokens in the query's embedding space, ``query`` [B, D] the (mean of
    the normalised) text embedding(s). Script's released code negates the dot product before the
    normalisation (``negate=True``); the paper and this default rank the most similar tokens highest.
    """
    score = (cosine_normalize(joint) @ query.unsqueeze(-1)).squeeze(-1)
    if negate:
        score = -score
    low, high = score.amin(dim=-1, keepdim=True), score.amax(dim=-1, keepdim=True)
    return (score - low) / (high - low).clamp_min(RELEVANCE_EPS)


def dpp_kernel(unit: Tensor, rel: Tensor) -> Tensor:
    """``diag(r) S diag(r)`` with S the cosine similarity of the unit-norm tokens: [B, N, N]."""
    weighted = unit * rel.unsqueeze(-1)
    return weighted @ weighted.transpose(1, 2)


def greedy_dpp(kernel: Tensor, k: int) -> Tensor:
    """Greedy MAP of a DPP with kernel [B, N, N]: the K picks [B, K] in the order they were made.

    Each step adds the token with the largest remaining gain ``d2`` (the squared norm of its kernel
    feature orthogonal to the chosen ones) and updates every gain with one row of an incremental
    Cholesky factor. The trip count is K whatever the gains do, so a pick is always made: once the
    kernel's rank is used up the remaining gains are ~0 and the largest of them still wins. ArgMax
    takes the first of equal values on every backend. Chosen tokens get -inf so they are never
    chosen twice.
    """
    b, n, _ = kernel.shape
    if not 0 < k <= n:
        raise ValueError(f"a DPP picks 1..{n} tokens, asked for {k}")
    gains = torch.diagonal(kernel, dim1=1, dim2=2)  # [B, N]
    factor: Optional[Tensor] = None  # [B, N, steps]: the Cholesky rows built so far, one column per pick
    picks = []
    for step in range(k):
        pick = gains.argmax(dim=-1, keepdim=True)  # [B, 1]
        picks.append(pick)
        if step == k - 1:
            break
        row = gather_tokens(kernel, pick).squeeze(1)  # [B, N]: L[pick, :]
        if factor is not None:
            row = row - (gather_tokens(factor, pick) @ factor.transpose(1, 2)).squeeze(1)
        pivot = gains.gather(1, pick).clamp_min(DPP_EPS).sqrt()
        column = row / pivot
        factor = column.unsqueeze(-1) if factor is None else torch.cat((factor, column.unsqueeze(-1)), dim=-1)
        chosen = one_hot(pick.squeeze(-1), n, torch.bool)
        gains = torch.where(chosen, torch.full_like(gains, float("-inf")), gains - column * column)
    return torch.cat(picks, dim=-1)


def absorb_sizes(unit: Tensor, kept: Tensor, sizes: Tensor) -> Tensor:
    """Sizes [B, K] of the kept tokens once every dropped token's size joins its most similar kept
    token (cosine of ``unit`` [B, N, C]); ``kept`` [B, K] are indices, ``sizes`` [B, N] the inputs'."""
    n, k = unit.shape[1], kept.shape[1]
    kept_hot = one_hot(kept, n, unit.dtype)  # [B, K, N]
    similarity = gather_tokens(unit, kept) @ unit.transpose(1, 2)  # [B, K, N]
    # A kept token always goes to itself, even when another kept token is just as similar.
    similarity = torch.where(kept_hot > 0, torch.full_like(similarity, 4.0), similarity)
    owner = one_hot(similarity.argmax(dim=1), k, unit.dtype)  # [B, N, K]
    return (owner * sizes.unsqueeze(-1)).sum(dim=1)


def raster_order(selection: Selection) -> Selection:
    """The same selection with its tokens sorted by raster index."""
    if selection.index.shape[1] <= 1:
        return selection
    position = torch.topk(-selection.index.to(torch.float32), selection.index.shape[1], dim=-1, sorted=True).indices
    tokens = None if selection.tokens is None else gather_tokens(selection.tokens, position)
    return Selection(selection.index.gather(1, position), selection.sizes.gather(1, position), tokens)


def qcsp_select(joint: Tensor, similar: Tensor, query: Tensor, k: int, *, index: Optional[Tensor] = None,
                sizes: Optional[Tensor] = None, negate: bool = False) -> Selection:
    """Script's query-conditioned selection of K of the N tokens.

    ``joint`` [B, N, Dq]: tokens in the query's space (relevance); ``similar`` [B, N, D]: tokens whose
    cosine similarity is the DPP's diversity term (Script uses the projector outputs). ``index`` and
    ``sizes`` [B, N] describe tokens that are already a subset (after graph pruning).
    """
    b, n = joint.shape[:2]
    index = _arange_like(joint) if index is None else index
    sizes = joint.new_ones(b, n) if sizes is None else sizes
    unit = cosine_normalize(similar)
    picks = greedy_dpp(dpp_kernel(unit, relevance(joint, query, negate)), k)
    # One sort by raster index: survivors of graph pruning are not in raster order themselves.
    return raster_order(Selection(gather_rows(index, picks), absorb_sizes(unit, picks, sizes)))


def choice_rounds(num_tok: int, keep: int) -> list[int]:
    """Tokens each graph round removes on the way from ``num_tok`` to ``keep``: at most half of the
    sources (a quarter of the tokens). A round that removed every source would keep every target
    whatever the features say; capped, each round still chooses which sources go."""
    sizes = []
    while num_tok > keep:
        r = min(num_tok - keep, max(1, (num_tok + 1) // 4))
        sizes.append(r)
        num_tok -= r
    return sizes


def gsp_survivors(features: Tensor, keep: int, options: Optional[dict] = None) -> tuple[Tensor, Tensor]:
    """Graph-structured pruning from N tokens to ``keep``: (indices [B, keep] among the N, in no
    particular order, and their sizes [B, keep], each dropped token counted at its nearest target)."""
    opts = options or {}
    b, n = features.shape[:2]
    x, index, sizes = features, _arange_like(features), features.new_ones(b, n)
    for r in choice_rounds(n, keep):
        similarity, dropped, kept = graph_prune_choice(x, r, opts)
        nearest = similarity.argmax(dim=-1).gather(1, dropped)  # [B, r] among the odd tokens
        moved = (one_hot(nearest, similarity.shape[-1], sizes.dtype) * gather_rows(sizes[:, ::2], dropped).unsqueeze(-1)).sum(dim=1)
        x = torch.cat((gather_tokens(x[:, ::2], kept), x[:, 1::2]), dim=1)
        index = torch.cat((gather_rows(index[:, ::2], kept), index[:, 1::2]), dim=1)
        sizes = torch.cat((gather_rows(sizes[:, ::2], kept), sizes[:, 1::2] + moved), dim=1)
    return index, sizes


def gsp_select(features: Tensor, k: int, options: Optional[dict] = None) -> Selection:
    """Script's graph-structured pruning alone, down to K tokens."""
    index, sizes = gsp_survivors(features, k, options)
    return raster_order(Selection(index, sizes))


def script_select(features: Tensor, joint: Tensor, similar: Tensor, query: Tensor, k: int, survivors: int,
                  options: Optional[dict] = None, negate: bool = False) -> Selection:
    """Graph pruning to ``survivors`` tokens, then the query-conditioned DPP picks K among them."""
    if not k <= survivors <= features.shape[1]:
        raise ValueError(f"script keeps {survivors} graph survivors, which must lie in [{k}, {features.shape[1]}]")
    index, sizes = gsp_survivors(features, survivors, options)
    return qcsp_select(gather_rows(joint, index), gather_rows(similar, index), query, k,
                       index=index, sizes=sizes, negate=negate)


def visionzip_select(features: Tensor, attention: Tensor, keys: Tensor, k: int, dominant: int) -> Selection:
    """VisionZip: ``dominant`` tokens with the most CLS attention [B, N] stay as they are; the rest
    merge into ``k - dominant`` contextual tokens, targets evenly spaced along the remaining tokens'
    raster order, every other remaining token averaged into its most similar target by ``keys``
    [B, N, Dk] (cosine). A contextual token's index is its target's."""
    b, n, _ = features.shape
    contextual = k - dominant
    if not (0 < dominant <= k and 0 <= contextual < n - dominant + 1 and k <= n):
        raise ValueError(f"visionzip needs 0 < dominant ({dominant}) <= K ({k}) <= N ({n})")
    order = descending_order(attention)
    dom = in_token_order(order[:, :dominant])
    unit = cosine_normalize(keys)
    if contextual == 0:  # nothing merges; the dropped patches still count towards their nearest kept token
        return Selection(dom, absorb_sizes(unit, dom, features.new_ones(b, n)), gather_tokens(features, dom))
    picked = Selection(dom, features.new_ones(b, dominant), gather_tokens(features, dom))
    rest = in_token_order(order[:, dominant:])  # [B, M] in raster order
    m = rest.shape[1]
    step = max(1, m // contextual)
    target_at = list(range(0, m, step))[:contextual]
    other_at = sorted(set(range(m)) - set(target_at))
    targets = torch.index_select(rest, 1, torch.tensor(target_at, dtype=torch.int64, device=rest.device))  # [B, c]
    if not other_at:  # every remaining token is a target: nothing to merge
        return raster_order(Selection(torch.cat((dom, targets), 1), features.new_ones(b, k), gather_tokens(features, torch.cat((dom, targets), 1))))
    others = torch.index_select(rest, 1, torch.tensor(other_at, dtype=torch.int64, device=rest.device))  # [B, M - c]
    similarity = gather_tokens(unit, others) @ gather_tokens(unit, targets).transpose(1, 2)  # [B, M-c, c]
    assign_t = one_hot(similarity.argmax(dim=-1), contextual, features.dtype).transpose(1, 2)  # [B, c, M-c]
    counts = 1.0 + assign_t.sum(dim=-1)  # [B, c]
    merged = (gather_tokens(features, targets) + assign_t @ gather_tokens(features, others)) / counts.unsqueeze(-1)
    both = Selection(torch.cat((dom, targets), 1), torch.cat((picked.sizes, counts), 1), torch.cat((picked.tokens, merged), 1))
    return raster_order(both)


def _arange_like(t: Tensor) -> Tensor:
    b, n = t.shape[:2]
    if n >= TOPK_LIMIT:
        raise ValueError(f"cannot rank {n} tokens in one TopK (TensorRT needs K < {TOPK_LIMIT})")
    return torch.arange(n, device=t.device).expand(b, n)
