import pytest
import torch

from edgeprune.reducers import ReductionContext, gsp_prune
from edgeprune.reducers.gsp import redundancy_scores


def ctx_for(x, prefix, **options):
    b, n, c = x.shape
    return ReductionContext(torch.randn(b, 1, n, c), torch.randn(b, 1, n, c), c**-0.5, prefix, options=options)


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_drops_duplicated_sources_first(prefix):
    torch.manual_seed(1)
    n_tok, dim = 16, 32
    x = torch.randn(2, prefix + n_tok, dim)
    tok = x[:, prefix:]
    # Sources 0, 2 and 4 (A tokens 0..2) become copies of target 1: clearly the most redundant.
    for a in (0, 2, 4):
        tok[:, a] = tok[:, 1] + 1e-3 * torch.randn_like(tok[:, 1])
    size = torch.ones(2, prefix + n_tok, 1)
    out, out_size, _ = gsp_prune(x, size, ctx_for(x, prefix), keep=n_tok - 3)
    assert out.shape == (2, prefix + n_tok - 3, dim)
    torch.testing.assert_close(out[:, :prefix], x[:, :prefix])
    torch.testing.assert_close(out_size.sum(1), size.sum(1))
    for b in range(2):
        kept = out[b, prefix:]
        for a in (0, 2, 4):
            assert not any(torch.equal(row, tok[b, a]) for row in kept)
        # The three dropped sources hand their size to target 1, their nearest neighbour.
        target_row = [i for i, row in enumerate(kept) if torch.equal(row, tok[b, 1])][0]
        assert out_size[b, prefix + target_row, 0] == 4


def test_threshold_counts_only_strong_edges():
    sim = torch.tensor([[[0.9, 0.1], [0.4, 0.3]]])
    scores = redundancy_scores(sim, torch.tensor(0.35).view(1, 1, 1))
    torch.testing.assert_close(scores, torch.tensor([[0.9 + 0.9, 0.4 + 0.4]]))


def test_multi_round_and_absolute_threshold():
    x = torch.randn(2, 1 + 40, 8)
    out, size, _ = gsp_prune(x, torch.ones(2, 41, 1), ctx_for(x, 1, gsp_threshold=0.2), keep=5)
    assert out.shape == (2, 6, 8) and size.sum().item() == 2 * 41


def test_batch_independent():
    x = torch.randn(3, 1 + 24, 8)
    size = torch.ones(3, 25, 1)
    out, _, _ = gsp_prune(x, size, ctx_for(x, 1), keep=10)
    single, _, _ = gsp_prune(x[2:3], size[2:3], ctx_for(x[2:3], 1), keep=10)
    torch.testing.assert_close(single[0], out[2])
