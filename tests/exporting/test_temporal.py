"""Temporal reuse graphs: exact at the fixed points (refresh = the model; an unchanged frame stays
exact), cache rows merged where they should be, batch independence, ONNX parity and the artifact."""

from __future__ import annotations

import json

import pytest
import torch

from edgeprune.core.errors import EdgepruneError
from edgeprune.exporting.temporal import TemporalSegmenter, export_temporal, fresh_inputs, recompute_count, temporal_macs
from edgeprune.families.timm_seg import create_segmenter

TINY = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2)
LAYOUTS = {
    "cls_linear": dict(head="linear"),
    "registers_no_cls_multilevel": dict(head="multilevel", feature_blocks=(0, 2), reg_tokens=2, class_token=False),
    "registers_cls_qknorm": dict(head="multilevel", feature_blocks=(1, 3), reg_tokens=3, qk_norm=True),
}


def tiny(layout: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_segmenter("vit_tiny_patch16_224", 5, **{**TINY, **LAYOUTS[layout]}).eval()


def run(module: TemporalSegmenter, pixels, index=None, caches=()):
    with torch.no_grad():
        out = module(pixels) if index is None else module(pixels, index, *caches)
    return out[0], list(out[1:])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_refresh_is_the_model_and_an_unchanged_frame_stays_exact(layout):
    model = tiny(layout)
    patches = TemporalSegmenter(model, 1).num_patches
    refresh, update = TemporalSegmenter(model, patches), TemporalSegmenter(model, patches // 4)
    (pixels,) = fresh_inputs(refresh, 2, patches)  # a refresh takes pixels only
    with torch.no_grad():
        expected = model(pixels)
    logits, caches = run(refresh, pixels)
    assert logits.shape == expected.shape == (2, 5, 32, 32)
    assert torch.allclose(logits, expected, atol=1e-5)
    _, part, *_ = fresh_inputs(update, 2, patches // 4)
    logits2, caches2 = run(update, pixels, part, caches)
    assert torch.allclose(logits2, expected, atol=1e-5)
    for before, after in zip(caches, caches2):
        assert torch.allclose(before, after, atol=1e-5)


def test_cache_rows_are_replaced_only_where_recomputed():
    model = tiny("registers_cls_qknorm")
    update = TemporalSegmenter(model, 5)
    prefix, patches = update.num_prefix, update.num_patches
    pixels, index, *caches = fresh_inputs(update, 2, 5)
    _, out = run(update, pixels, index, caches)
    fresh = torch.zeros(2, prefix + patches, dtype=torch.bool)
    fresh[:, :prefix] = True
    fresh.scatter_(1, index + prefix, True)
    names = update.cache_names
    for name, before, after in zip(names, caches, out):
        rows = fresh if after.shape[1] == prefix + patches else fresh[:, prefix:]
        assert torch.equal(after[~rows], before[~rows]), name
        assert not torch.allclose(after[rows], before[rows]), name
    # Block 0 sees embeddings only, so its recomputed keys are exact: those of a refresh.
    refresh = TemporalSegmenter(model, patches)
    _, full = run(refresh, pixels)
    k0 = names.index("cache_keys.0")
    assert torch.allclose(out[k0][fresh], full[k0][fresh], atol=1e-5)


def test_batch_elements_are_independent():
    model = tiny("registers_no_cls_multilevel")
    update = TemporalSegmenter(model, 6)
    pixels, index, *caches = fresh_inputs(update, 3, 6)
    logits, out = run(update, pixels, index, caches)
    for b in range(3):
        one, one_out = run(update, pixels[b:b + 1], index[b:b + 1], [c[b:b + 1] for c in caches])
        assert torch.allclose(logits[b:b + 1], one, atol=1e-5)
        assert all(torch.allclose(c[b:b + 1], o, atol=1e-5) for c, o in zip(out, one_out))


def test_changed_patches_recomputed_move_the_output_toward_the_new_frame():
    """Recomputing the patches that changed must beat reusing the stale cache everywhere."""
    model = tiny("cls_linear")
    patches = 16
    refresh = TemporalSegmenter(model, patches)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(1, 3, 32, 32, generator=gen)
    b = a.clone()
    b[..., :8, :16] = torch.randn(1, 3, 8, 16, generator=gen)  # patches 0 and 1 change
    _, cache_a = run(refresh, a)
    with torch.no_grad():
        target = model(b)
    changed = run(TemporalSegmenter(model, 2), b, torch.tensor([[0, 1]]), cache_a)[0]
    unchanged = run(TemporalSegmenter(model, 2), b, torch.tensor([[14, 15]]), cache_a)[0]
    assert (changed - target).abs().mean() < 0.5 * (unchanged - target).abs().mean()


def test_recompute_count_and_errors():
    assert recompute_count(0.4, 256) == 102
    assert recompute_count(1.0, 256) == 256
    assert recompute_count(64, 256) == 64
    for bad in (0, -0.5, 1.5, 300):
        with pytest.raises(EdgepruneError, match="--temporal"):
            recompute_count(bad, 256)
    with pytest.raises(EdgepruneError, match="segmenter"):
        import timm

        TemporalSegmenter(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2), 4)
    with pytest.raises(EdgepruneError, match="1..16"):
        TemporalSegmenter(tiny("cls_linear"), 17)


def test_macs_scale_with_the_recomputed_patches():
    model = tiny("cls_linear")
    full, part = TemporalSegmenter(model, 16), TemporalSegmenter(model, 4)
    assert temporal_macs(part, 4) < 0.5 * temporal_macs(full, 16)


def test_export_parity_and_artifact(tmp_path):
    from edgeprune.runtime.temporal import is_temporal, load_temporal

    model = tiny("registers_no_cls_multilevel")
    path = export_temporal(model, 0.25, tmp_path / "t", dynamic_batch=True)
    assert is_temporal(path) and not is_temporal(tmp_path)
    artifact = load_temporal(path)
    m = artifact.manifest
    assert m["recompute"] == 4 and m["patches"] == 16 and m["prefix"] == 2
    for name, graph in m["graphs"].items():
        assert set(graph["parity"]["batches"]) == {"1", "2"}, name
        assert graph["parity"]["max"] <= 1e-4
        assert not any(op.startswith("Scatter") for op in graph["ops"])
    assert m["graphs"]["update"]["macs"] < m["graphs"]["refresh"]["macs"]
    assert artifact.cache_shapes["cache_keys.0"] == [1, 18, 32]
    assert artifact.cache_shapes["cache_feats.1"] == [1, 16, 32]
    # A changed graph file or a damaged manifest is refused with one line.
    (path / "update.onnx").write_bytes(b"broken")
    with pytest.raises(EdgepruneError, match="sha256"):
        load_temporal(path)
    (path / "manifest.json").write_text(json.dumps({**m, "kind": "other"}))
    with pytest.raises(EdgepruneError, match="not a temporal artifact"):
        load_temporal(path)
    (path / "manifest.json").write_text("{")
    with pytest.raises(EdgepruneError, match="corrupt"):
        load_temporal(path)
