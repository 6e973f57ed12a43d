import pytest
import torch

from edgeprune.reducers import ReductionContext, evit_prune


def make(prefix, n_tok=20, batch=2, heads=2, dim=8):
    torch.manual_seed(prefix + n_tok)
    n = prefix + n_tok
    x = torch.randn(batch, n, dim)
    q, k = torch.randn(batch, heads, n, dim // heads), torch.randn(batch, heads, n, dim // heads)
    return x, torch.ones(batch, n, 1), ReductionContext(q, k, (dim // heads) ** -0.5, prefix)


@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
def test_keeps_most_attended_and_fuses_the_rest(prefix):
    x, size, ctx = make(prefix)
    keep = 6
    out, out_size, _ = evit_prune(x, size, ctx, keep)
    assert out.shape == (2, prefix + keep, 8)
    torch.testing.assert_close(out[:, :prefix], x[:, :prefix])
    torch.testing.assert_close(out_size.sum(1), size.sum(1))
    attention = ctx.query_attention()[:, prefix:]
    for b in range(2):
        top = torch.topk(attention[b], keep - 1).indices.sort().values  # kept in token order
        torch.testing.assert_close(out[b, prefix : prefix + keep - 1], x[b, prefix:][top])
        rest = torch.ones(20, dtype=torch.bool)
        rest[top] = False
        w = attention[b][rest]
        fused = (x[b, prefix:][rest] * w[:, None]).sum(0) / w.sum()
        torch.testing.assert_close(out[b, -1], fused)
        assert out_size[b, -1, 0] == rest.sum()


def test_query_attention_uses_cls_or_mean_query():
    x, size, ctx = make(1)
    row = ((ctx.q[:, :, :1] * ctx.scale) @ ctx.k.transpose(-1, -2)).softmax(-1).mean(1)[:, 0]
    torch.testing.assert_close(ctx.query_attention(), row)
    x, size, ctx = make(0)
    row = ((ctx.q.mean(2, keepdim=True) * ctx.scale) @ ctx.k.transpose(-1, -2)).softmax(-1).mean(1)[:, 0]
    torch.testing.assert_close(ctx.query_attention(), row)
    # Registers without a CLS token: the patch tokens' mean query, not a register's.
    x, size, ctx = make(4)
    ctx.class_token = False
    row = ((ctx.q[:, :, 4:].mean(2, keepdim=True) * ctx.scale) @ ctx.k.transpose(-1, -2)).softmax(-1).mean(1)[:, 0]
    torch.testing.assert_close(ctx.query_attention(), row)


def test_noop_and_minimum():
    x, size, ctx = make(1)
    out, _, _ = evit_prune(x, size, ctx, 20)
    assert out is x
    with pytest.raises(ValueError):
        evit_prune(x, size, ctx, 1)


def test_batch_independent():
    x, size, ctx = make(1, batch=3)
    out, _, _ = evit_prune(x, size, ctx, 5)
    one = ReductionContext(ctx.q[1:2], ctx.k[1:2], ctx.scale, 1)
    single, _, _ = evit_prune(x[1:2], size[1:2], one, 5)
    torch.testing.assert_close(single[0], out[1])


def test_kept_tokens_stay_in_token_order():
    from edgeprune.reducers.common import in_token_order

    idx = torch.tensor([[5, 1, 9, 3], [0, 7, 2, 4]])
    assert in_token_order(idx).tolist() == [[1, 3, 5, 9], [0, 2, 4, 7]]
    # Markers in the features reveal which patch each output token came from.
    x, size, ctx = make(1)
    x[:, :, 0] = torch.arange(21, dtype=torch.float32)
    out, _, _ = evit_prune(x, size, ctx, 8)
    origin = out[:, 1:-1, 0]
    assert (origin[:, 1:] > origin[:, :-1]).all()
