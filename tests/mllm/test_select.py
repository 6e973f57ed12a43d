"""Visual-token selectors: the greedy DPP against the float64 reference, its ONNX export, and the
selectors' contracts (raster order, distinct indices, sizes summing to N, batch independence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprune.backends.ort import OrtRunner
from edgeprune.backends.trt_lint import lint_model
from edgeprune.exporting.onnx_export import trace_to_onnx
from edgeprune.backends.graph import load_graph, safety_problems
from edgeprune.mllm.reference import greedy_map_reference, kernel_reference, relevance_reference
from edgeprune.mllm.select import (
    Selection,
    cosine_normalize,
    dpp_kernel,
    gsp_select,
    greedy_dpp,
    qcsp_select,
    relevance,
    script_select,
    visionzip_select,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_kernel_inputs(seed: int, batch: int, n: int, d: int, dq: int = 16):
    """joint [B, N, dq], similar [B, N, d], unit query [B, dq] (float32), from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    joint = torch.randn(batch, n, dq, generator=gen)
    similar = torch.randn(batch, n, d, generator=gen)
    query = torch.nn.functional.normalize(torch.randn(batch, dq, generator=gen), dim=-1)
    return joint, similar, query


def torch_kernel(joint, similar, query):
    return dpp_kernel(cosine_normalize(similar), relevance(joint, query))


def check_selection(sel: Selection, n: int, k: int, batch: int, raster: bool = True) -> None:
    """Shapes, distinct in-range indices (ascending: raster order, when ``raster``), sizes >= 1 summing to N."""
    assert sel.index.shape == (batch, k) and sel.sizes.shape == (batch, k)
    assert sel.index.dtype == torch.int64
    idx = sel.index if raster else sel.index.sort(dim=1).values
    assert bool((idx[:, 1:] > idx[:, :-1]).all()), f"indices not strictly ascending: {sel.index.tolist()}"
    assert bool(((idx >= 0) & (idx < n)).all())
    torch.testing.assert_close(sel.sizes.sum(dim=1), torch.full((batch,), float(n)), atol=1e-4, rtol=0)
    assert bool((sel.sizes >= 1 - 1e-6).all()), f"a kept token stands for < 1 patch: {sel.sizes.tolist()}"


def check_batch_independent(select, inputs: tuple, batch: int) -> None:
    """Row b of the batched selection equals selecting row b alone."""
    whole = select(*inputs)
    for b in range(batch):
        alone = select(*(t[b:b + 1] for t in inputs))
        assert torch.equal(whole.index[b:b + 1], alone.index), f"row {b}: indices depend on the batch"
        torch.testing.assert_close(whole.sizes[b:b + 1], alone.sizes)
        if whole.tokens is not None:
            torch.testing.assert_close(whole.tokens[b:b + 1], alone.tokens)


# ---------------------------------------------------------------------------------- greedy DPP


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_dpp_equals_float64_reference(seed):
    n, d, k, batch = 40, 64, 12, 3
    joint, similar, query = random_kernel_inputs(seed, batch, n, d)
    kernel = torch_kernel(joint, similar, query)
    picks = greedy_dpp(kernel, k)
    assert picks.shape == (batch, k) and picks.dtype == torch.int64
    for b in range(batch):
        ref_kernel = kernel_reference(similar[b].numpy(), relevance_reference(joint[b].numpy(), query[b].numpy()))
        ref, gaps = greedy_map_reference(ref_kernel, k)
        # These seeds have no near-tie, so the float32 picks must equal the reference's, in order.
        assert min(gaps) > 1e-4, f"seed {seed} row {b} has a near-tie (gap {min(gaps):.1e}): pick another seed"
        assert picks[b].tolist() == ref, f"seed {seed} row {b}: {picks[b].tolist()} != reference {ref}"
        assert torch.equal(greedy_dpp(kernel[b:b + 1], k), picks[b:b + 1]), f"row {b} depends on the batch"


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_dpp_picks_distinct_past_the_kernel_rank(seed):
    n, d, k = 40, 4, 10  # rank <= 4 < K: the last picks are made on gains that are ~0
    joint, similar, query = random_kernel_inputs(seed, 2, n, d)
    kernel = torch_kernel(joint, similar, query)
    zero = torch.zeros(1, n, n)  # no rank at all: every gain is 0 from the start
    for kern in (kernel, zero):
        picks = greedy_dpp(kern, k)
        assert picks.shape == (kern.shape[0], k)
        for row in picks.tolist():
            assert len(set(row)) == k, f"repeated pick: {row}"
            assert all(0 <= p < n for p in row)
    # Within the rank the picks still follow the reference.
    ref, _ = greedy_map_reference(kernel_reference(similar[0].numpy(),
                                                   relevance_reference(joint[0].numpy(), query[0].numpy())), d)
    assert greedy_dpp(kernel[:1], d)[0].tolist() == ref


