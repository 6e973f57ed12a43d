"""The timm ViT segmentation family: shapes, prefix-token layouts, file round trip, errors, and the
shipped reference segmenter (its recorded score only; no re-evaluation here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeprune.core.errors import EdgepruneError
from edgeprune.families.timm_seg import (
    LinearSegHead,
    MultiLevelSegHead,
    ViTSegmenter,
    create_segmenter,
    load_segmenter,
    save_segmenter,
)

NAME = "vit_tiny_patch16_224"
TINY = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2)
PREFIX_LAYOUTS = {
    "cls": ({}, 1),
    "registers": ({"reg_tokens": 4}, 5),
    "no_cls": ({"class_token": False}, 0),
    "registers_no_cls": ({"reg_tokens": 2, "class_token": False}, 2),
}
HEADS = {
    "linear": dict(head="linear"),
    "linear_norm": dict(head="linear", head_args={"norm": True}),
    "multilevel": dict(head="multilevel", feature_blocks=(0, 2, 3)),
    "multilevel_concat_up": dict(head="multilevel", feature_blocks=(1, 3),
                                 head_args={"fuse": "concat", "upsample": True, "norm": "gn", "width": 16}),
}
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "scene_seg"


def tiny(head: str = "linear", layout: str = "cls", **overrides) -> ViTSegmenter:
    torch.manual_seed(0)
    return create_segmenter(NAME, 5, **HEADS[head], **{**TINY, **PREFIX_LAYOUTS[layout][0], **overrides})


def randomise_buffers(model: torch.nn.Module) -> None:
    """Non-default BN statistics, so a round trip that dropped buffers would show."""
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            buf.copy_(torch.rand_like(buf) + 0.5)


@pytest.mark.parametrize("layout", list(PREFIX_LAYOUTS))
@pytest.mark.parametrize("head", list(HEADS))
def test_logits_at_input_resolution(head, layout, pixels):
    model = tiny(head, layout)
    assert model.num_prefix_tokens == PREFIX_LAYOUTS[layout][1]
    with torch.no_grad():
        out = model(pixels(2))
    assert out.shape == (2, 5, 32, 32)
    assert torch.isfinite(out).all()


def test_non_square_input():
    model = tiny("multilevel", img_size=(32, 48))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 5, 32, 48)


@pytest.mark.parametrize("head", ["linear", "multilevel"])
def test_batch_independent(head, pixels):
    model = tiny(head, "registers")
    randomise_buffers(model.head)
    x = pixels(3)
    with torch.no_grad():
        torch.testing.assert_close(model(x[1:2]), model(x)[1:2], rtol=1e-5, atol=1e-5)


def test_head_types_and_defaults():
    assert isinstance(tiny("linear").head, LinearSegHead)
    assert tiny("linear").feature_blocks == (3,)
    multi = create_segmenter(NAME, 3, head="multilevel", **{**TINY, "depth": 6})
    assert isinstance(multi.head, MultiLevelSegHead)
    assert multi.feature_blocks == (1, 3, 5)
    assert create_segmenter(NAME, 3, head="multilevel", feature_blocks=[-1, 0], **TINY).feature_blocks == (0, 3)


def test_deepest_feature_is_final_normed(pixels):
    """The linear head sees timm's own forward_features output (final norm), minus prefix tokens."""
    model = tiny("linear")
    x = pixels(2)
    with torch.no_grad():
        ours = model.block_features(x)[-1]
        timm_out = model.backbone.forward_features(x)
    torch.testing.assert_close(ours, timm_out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head", ["linear", "multilevel_concat_up"])
def test_save_load_round_trip(head, tmp_path, pixels):
    model = tiny(head, "registers")
    randomise_buffers(model)
    save_segmenter(model, tmp_path / "seg", {"classes": list("abcde")})
    config = json.loads((tmp_path / "seg" / "config.json").read_text())
    assert config["family"] == "timm-vit-seg" and config["classes"] == list("abcde")
    x = pixels(2)
    with torch.no_grad():
        expected = model(x)
        for source in (tmp_path / "seg", tmp_path / "seg" / "config.json"):
            loaded = load_segmenter(source)
            assert not loaded.training
            assert torch.equal(loaded(x), expected)


def test_load_from_hand_written_config(tmp_path, pixels):
    """The documented config format alone (no save helper) is enough to load a model."""
    from safetensors.torch import save_file

    model = tiny("multilevel")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "family": "timm-vit-seg", "backbone": NAME, "model_args": TINY, "head": "multilevel",
        "feature_blocks": [0, 2, 3], "num_classes": 5, "classes": list("abcde"),
        "input": {"size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}}))
    x = pixels(1)
    with torch.no_grad():
        assert torch.equal(load_segmenter(tmp_path)(x), model(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(head="fpn"), "unknown segmentation head 'fpn'"),
    (dict(head="multilevel", feature_blocks=(1, 4)), "feature block 4 is out of range for a 4-block"),
    (dict(head="multilevel", feature_blocks=(-5,)), "feature block -5 is out of range"),
    (dict(head="linear", feature_blocks=(1, 3)), "linear head uses one block"),
    (dict(head="multilevel", head_args={"fuse": "max"}), "fuse must be"),
    (dict(head="linear", head_args={"width": 3}), "bad head_args"),
    (dict(global_pool="avg"), "model arg 'global_pool' is set by the segmenter"),
])
def test_create_errors(kwargs, match):
    with pytest.raises(EdgepruneError, match=match):
        create_segmenter(NAME, 5, **kwargs, **TINY)


def test_unknown_backbone():
    with pytest.raises(EdgepruneError, match="unknown model 'vit_tinny_patch16_224'"):
        create_segmenter("vit_tinny_patch16_224", 5)


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_segmenter(tiny("linear"), tmp_path / "seg")


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(EdgepruneError, match="does not exist"):
        load_segmenter(saved)


def test_corrupt_weights(saved):
    (saved / "model.safetensors").write_bytes(b"\x00not a safetensors file")
    with pytest.raises(EdgepruneError, match="not a readable safetensors file"):
        load_segmenter(saved)


def test_weights_that_do_not_fit(saved):
    config = json.loads((saved / "config.json").read_text())
    config["model_args"]["embed_dim"] = 64
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(EdgepruneError, match="does not fit the model: .*shape mismatches"):
        load_segmenter(saved)


@pytest.mark.parametrize("content, match", [
    (None, "config .* does not exist"),
    ("{not json", "is not valid JSON"),
    ('{"family": "timm-vit"}', "has family 'timm-vit', expected 'timm-vit-seg'"),
    ('{"family": "timm-vit-seg", "backbone": "vit_tiny_patch16_224"}', "lacks num_classes, head"),
])
def test_bad_config(saved, content, match):
    if content is None:
        (saved / "config.json").unlink()
    else:
        (saved / "config.json").write_text(content)
    with pytest.raises(EdgepruneError, match=match):
        load_segmenter(saved)


def test_shipped_scene_segmenter_loads():
    from edgeprune.data import CLASSES

    assert (SHIPPED / "model.safetensors").stat().st_size < 10_000_000
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["classes"] == list(CLASSES) and config["num_classes"] == len(CLASSES)
    assert config["eval"]["miou"] > 0.3  # recorded by scripts/train_scene_segmenter.py
    model = load_segmenter(SHIPPED)
    c, h, w = config["input"]["size"]
    with torch.no_grad():
        assert model(torch.zeros(1, c, h, w)).shape == (1, len(CLASSES), h, w)


SHIPPED_CAMVID = Path(__file__).resolve().parents[2] / "models" / "camvid_seg"


def test_shipped_camvid_segmenter_loads():
    from edgeprune.data import camvid

    assert (SHIPPED_CAMVID / "model.safetensors").stat().st_size < 20_000_000
    config = json.loads((SHIPPED_CAMVID / "config.json").read_text())
    assert config["classes"] == list(camvid.CLASSES) and config["num_classes"] == len(camvid.CLASSES)
    assert config["eval"]["test"]["miou"] >= 0.40  # issue 16's bar, recorded by scripts/train_camvid_segmenter.py
    assert config["stem"] and config["input"]["size"] == [3, 180, 240]
    model = load_segmenter(SHIPPED_CAMVID)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 180, 240)).shape == (1, len(camvid.CLASSES), 180, 240)


@pytest.mark.heavy
def test_shipped_camvid_segmenter_scores_what_its_card_says():
    """The whole test split through the shipped weights gives the recorded mIoU (the card's figure)."""
    from edgeprune.data import camvid
    from edgeprune.measure.seg_eval import EvalSet, evaluate_module

    if not camvid.default_root().is_dir():
        pytest.skip("needs ../shared/data/camvid")
    config = json.loads((SHIPPED_CAMVID / "config.json").read_text())
    score = evaluate_module(load_segmenter(SHIPPED_CAMVID), EvalSet("camvid", None, "test"), batch=8)
    assert score["n"] == 233
    assert score["miou"] == pytest.approx(config["eval"]["test"]["miou"], abs=2e-4)
