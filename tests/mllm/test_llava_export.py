"""LLaVA-family front-ends: features equal HF's, every method exports to ONNX with identical indices,
the artifact runs without PyTorch (VisualEncoder) and feeds ``generate``; the CLI's bad inputs.

Tiny random models from configs (tests/mllm/llava_models.py); the full method x family x batch matrix
is a heavy case (and tests/mllm/test_parity_mllm.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgeprune.core.errors import EdgepruneError  # noqa: E402
from edgeprune.mllm.export import export_visual  # noqa: E402
from edgeprune.mllm.graph import METHODS, VisualTokenGraph  # noqa: E402
from edgeprune.mllm.llava import llava_parts, load_llava  # noqa: E402
from edgeprune.mllm.runtime import VisualEncoder  # noqa: E402
from tests.mllm.llava_models import FAMILIES, IMAGE_TOKEN, make_clip_query_folder, make_llava  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models():
    return {family: make_llava(family) for family in FAMILIES}


def _hf_features(model, pixels):
    """The projector outputs HF computes for LLaVA ([B, N, D]) or per LLaVA-NeXT piece ([B, P, N, D])."""
    inner = model.model
    flat = pixels.flatten(0, 1) if pixels.dim() == 5 else pixels
    layer = model.config.vision_feature_layer
    hidden = inner.vision_tower(flat, output_hidden_states=True).hidden_states
    layers = [layer] if isinstance(layer, int) else layer
    strip = 1 if model.config.vision_feature_select_strategy == "default" else 0
    feats = inner.multi_modal_projector(torch.cat([hidden[i][:, strip:] for i in layers], dim=-1))
    return feats.view(*pixels.shape[:2], *feats.shape[1:]) if pixels.dim() == 5 else feats


@pytest.mark.parametrize("feature_layer", [-2, [-3, -1]])
@pytest.mark.parametrize("family", ["llava-clip", "llava-siglip"])
def test_unpruned_graph_equals_hf_image_features(family, feature_layer):
    model = make_llava(family, feature_layer)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = VisualTokenGraph(llava_parts(model), "none")(pixels)
        features = model.model.get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(got[0], torch.stack(list(features)), atol=1e-5)
    assert got[1].tolist() == [list(range(64))] * 2
    assert got[2][0, 9].tolist() == [1, 1] and got[3].sum().item() == 128


def test_llava_next_pieces_follow_each_other_with_newlines(models):
    parts = llava_parts(models["llava-next"])
    pixels = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        visual, index, grid, sizes = VisualTokenGraph(parts, "none")(pixels)
        reference = _hf_features(models["llava-next"], pixels)
    assert visual.shape == (2, 3 * 65, 96)
    for piece in range(3):
        start = piece * 65
        assert torch.allclose(visual[:, start:start + 64], reference[:, piece], atol=1e-5)
        assert torch.equal(visual[:, start + 64], parts.image_newline.expand(2, -1))
        assert index[0, start:start + 64].tolist() == list(range(piece * 64, piece * 64 + 64))
        assert index[0, start + 64].item() == -1 and sizes[0, start + 64].item() == 0
    with torch.no_grad():
        pruned = VisualTokenGraph(parts, "visionzip", tokens=16, crop_tokens=8)(pixels)
    assert pruned[0].shape == (2, 16 + 8 + 8 + 3, 96)


# The DPP graph with a CLIP projection in the default suite; the method x family matrix is a heavy case
# (the CLI tests export visionzip and script, and VisualEncoder's test script with a real query tower).
DEFAULT_CASES = [("llava-clip", "qcsp")]


def _export(models, family, method, out, **kwargs):
    parts = llava_parts(models[family])
    projection = None
    if method in ("qcsp", "script") and parts.tower.family == "hf-clip-vision":
        torch.manual_seed(3)
        projection = torch.nn.Linear(64, 16)
    tokens = None if method == "none" else 8
    return export_visual(parts, method, out, tokens=tokens, crop_tokens=None if tokens is None else 4,
                         pieces=3 if family == "llava-next" else 1, projection=projection, dynamic_batch=True, **kwargs)


def _check_artifact(path, method, family):
    manifest = json.loads((path / "manifest.json").read_text())
    parity = manifest["parity"]
    assert set(parity["batches"]) == {"1", "2"} and parity["indices_identical"]
    assert parity["max"] <= 1e-4
    assert manifest["trt_lint"]["errors"] == 0
    k = 64 if method == "none" else 8
    if family == "llava-next":
        k = 3 * 64 + 3 if method == "none" else 8 + 2 * 4 + 3
    assert manifest["visual_tokens"] == k
    assert [o["shape"] for o in manifest["outputs"]] == [["batch", k, 96], ["batch", k], ["batch", k, 2], ["batch", k]]


@pytest.mark.parametrize("family,method", DEFAULT_CASES)
def test_export_parity(models, tmp_path, family, method):
    path = _export(models, family, method, tmp_path / "a")
    _check_artifact(path, method, family)


@pytest.mark.heavy
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_export_parity_matrix(models, tmp_path, family, method):
    if (family, method) in DEFAULT_CASES:
        pytest.skip("in the default suite")
    _check_artifact(_export(models, family, method, tmp_path / "a"), method, family)


@pytest.fixture(scope="module")
def clip_query(tmp_path_factory):
    return make_clip_query_folder(tmp_path_factory.mktemp("clipq") / "clip")


@pytest.fixture(scope="module")
def script_artifact(models, clip_query, tmp_path_factory):
    out = tmp_path_factory.mktemp("script") / "art"
    return export_visual(llava_parts(models["llava-clip"]), "script", out, tokens=8, query_folder=clip_query,
                         options={"survivors": 32})


def test_visual_encoder_runs_question_to_tokens_and_generate(models, clip_query, script_artifact):
    """Question -> query tower (ONNX) -> vision graph (ONNX) equals eager; the tokens drive generate."""
    from edgeprune.mllm.query import load_query_model
    from edgeprune.mllm.splice import expand_image_placeholders, splice_visual_tokens

    model = models["llava-clip"]
    pixels = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with VisualEncoder(script_artifact, threads=1) as encoder:
        out = encoder.encode(pixels, question="what is on the table?")
        query = encoder.query_encoder.encode(["what is on the table?"])
    projection = load_query_model(clip_query).visual_projection
    graph = VisualTokenGraph(llava_parts(model), "script", 8, {"survivors": 32}, projection=projection)
    with torch.no_grad():
        eager = graph(torch.from_numpy(pixels), torch.from_numpy(query))
    assert np.array_equal(out["patch_index"], eager[1].numpy())
    assert np.allclose(out["visual_tokens"], eager[0].numpy(), atol=1e-4)
    ids, mask = expand_image_placeholders([[1, 5, IMAGE_TOKEN, 7, 8]], IMAGE_TOKEN, 8, pad_token_id=0)
    feed = splice_visual_tokens(ids, mask, out["visual_tokens"], model.get_input_embeddings(), IMAGE_TOKEN)
    with torch.no_grad():
        new = model.generate(inputs_embeds=feed["inputs_embeds"], attention_mask=feed["attention_mask"], max_new_tokens=2,
                             do_sample=False)
    assert new.shape == (1, 2)


def test_visual_encoder_rejects_bad_inputs(script_artifact):
    with VisualEncoder(script_artifact, threads=1) as encoder:
        pixels = np.zeros((1, 3, 64, 64), np.float32)
        with pytest.raises(EdgepruneError, match="query is 7 wide; this graph takes"):
            encoder.encode(pixels, query=np.ones((1, 7), np.float32))
        with pytest.raises(EdgepruneError, match="conditioned on a question"):
            encoder.encode(pixels)
        with pytest.raises(EdgepruneError, match=r"pixel_values is \[1, 3, 32, 32\]; this graph takes \[1, 3, 64, 64\]"):
            encoder.encode(np.zeros((1, 3, 32, 32), np.float32), query=np.ones((1, 16), np.float32))


def test_option_and_budget_errors(models):
    parts = llava_parts(models["llava-clip"])
    with pytest.raises(EdgepruneError, match="not in 1..64"):
        VisualTokenGraph(parts, "gsp", tokens=65)
    with pytest.raises(EdgepruneError, match="does not apply to gsp"):
        VisualTokenGraph(parts, "gsp", tokens=8, options={"dominant": 3})
    with pytest.raises(EdgepruneError, match="survivors=4 must lie in"):
        VisualTokenGraph(parts, "script", tokens=8, options={"survivors": 4}, projection=torch.nn.Linear(64, 16))
    with pytest.raises(EdgepruneError, match="needs the CLIP model's visual_projection"):
        VisualTokenGraph(parts, "qcsp", tokens=8)


def test_load_llava_roundtrip_and_refusals(models, tmp_path):
    models["llava-clip"].save_pretrained(tmp_path / "llava")
    loaded = load_llava(tmp_path / "llava")
    assert torch.equal(loaded.model.multi_modal_projector.linear_1.weight,
                       models["llava-clip"].model.multi_modal_projector.linear_1.weight)
    models["llava-next"].save_pretrained(tmp_path / "next")
    parts = llava_parts(load_llava(tmp_path / "next"))
    assert parts.family == "llava_next" and torch.equal(parts.image_newline, models["llava-next"].model.image_newline)
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(EdgepruneError, match="is not a LLaVA model folder: model_type 'vit'"):
        load_llava(tmp_path / "vit")
