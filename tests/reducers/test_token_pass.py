"""Token pass: which tokens continue, what is parked, and that ``where`` puts every patch back."""

from __future__ import annotations

import pytest
import torch

from edgeprune.reducers import ReductionContext
from edgeprune.reducers.common import gather_tokens
from edgeprune.reducers.token_pass import pass_tokens

BATCH, DIM, HEADS = 3, 12, 2


def make_inputs(seed: int, prefix: int, n_tok: int, **options):
    gen = torch.Generator().manual_seed(seed)
    n = prefix + n_tok
    x_in = torch.randn(BATCH, n, DIM, generator=gen)
    x = x_in + 0.5 * torch.randn(BATCH, n, DIM, generator=gen)  # what attention made of it
    size = torch.randint(1, 4, (BATCH, n, 1), generator=gen).float()
    q = torch.randn(BATCH, HEADS, n, DIM // HEADS, generator=gen)
    k = torch.randn(BATCH, HEADS, n, DIM // HEADS, generator=gen)
    return x, x_in, size, ReductionContext(q, k, (DIM // HEADS) ** -0.5, prefix, options=options)


CASES = [(16, 1), (16, 8), (16, 15), (17, 5), (17, 12)]
SIGNALS = ["redundancy", "update"]


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("prefix", [0, 1, 5])
@pytest.mark.parametrize("n_tok,keep", CASES)
def test_active_parked_and_where(signal, prefix, n_tok, keep):
    x, x_in, size, ctx = make_inputs(prefix * 100 + n_tok * 10 + keep, prefix, n_tok, pass_signal=signal)
    out, out_size, parked, where, anchor, anchor_then = pass_tokens(x, x_in, size, ctx, keep)
    m = n_tok - keep
    assert out.shape == (BATCH, prefix + keep, DIM) and out_size.shape == (BATCH, prefix + keep, 1)
    assert parked.shape == (BATCH, m, DIM)
    assert where.shape == (BATCH, n_tok) and where.dtype == torch.int64
    assert anchor.shape == (BATCH, m) and anchor_then.shape == (BATCH, m, DIM)
    assert torch.equal(out[:, :prefix], x[:, :prefix])
    assert torch.equal(out_size[:, :prefix], size[:, :prefix])
    tok, tok_in, s_tok = x[:, prefix:], x_in[:, prefix:], size[:, prefix:]
    for b in range(BATCH):
        # where is a permutation of cat(active, parked) slots.
        assert sorted(where[b].tolist()) == list(range(n_tok))
        active = [i for i in range(n_tok) if int(where[b, i]) < keep]
        stopped = [i for i in range(n_tok) if int(where[b, i]) >= keep]
        assert len(active) == keep
        # Active tokens continue with their current features, in token order; parked ones keep the
        # features they entered the block with, also in token order.
        assert [int(where[b, i]) for i in active] == list(range(keep))
        assert [int(where[b, i]) for i in stopped] == list(range(keep, n_tok))
        assert torch.equal(out[b, prefix:], tok[b, active])
        assert torch.equal(out_size[b, prefix:], s_tok[b, active])
        assert torch.equal(parked[b], tok_in[b, stopped])
        # Anchors index active tokens: the most similar one (block-input features, cosine).
        assert int(anchor[b].min()) >= 0 and int(anchor[b].max()) < keep
        unit = tok_in[b] / tok_in[b].norm(dim=-1, keepdim=True)
        for j, i in enumerate(stopped):
            sims = unit[active] @ unit[i]
            assert int(anchor[b, j]) == int(sims.argmax())
            assert torch.equal(anchor_then[b, j], tok_in[b, active[int(anchor[b, j])]])
    # One gather by `where` over cat(active, parked) gives every patch its token back.
    restored = gather_tokens(torch.cat((out[:, prefix:], parked), dim=1), where)
    expected = torch.where((where < keep).unsqueeze(-1), tok, tok_in)
    assert torch.equal(restored, expected)


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_update_signal_keeps_the_most_changed_tokens(prefix):
    n_tok, keep = 16, 5
    x, x_in, size, ctx = make_inputs(7, prefix, n_tok, pass_signal="update")
    x = x_in.clone()
    moved = [1, 4, 6, 11, 15]
    for rank, i in enumerate(moved):
        x[:, prefix + i] += (3.0 + rank) * x_in[:, prefix + i].norm(dim=-1, keepdim=True) / DIM**0.5
    x[:, prefix:] += 1e-3 * torch.randn_like(x[:, prefix:])
    out, _, _, where, _, _ = pass_tokens(x, x_in, size, ctx, keep)
    for b in range(BATCH):
        assert [i for i in range(n_tok) if int(where[b, i]) < keep] == moved


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_redundancy_signal_parks_near_duplicate_keys(prefix):
    n_tok = 16
    x, x_in, size, ctx = make_inputs(9, prefix, n_tok)
    k = ctx.k.clone()
    # Patch 3 duplicates patch 2 and patch 9 duplicates patch 8 (in the head-mean keys).
    for dst, src in ((3, 2), (9, 8)):
        k[:, :, prefix + dst] = k[:, :, prefix + src] + 1e-3 * torch.randn_like(k[:, :, prefix + src])
    ctx = ReductionContext(ctx.q, k, ctx.scale, prefix)
    _, _, _, where, _, _ = pass_tokens(x, x_in, size, ctx, n_tok - 4)
    for b in range(BATCH):
        assert [i for i in range(n_tok) if int(where[b, i]) >= n_tok - 4] == [2, 3, 8, 9]


@pytest.mark.parametrize("signal", SIGNALS)
def test_batch_elements_independent(signal):
    x, x_in, size, ctx = make_inputs(21, 1, 17, pass_signal=signal)
    full = pass_tokens(x, x_in, size, ctx, 6)
    for b in range(BATCH):
        one = ReductionContext(ctx.q[b : b + 1], ctx.k[b : b + 1], ctx.scale, 1, options=ctx.options)
        single = pass_tokens(x[b : b + 1], x_in[b : b + 1], size[b : b + 1], one, 6)
        for got, ref in zip(single, full):
            if ref.is_floating_point():
                torch.testing.assert_close(got[0], ref[b])
            else:
                assert torch.equal(got[0], ref[b])


@pytest.mark.parametrize("keep", [0, -1, 16, 17])
def test_rejects_keep_out_of_range(keep):
    x, x_in, size, ctx = make_inputs(1, 1, 16)
    with pytest.raises(ValueError, match="a pass keeps 1..15 of 16"):
        pass_tokens(x, x_in, size, ctx, keep)
