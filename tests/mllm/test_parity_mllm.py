"""Multimodal selection method x family (was scripts/parity_mllm.py): ONNX Runtime vs eager PyTorch.

Each (family, method) exports once with a dynamic batch axis, which checks parity at batch 1 and 2 on
fresh random inputs (visual tokens within 1e-4 relative, patch indices and grid positions identical; see
``edgeprune.mllm.export.check_visual_parity``) and lints the graph for TensorRT. The CLIP families'
query-conditioned graphs get a real (tiny) CLIP text tower and its ``visual_projection``; SigLIP's query
lives in the tower's own width. Every method runs on LLaVA-1.5 (CLIP); SigLIP + projector and
LLaVA-NeXT (3 pieces) run the unreduced graph and one selector each, to stay within the heavy budget
(the full matrix is recorded in docs/results/mllm_parity.json).
"""

from __future__ import annotations

import json

import pytest

from edgeprune.mllm.configs import small_clip_query, small_llava
from edgeprune.mllm.export import export_visual
from edgeprune.mllm.graph import METHODS, QUERY_METHODS
from edgeprune.mllm.llava import llava_parts

pytestmark = [pytest.mark.heavy, pytest.mark.usefixtures("one_torch_thread")]

TOKENS, CROP_TOKENS = 16, 8
CASES = [("llava-clip", m) for m in METHODS] + [("llava-siglip", "none"), ("llava-siglip", "qcsp"),
                                                 ("llava-next", "none"), ("llava-next", "visionzip")]


@pytest.fixture(scope="module")
def clip_query(tmp_path_factory):
    return small_clip_query(tmp_path_factory.mktemp("clip") / "clip")


@pytest.mark.parametrize("family, method", CASES)
def test_visual_graph_matches_eager_at_batch_1_and_2(family, method, clip_query, tmp_path):
    parts = llava_parts(small_llava(family))
    query = clip_query if method in QUERY_METHODS and family != "llava-siglip" else None
    tokens = None if method == "none" else TOKENS
    path = export_visual(parts, method, tmp_path / f"{family}-{method}", tokens=tokens,
                         crop_tokens=None if tokens is None else CROP_TOKENS,
                         pieces=3 if family == "llava-next" else 1, query_folder=query, dynamic_batch=True)
    manifest = json.loads((path / "manifest.json").read_text())
    parity, lint = manifest["parity"], manifest["trt_lint"]
    assert sorted(parity["batches"]) == ["1", "2"], parity
    assert parity["max"] <= 1e-4, parity
    assert parity["indices_identical"], parity
    assert lint["errors"] == 0, lint
