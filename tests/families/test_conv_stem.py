"""The segmenter family's convolutional stem: one token per patch on the same grid, its MACs counted,
saved and loaded, refused when it cannot make the patch size, and every dense method plus temporal
reuse still exports with parity on a model that has one (what the CamVid model relies on)."""

from __future__ import annotations

import pytest
import torch

import edgeprune
from edgeprune.core.errors import EdgepruneError
from edgeprune.families import adapter_for
from edgeprune.families.timm_seg import ConvStem, create_segmenter, load_segmenter, save_segmenter
from edgeprune.plan.macs import baseline_macs, embed_macs

NAME = "vit_tiny_patch16_224"
# Non-square like CamVid (rows x columns), patch 12 = two stride-2 convs and a stride-3 one.
STEM_TINY = dict(img_size=(36, 48), patch_size=12, depth=4, embed_dim=32, num_heads=2, mlp_ratio=2.0)


def stem_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_segmenter(NAME, 6, head="multilevel", feature_blocks=(1, 3), stem={"channels": [8, 16]},
                             **{**STEM_TINY, **overrides})
    for name, buf in model.named_buffers():  # non-default BN statistics: a dropped buffer would show
        if buf.is_floating_point():
            buf.copy_(torch.rand_like(buf) + 0.5)
    return model.eval()


def randn(*shape: int) -> torch.Tensor:
    from edgeprune.backends.feeds import fresh_seed

    return torch.randn(*shape, generator=torch.Generator().manual_seed(fresh_seed()))


def test_stem_keeps_the_patch_grid_and_counts_its_macs():
    model = stem_model()
    assert isinstance(model.backbone.patch_embed.proj, ConvStem)
    tokens = model.embed(randn(2, 3, 36, 48))
    assert tokens.shape == (2, 1 + 3 * 4, 32)
    spec = adapter_for(model).spec
    assert spec.in_chans == 3 and spec.num_patches == 12
    # by hand: 3x3 convs to 18x24x8 and 9x12x16, then the 3x3 stride-3 projection to 3x4x32
    expected = 18 * 24 * 8 * 3 * 9 + 9 * 12 * 16 * 8 * 9 + 3 * 4 * 32 * 16 * 9
    assert spec.stem_macs == expected and embed_macs(spec) == expected
    plain = adapter_for(create_segmenter(NAME, 6, head="multilevel", feature_blocks=(1, 3), **STEM_TINY)).spec
    assert baseline_macs(spec) - baseline_macs(plain) == expected - embed_macs(plain)


def test_counting_macs_leaves_batchnorm_statistics_alone():
    model = stem_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert adapter_for(model).spec.stem_macs > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_save_load_round_trip(tmp_path):
    model = stem_model()
    save_segmenter(model, tmp_path / "m")
    again = load_segmenter(tmp_path / "m")
    assert again.spec["stem"] == {"channels": [8, 16]}
    x = randn(2, 3, 36, 48)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


@pytest.mark.parametrize("stem, match", [
    ({"channels": [8, 16, 32]}, "cannot make patch size 12"),
    ({"channels": []}, "cannot make patch size"),
    ({"channels": 8}, "stem must be"),
    ({"channels": [8], "kernel": 5}, "stem must be"),
])
def test_bad_stems_are_refused(stem, match):
    with pytest.raises(EdgepruneError, match=match):
        create_segmenter(NAME, 6, stem=stem, **STEM_TINY)


@pytest.mark.parametrize("method, budget", [
    ("tome", dict(keep=0.5, points=[0, 2])),
    ("evit", dict(keep=0.5, points=[0, 2])),
    ("cluster", dict(tokens=6)),
    ("pass", dict(keep=0.5, points=[0, 2])),
])
def test_dense_methods_export_with_parity(method, budget, tmp_path):
    model = stem_model()
    plan = edgeprune.build_plan(model, method, **budget)
    artifact = edgeprune.export(model, plan, tmp_path / method, dynamic_batch=True)  # raises on a parity miss
    assert set(artifact.manifest["parity"]["batches"]) == {"1", "2"}
    assert artifact.manifest["outputs"][0]["shape"][1:] == [6, 36, 48]
    assert plan.macs_ratio < 1.0


def test_temporal_reuse_exports_with_parity(tmp_path):
    from edgeprune.exporting.temporal import export_temporal

    out = export_temporal(stem_model(), 0.5, tmp_path / "t")  # checks refresh and update graphs against eager
    assert (out / "manifest.json").is_file()
