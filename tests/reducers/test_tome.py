import pytest
import torch

from edgeprune.reducers import ReductionContext, tome_merge
from edgeprune.reducers.tome import bipartite_merge_round


def reference_round(x, size, metric, r, p):
    """Straightforward per-sample loop version of one ToMe round (the spec the fast one must meet)."""
    outs, sizes = [], []
    for b in range(x.shape[0]):
        tok, s, m = x[b, p:], size[b, p:], metric[b, p:]
        a_idx, b_idx = list(range(0, len(tok), 2)), list(range(1, len(tok), 2))
        mn = m / m.norm(dim=-1, keepdim=True)
        sim = mn[a_idx] @ mn[b_idx].T
        best, dst = sim.max(dim=-1)
        order = torch.argsort(best, descending=True)
        src, unm = order[:r], order[r:].sort().values  # unmerged A tokens keep their order
        xb, sb = tok[b_idx] * s[b_idx], s[b_idx].clone()
        for i in src.tolist():
            xb[dst[i]] += tok[a_idx[i]] * s[a_idx[i]]
            sb[dst[i]] += s[a_idx[i]]
        outs.append(torch.cat([x[b, :p], tok[a_idx][unm], xb / sb]))
        sizes.append(torch.cat([size[b, :p], s[a_idx][unm], sb]))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize("prefix", [0, 1, 5])
@pytest.mark.parametrize("n_tok,r", [(16, 3), (17, 9), (16, 8)])
def test_round_matches_reference(prefix, n_tok, r):
    torch.manual_seed(prefix * 100 + n_tok + r)
    x = torch.randn(3, prefix + n_tok, 12, dtype=torch.float64)
    size = torch.randint(1, 4, (3, prefix + n_tok, 1)).double()
    metric = torch.randn(3, prefix + n_tok, 6, dtype=torch.float64)
    got_x, got_s, _, _ = bipartite_merge_round(x, size, metric, r, prefix)
    ref_x, ref_s = reference_round(x, size, metric, r, prefix)
    torch.testing.assert_close(got_x, ref_x)
    torch.testing.assert_close(got_s, ref_s)


def context(x, prefix, heads=2):
    b, n, c = x.shape
    q = torch.randn(b, heads, n, c // heads)
    k = torch.randn(b, heads, n, c // heads)
    return ReductionContext(q, k, (c // heads) ** -0.5, prefix)


@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
def test_merge_keeps_prefix_mass_and_shape(prefix):
    x = torch.randn(2, prefix + 30, 8)
    size = torch.ones(2, prefix + 30, 1)
    ctx = context(x, prefix)
    out, out_size, _ = tome_merge(x, size, ctx, keep=7)  # more than half: several rounds
    assert out.shape == (2, prefix + 7, 8)
    torch.testing.assert_close(out[:, :prefix], x[:, :prefix])
    torch.testing.assert_close(out_size.sum(dim=1), size.sum(dim=1))
    # The size-weighted sum of features is what merging preserves.
    torch.testing.assert_close((out * out_size)[:, prefix:].sum(1), x[:, prefix:].sum(1), rtol=1e-4, atol=1e-4)


def test_batch_elements_are_independent():
    x = torch.randn(3, 21, 8)
    size = torch.ones(3, 21, 1)
    ctx = context(x, 1)
    out, out_size, _ = tome_merge(x, size, ctx, keep=9)
    for b in range(3):
        one = ReductionContext(ctx.q[b : b + 1], ctx.k[b : b + 1], ctx.scale, 1)
        single, single_size, _ = tome_merge(x[b : b + 1], size[b : b + 1], one, keep=9)
        torch.testing.assert_close(single[0], out[b])
        torch.testing.assert_close(single_size[0], out_size[b])


def test_round_rejects_impossible_r():
    x = torch.randn(1, 11, 4)
    with pytest.raises(ValueError):
        bipartite_merge_round(x, torch.ones(1, 11, 1), x, 6, 1)
