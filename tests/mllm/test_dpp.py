"""The exported greedy DPP picks what a float64 NumPy greedy MAP picks (was scripts/check_dpp.py).

The module relevance -> kernel -> greedy_dpp (inputs ``joint`` [1, N, 768], ``similar`` [1, N, 4096],
``query`` [1, 768]; output ``picks`` [1, K] in greedy order, LLaVA-1.5 shapes) is exported to ONNX once
(static K = 64, static batch 1: a symbolic batch axis makes the exporter several times slower on K
unrolled steps; the dynamic-batch export of the same function is checked in tests/mllm/test_select.py).
Inputs of every kind are run through (a) eager float32 PyTorch, (b) ONNX Runtime and (c)
:func:`edgeprune.mllm.reference.greedy_map_reference` on the float64 kernel, and the K picks are compared
as sequences: ONNX must equal eager, and a divergence from the reference is allowed only where the
reference's best and second-best gains are tied within float32 rounding of the kernel's scale (its gap
times the best gain, relative to the largest initial gain, < 1e-6). The full study (100 inputs,
K = 64, 128, 192) is recorded in docs/results/dpp_reference.json: K = 64 matched on all 100.

Inputs: ``random`` — Gaussian joint and diversity features, a random unit query; ``clustered`` — tokens
are one of a few centres plus noise in both spaces (real patch features are redundant); ``duplicated``
— random tokens of which a quarter are exact copies of others.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.backends.graph import load_graph, safety_problems
from edgeprune.backends.ort import OrtRunner
from edgeprune.backends.trt_lint import DEFAULT_TRT, lint_model, summarize
from edgeprune.exporting.onnx_export import trace_to_onnx
from edgeprune.mllm.reference import greedy_map_reference, kernel_reference, relevance_reference
from edgeprune.mllm.select import cosine_normalize, dpp_kernel, greedy_dpp, relevance

pytestmark = [pytest.mark.heavy, pytest.mark.usefixtures("one_torch_thread")]

N, D_JOINT, D_SIMILAR = 576, 768, 4096  # LLaVA-1.5: 24 x 24 patches, CLIP joint width, projector width
NEAR_TIE = 1e-5
# Secondary, informational: the gap at the divergence step relative to the largest initial gain. A gain is
# computed as diag - sum(column^2), so its float32 error is absolute on the diagonal's scale (~1e-7 of the
# largest diagonal entry per operation), however much the gain itself has shrunk; below 1e-6 (about 8
# float32 ulps of that scale) a flip is within rounding even when the relative gap is larger than 1e-5.
SCALE_TIE = 1e-6
# How the 100 inputs split between kinds: seeds [0, 50) random, [50, 80) clustered, [80, 100) duplicated.
KINDS = (("random", 0.5), ("clustered", 0.3), ("duplicated", 0.2))


class DppPicks(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, joint: torch.Tensor, similar: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return greedy_dpp(dpp_kernel(cosine_normalize(similar), relevance(joint, query)), self.k)


def kind_of(seed: int, count: int) -> str:
    edge = 0.0
    for kind, share in KINDS:
        edge += share * count
        if seed < round(edge):
            return kind
    return KINDS[-1][0]


def make_input(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """joint [N, 768], similar [N, 4096], unit query [768] (float32), and what was drawn."""
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"seed": seed, "kind": kind}
    if kind == "clustered":
        centres = int(rng.integers(4, 17))
        noise = float(rng.choice([0.1, 0.3, 0.6]))
        assign = rng.integers(0, centres, N)
        joint = rng.standard_normal((centres, D_JOINT))[assign] + noise * rng.standard_normal((N, D_JOINT))
        similar = rng.standard_normal((centres, D_SIMILAR))[assign] + noise * rng.standard_normal((N, D_SIMILAR))
        info.update(centres=centres, noise=noise)
    else:
        joint = rng.standard_normal((N, D_JOINT))
        similar = rng.standard_normal((N, D_SIMILAR))
        if kind == "duplicated":
            copies = N // 4
            dst = rng.choice(N, copies, replace=False)
            src = rng.choice(np.setdiff1d(np.arange(N), dst), copies, replace=True)
            joint[dst], similar[dst] = joint[src], similar[src]
            info.update(copies=copies)
    query = rng.standard_normal(D_JOINT)
    query /= np.linalg.norm(query)
    return joint.astype(np.float32), similar.astype(np.float32), query.astype(np.float32), info


def first_divergence(a: Sequence[int], b: Sequence[int]) -> Optional[int]:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def reference_with_gains(kernel: np.ndarray, k: int) -> tuple[list[int], list[float], np.ndarray]:
    picks, gaps = greedy_map_reference(kernel, k)
    # The best gain at every step, to put the relative gap on the kernel's absolute scale.
    gains = np.diag(kernel).copy()
    best = np.empty(k)
    factor = np.zeros((0, kernel.shape[0]))
    for step, p in enumerate(picks):
        best[step] = gains[p]
        if step == k - 1:
            break
        column = (kernel[p] - factor[:, p] @ factor) / np.sqrt(max(gains[p], 1e-10))
        factor = np.vstack([factor, column])
        gains = gains - column**2
        gains[p] = -np.inf
    return picks, gaps, best


K = 64
COUNT = 100  # the study's seed split between kinds; the test takes every 8th seed (13 inputs, all kinds)
SEEDS = range(0, COUNT, 8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("dpp") / f"dpp_k{K}.onnx"
    rng = np.random.default_rng(12345)
    args = tuple(torch.from_numpy(rng.standard_normal(s).astype(np.float32))
                 for s in ((1, N, D_JOINT), (1, N, D_SIMILAR), (1, D_JOINT)))
    trace_to_onnx(DppPicks(K), args, path, input_names=["joint", "similar", "query"], output_names=["picks"])
    runner = OrtRunner(path, threads=1)
    runner.activate()
    yield path, runner
    runner.deactivate()


def test_graph_is_safe_and_lints_clean_for_tensorrt(exported):
    graph = load_graph(exported[0])
    assert not safety_problems(graph)
    assert summarize(lint_model(graph, DEFAULT_TRT))["errors"] == 0


def test_picks_match_eager_and_the_float64_reference(exported):
    runner = exported[1]
    kinds = {kind_of(s, COUNT) for s in SEEDS}
    assert kinds == {kind for kind, _ in KINDS}
    for seed in SEEDS:
        joint, similar, query, info = make_input(seed, kind_of(seed, COUNT))
        kernel = kernel_reference(similar, relevance_reference(joint, query))
        max_gain = float(np.diag(kernel).max())
        ref, gaps, ref_gains = reference_with_gains(kernel, K)
        with torch.no_grad():
            eager = DppPicks(K)(torch.from_numpy(joint)[None], torch.from_numpy(similar)[None],
                                torch.from_numpy(query)[None])[0].tolist()
        onnx = runner.infer({"joint": joint[None], "similar": similar[None], "query": query[None]})["picks"][0].tolist()
        assert onnx == eager, (info, first_divergence(onnx, eager))
        step = first_divergence(onnx, ref)
        if step is not None:  # only a tie within float32 rounding of the kernel's scale may flip a pick
            assert ref_gains[step] * gaps[step] / max_gain < SCALE_TIE, (info, step, gaps[step])
            assert set(onnx) == set(ref), info