def test_greedy_dpp_bad_k():
    with pytest.raises(ValueError):
        greedy_dpp(torch.zeros(1, 5, 5), 6)
    with pytest.raises(ValueError):
        greedy_dpp(torch.zeros(1, 5, 5), 0)


class GreedyDpp(torch.nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, kernel):
        return greedy_dpp(kernel, self.k)


def test_greedy_dpp_onnx_export_matches_eager(tmp_path):
    n, k = 40, 8
    path = tmp_path / "dpp.onnx"
    kernel2 = torch_kernel(*random_kernel_inputs(10, 2, n, 64))
    trace_to_onnx(GreedyDpp(k), (kernel2,), path, input_names=["kernel"], output_names=["picks"],
                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    graph = load_graph(path)
    assert not graph.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"), "batch axis specialized"
    assert safety_problems(graph) == []
    errors = [f for f in lint_model(graph, "10.0") if f.severity == "error"]
    assert errors == [], errors
    with OrtRunner(path, threads=1) as runner:
        for batch, seed in ((1, 11), (2, 12)):
            kernel = torch_kernel(*random_kernel_inputs(seed, batch, n, 64))
            got = runner.infer({"kernel": kernel.numpy()})["picks"]
            assert got.shape == (batch, k)
            assert got.tolist() == greedy_dpp(kernel, k).tolist(), f"ONNX != eager at batch {batch}"


# ---------------------------------------------------------------------------------- selectors


def test_qcsp_select_contract():
    n, k, batch = 48, 10, 3
    joint, similar, query = random_kernel_inputs(20, batch, n, 32)
    sel = qcsp_select(joint, similar, query, k)
    check_selection(sel, n, k, batch)
    assert sel.tokens is None
    check_batch_independent(lambda j, s, q: qcsp_select(j, s, q, k), (joint, similar, query), batch)


def test_qcsp_query_on_a_token_picks_it_first():
    n, k, target = 48, 10, 29
    joint, similar, query = random_kernel_inputs(21, 1, n, 32)
    query = torch.nn.functional.normalize(joint[:, target], dim=-1)
    rel = relevance(joint, query)
    assert float(rel[0, target]) == pytest.approx(1.0, abs=1e-6)
    assert int(rel[0].argmax()) == target
    kernel = torch_kernel(joint, similar, query)
    assert int(greedy_dpp(kernel, k)[0, 0]) == target
    sel = qcsp_select(joint, similar, query, k)
    assert target in sel.index[0].tolist()


def test_gsp_select_contract():
    n, k, batch = 48, 11, 3
    features = torch.randn(batch, n, 24, generator=torch.Generator().manual_seed(30))
    sel = gsp_select(features, k)
    check_selection(sel, n, k, batch)
    check_batch_independent(lambda f: gsp_select(f, k), (features,), batch)


def test_script_select_contract():
    n, k, survivors, batch = 48, 10, 24, 3
    gen = torch.Generator().manual_seed(40)
    features = torch.randn(batch, n, 24, generator=gen)
    joint, similar, query = random_kernel_inputs(41, batch, n, 32)
    sel = script_select(features, joint, similar, query, k, survivors)
    check_selection(sel, n, k, batch, raster=True)
    check_batch_independent(lambda f, j, s, q: script_select(f, j, s, q, k, survivors),
                            (features, joint, similar, query), batch)
    with pytest.raises(ValueError):
        script_select(features, joint, similar, query, k, k - 1)


def test_script_with_every_token_surviving_is_qcsp():
    n, k, batch = 48, 10, 2
    features = torch.randn(batch, n, 24, generator=torch.Generator().manual_seed(50))
    joint, similar, query = random_kernel_inputs(51, batch, n, 32)
    script = script_select(features, joint, similar, query, k, survivors=n)
    qcsp = qcsp_select(joint, similar, query, k)
    assert torch.equal(script.index, qcsp.index)
    torch.testing.assert_close(script.sizes, qcsp.sizes)


def test_visionzip_select_contract():
    n, k, dominant, batch, c = 48, 12, 5, 3, 16
    gen = torch.Generator().manual_seed(60)
    features = torch.randn(batch, n, c, generator=gen)
    attention = torch.randn(batch, n, generator=gen).softmax(dim=-1)
    keys = torch.randn(batch, n, 8, generator=gen)
    sel = visionzip_select(features, attention, keys, k, dominant)
    check_selection(sel, n, k, batch)
    assert sel.tokens.shape == (batch, k, c)
    for b in range(batch):
        top = set(torch.topk(attention[b], dominant).indices.tolist())
        kept = sel.index[b].tolist()
        assert top <= set(kept), f"row {b}: dominant tokens {sorted(top)} not all kept in {kept}"
        for j, i in enumerate(kept):
            if i in top:  # a dominant token stays as it is
                assert float(sel.sizes[b, j]) == 1.0
                torch.testing.assert_close(sel.tokens[b, j], features[b, i])
    check_batch_independent(lambda f, a, kk: visionzip_select(f, a, kk, k, dominant), (features, attention, keys), batch)


def test_visionzip_merges_by_hand():
    """N = 8, dominant 2, K = 4. Attention makes tokens 3 and 6 dominant; the other six (0 1 2 4 5 7)
    are spaced by 6 // 2 = 3, so the targets are tokens 0 and 4. Keys put 1 and 2 next to 0 and 5, 7
    next to 4: the contextual tokens are mean(f0, f1, f2) and mean(f4, f5, f7), three patches each."""
    n = 8
    features = torch.arange(n * 3, dtype=torch.float32).reshape(1, n, 3) ** 1.5
    attention = torch.full((1, n), 0.05)
    attention[0, 3], attention[0, 6] = 0.4, 0.3
    east, north = torch.tensor([1.0, 0.1]), torch.tensor([0.1, 1.0])
    keys = torch.stack([east, east * 2, east + 0.05, north * 3, north, north + 0.02, east - north, north * 0.5])[None]
    keys[0, 6] = torch.tensor([-1.0, -1.0])  # token 6 is dominant: its key must not matter
    sel = visionzip_select(features, attention, keys, 4, 2)
    assert sel.index.tolist() == [[0, 3, 4, 6]]
    assert sel.sizes.tolist() == [[3.0, 1.0, 3.0, 1.0]]
    f = features[0]
    expected = torch.stack([(f[0] + f[1] + f[2]) / 3, f[3], (f[4] + f[5] + f[7]) / 3, f[6]])
    torch.testing.assert_close(sel.tokens[0], expected)


def test_visionzip_only_dominant():
    n, k = 16, 4
    gen = torch.Generator().manual_seed(70)
    features, attention, keys = torch.randn(2, n, 6, generator=gen), torch.rand(2, n, generator=gen), torch.randn(2, n, 4, generator=gen)
    sel = visionzip_select(features, attention, keys, k, dominant=k)
    for b in range(2):
        assert sel.index[b].tolist() == sorted(torch.topk(attention[b], k).indices.tolist())
    check_selection(sel, n, k, 2)


def test_visionzip_keeps_everything_when_k_is_n():
    n = 8
    gen = torch.Generator().manual_seed(80)
    features, attention, keys = torch.randn(1, n, 3, generator=gen), torch.rand(1, n, generator=gen), torch.randn(1, n, 2, generator=gen)
    sel = visionzip_select(features, attention, keys, n, 2)
    assert sel.index.tolist() == [list(range(n))]
    assert sel.sizes.tolist() == [[1.0] * n]
    torch.testing.assert_close(sel.tokens, features)
