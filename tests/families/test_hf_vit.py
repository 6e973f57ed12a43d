"""HF ViT / DeiT / DINOv2 adapters: parity with HF's forward, static reduced shapes, batch
independence, ONNX parity, and loading save_pretrained folders (API and CLI).

All models are tiny and randomly initialised from configs: no hub downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import edgeprune  # noqa: E402
from edgeprune.cli.main import main  # noqa: E402
from edgeprune.core.errors import EdgepruneError  # noqa: E402
from edgeprune.families import adapter_for  # noqa: E402
from edgeprune.families.hf_loading import load_hf_folder  # noqa: E402
from edgeprune.families.hf_vit import HFDeiTAdapter, HFDinov2Adapter, HFViTAdapter  # noqa: E402

VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=8,
           num_labels=5)
DINO = dict(hidden_size=32, mlp_ratio=2, num_hidden_layers=4, num_attention_heads=2, image_size=28, patch_size=7,
            num_labels=5)
# kind -> (class name, config class, config, adapter, num_prefix, prefix_head)
KINDS = {
    "vit": ("ViTModel", "ViTConfig", VIT, HFViTAdapter, 1, False),
    "vit_nopool": ("ViTModel", "ViTConfig", VIT, HFViTAdapter, 1, False),
    "vit_cls": ("ViTForImageClassification", "ViTConfig", VIT, HFViTAdapter, 1, True),
    "deit": ("DeiTModel", "DeiTConfig", VIT, HFDeiTAdapter, 2, False),
    "deit_cls": ("DeiTForImageClassification", "DeiTConfig", VIT, HFDeiTAdapter, 2, True),
    "deit_teacher": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", VIT, HFDeiTAdapter, 2, True),
    "dinov2": ("Dinov2Model", "Dinov2Config", DINO, HFDinov2Adapter, 1, False),
    "dinov2_cls": ("Dinov2ForImageClassification", "Dinov2Config", DINO, HFDinov2Adapter, 1, False),
}
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(kind: str, **config) -> nn.Module:
    cls_name, cfg_name, base, *_ = KINDS[kind]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_name)(**{**base, **config})
    kwargs = dict(add_pooling_layer=False) if kind == "vit_nopool" else {}
    model = getattr(transformers, cls_name)(cfg, **kwargs)
    for name, p in model.named_parameters():  # DeiT zero-initialises its tokens, DINOv2 its layer scale small
        if name.endswith(("cls_token", "distillation_token", "position_embeddings", "lambda1")):
            nn.init.normal_(p, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {kind: make(kind) for kind in KINDS}


def size_of(kind: str) -> int:
    return KINDS[kind][2]["image_size"]


def reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = model(pixel_values=x)
    if hasattr(out, "logits"):
        return (out.logits,)
    return out.last_hidden_state, out.pooler_output


@pytest.mark.parametrize("kind", list(KINDS))
def test_adapter_and_spec(models, kind):
    *_, adapter_t, prefix, prefix_head = KINDS[kind]
    adapter = adapter_for(models[kind])
    assert type(adapter) is adapter_t
    spec = adapter.spec
    grid = size_of(kind) // spec.patch_size
    assert (spec.depth, spec.embed_dim, spec.num_heads, spec.mlp_hidden) == (4, 32, 2, 64)
    assert (spec.num_prefix, spec.num_patches, spec.class_token, spec.prefix_head) == (prefix, grid * grid, True, prefix_head)
    assert spec.head_width == 0 and spec.img_size == (size_of(kind),) * 2
    classifier = "cls" in kind or "teacher" in kind
    assert spec.head_dim_out == (5 if classifier else 0)
    expected = ("logits",) if classifier else ("last_hidden_state", "pooler_output", "token_sizes")
    assert adapter.output_names == expected and adapter.input_config() is None
    assert adapter.describe()["family"] == adapter.family


@pytest.mark.parametrize("kind", list(KINDS))
def test_method_none_matches_hf(models, pixels, kind):
    model = models[kind]
    x = pixels(2, size_of(kind))
    out = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x)
    out = out if isinstance(out, tuple) else (out,)
    ref = reference(model, x)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=ATOL)
    if len(ref) == 2:
        pooled = ref[1]
        if pooled is None:  # ViTModel without a pooler: HF returns None, we return the normed CLS token
            assert kind == "vit_nopool"
            pooled = ref[0][:, 0]
        torch.testing.assert_close(out[1], pooled, rtol=1e-5, atol=ATOL)
        assert torch.equal(out[2], torch.ones(2, ref[0].shape[1]))


@pytest.mark.parametrize("method", ["tome", "evit", "gsp"])
@pytest.mark.parametrize("kind", ["vit", "vit_cls", "deit_teacher", "dinov2", "dinov2_cls"])
def test_reduced_shapes_and_batch_independence(models, pixels, kind, method):
    model = models[kind]
    plan = edgeprune.build_plan(model, method, flops=0.6)
    assert plan.macs_ratio <= 0.6 + 1e-9 and plan.final_tokens < plan.spec.num_patches
    reduced = edgeprune.reduce_model(model, plan)
    x = pixels(2, size_of(kind))
    with torch.no_grad():
        both, alone = reduced(x), reduced(x[1:])
    both, alone = (both, alone) if isinstance(both, tuple) else ((both,), (alone,))
    n = plan.spec.num_prefix + plan.final_tokens
    if len(both) == 1:
        assert both[0].shape == (2, 5)
    else:
        assert (both[0].shape, both[1].shape, both[2].shape) == ((2, n, 32), (2, 32), (2, n))
        assert torch.allclose(both[2].sum(dim=-1), torch.full((2,), float(plan.spec.num_tokens)))
    for b, a in zip(both, alone):
        torch.testing.assert_close(a[0], b[1], rtol=1e-5, atol=ATOL)
    assert not torch.allclose(both[-1 if len(both) == 1 else 1], reference(model, x)[-1], atol=1e-4)  # it changed something


def test_dinov2_classifier_weights_merged_tokens_by_size(models, pixels):
    """The patch mean of Dinov2ForImageClassification must count a merged token as the patches it
    stands for: recompute the logits from its inner Dinov2Model's reduced outputs by hand."""
    model = models["dinov2_cls"]
    budget = dict(keep=0.5, points=[1])
    x = pixels(2, 28)
    with torch.no_grad():
        logits = edgeprune.reduce_model(model, edgeprune.build_plan(model, "tome", **budget))(x)
        seq, _, sizes = edgeprune.reduce_model(model.dinov2, edgeprune.build_plan(model.dinov2, "tome", **budget))(x)
        weights = sizes[:, 1:, None]
        assert weights.max() > 1  # tokens really were merged
        mean = (seq[:, 1:] * weights).sum(1) / weights.sum(1)
        expected = model.classifier(torch.cat([seq[:, 0], mean], dim=1))
        plain = model.classifier(torch.cat([seq[:, 0], seq[:, 1:].mean(1)], dim=1))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=ATOL)
    assert not torch.allclose(logits, plain, atol=1e-4)  # the weighting matters here


@pytest.mark.parametrize("kind", ["vit", "deit_teacher", "dinov2"])
def test_prefix_query_qkv_equals_slicing(models, kind):
    prefix = KINDS[kind][4]
    n = prefix + adapter_for(models[kind]).spec.num_patches
    h = torch.randn(2, n, 32)
    for view in adapter_for(models[kind]).blocks():
        q, k, v = view.qkv(h)
        qp, kp, vp = view.prefix_query_qkv(h, prefix)
        assert qp.shape == (2, 2, prefix, 16)
        for a, b in ((q[:, :, :prefix], qp), (k, kp), (v, vp)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_head_width_other_than_embed_split(pixels):
    model = make("vit", num_attention_heads=4, head_dim=16)  # 4 heads of 16 on a 32-wide model
    spec = adapter_for(model).spec
    assert (spec.head_width, spec.head_dim, spec.attn_dim) == (16, 16, 64)
    x = pixels(2)
    out = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x)
    torch.testing.assert_close(out[0], reference(model, x)[0], rtol=1e-5, atol=ATOL)


def test_swiglu_dinov2_counts_plain_mlp_macs(pixels):
    model = make("dinov2", use_swiglu_ffn=True)
    hidden = model.encoder.layer[0].mlp.up_proj.out_features
    assert adapter_for(model).spec.mlp_hidden * 2 == 3 * hidden
    x = pixels(1, 28)
    out = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x)
    torch.testing.assert_close(out[0], reference(model, x)[0], rtol=1e-5, atol=ATOL)


def test_refusals(models):
    model = make("vit")
    model.layers[1].mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    with pytest.raises(EdgepruneError, match="layer 1"):
        adapter_for(model)
    reduced = edgeprune.reduce_model(models["dinov2"], edgeprune.build_plan(models["dinov2"], "none"))
    with pytest.raises(EdgepruneError, match="does not interpolate"):
        reduced(torch.randn(1, 3, 42, 42))
    mim = transformers.ViTForMaskedImageModeling(transformers.ViTConfig(**VIT))
    with pytest.raises(EdgepruneError, match="not a supported ViT family"):
        adapter_for(mim)


@pytest.mark.parametrize("kind, method", [("vit_cls", "tome"), ("vit_nopool", "evit"), ("deit_teacher", "tome"),
                                          ("dinov2_cls", "tome"), ("dinov2", "evit")])
def test_export_parity_batch_1_and_2(models, tmp_path, kind, method):
    """Every family exports tome and a pruning method (DeiT's gsp runs through the CLI below)."""
    model = models[kind]
    artifact = edgeprune.export(model, edgeprune.build_plan(model, method, flops=0.6), tmp_path / "a", dynamic_batch=True)
    m = artifact.manifest
    assert set(m["parity"]["batches"]) == {"1", "2"} and m["parity"]["max"] <= 1e-4
    # A symbolic batch axis is the lint's only (inherent) warning: no errors, nothing else.
    assert m["trt_lint"]["errors"] == 0 and set(m["trt_lint"]["rules"]) <= {"dynamic-batch"}


# --- loading save_pretrained folders ---------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory, models) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_vit")
    for kind, model in models.items():
        model.save_pretrained(root / kind)
    return {kind: root / kind for kind in models} | {"root": root}


@pytest.mark.parametrize("kind", list(KINDS))
def test_load_round_trip(models, folders, pixels, kind):
    loaded, norm = load_hf_folder(folders[kind])
    assert type(loaded) is type(models[kind]) and not loaded.training and norm is None
    assert (getattr(loaded, "pooler", 0) is None) == (kind == "vit_nopool")
    x = pixels(2, size_of(kind))
    out = edgeprune.reduce_model(loaded, edgeprune.build_plan(loaded, "none"))(x)
    out = out if isinstance(out, tuple) else (out,)
    for a, b in zip(out, reference(models[kind], x)):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=ATOL)


def test_preprocessor_config_gives_normalisation(folders, tmp_path):
    f = folders["deit_teacher"]
    (f / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1]}))
    try:
        assert load_hf_folder(f)[1] == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}
        (f / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
        assert load_hf_folder(f)[1] == {"mean": [0.0] * 3, "std": [1.0] * 3}
        (f / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5], "image_std": [0.5, 0.5, 0.5]}))
        with pytest.raises(EdgepruneError, match="expected 3 numbers"):
            load_hf_folder(f)
        (f / "preprocessor_config.json").write_text("{oops")
        with pytest.raises(EdgepruneError, match="cannot read"):
            load_hf_folder(f)
    finally:
        (f / "preprocessor_config.json").unlink()
    # CLIP/SigLIP folders too (the loader is shared)
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8))
    clip.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.48, 0.46, 0.41], "image_std": 0.27}))
    assert load_hf_folder(tmp_path / "clip")[1] == {"mean": [0.48, 0.46, 0.41], "std": [0.27] * 3}


def test_cli_export_deit_folder(folders, tmp_path, capsys):
    f = folders["deit_teacher"]
    (f / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    try:
        code = main(["export", str(f), "--method", "gsp", "--flops", "0.6", "--dynamic-batch", "--out", str(tmp_path / "out")])
    finally:
        (f / "preprocessor_config.json").unlink()
    assert code == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["model"]["family"] == "hf-deit" and m["model"]["class"] == "DeiTForImageClassificationWithTeacher"
    assert m["model"]["input"] == {"mean": [0.5] * 3, "std": [0.5] * 3, "source": "preprocessor_config.json"}
    assert [o["name"] for o in m["outputs"]] == ["logits"] and m["outputs"][0]["shape"][1:] == [5]
    assert set(m["parity"]["batches"]) == {"1", "2"} and m["parity"]["max"] <= 1e-4
    assert m["trt_lint"]["errors"] == 0 and set(m["trt_lint"]["rules"]) <= {"dynamic-batch"}


@pytest.mark.parametrize("case, message", [
    ("no_weights", "cannot load DeiTForImageClassificationWithTeacher"),
    ("missing_weights", "tensors missing"),
    ("extra_weights", "vision tensors unused"),
    ("unsupported_type", "model_type 'bert'"),
])
def test_cli_broken_folder_exits_2_and_writes_nothing(folders, tmp_path, capsys, case, message):
    import shutil

    f = tmp_path / case
    shutil.copytree(folders["deit_teacher"], f)
    cfg = json.loads((f / "config.json").read_text())
    if case == "no_weights":
        next(f.glob("*.safetensors")).unlink()
    else:
        changes = {"missing_weights": dict(num_hidden_layers=5), "extra_weights": dict(num_hidden_layers=3),
                   "unsupported_type": dict(model_type="bert", architectures=["BertModel"])}[case]
        (f / "config.json").write_text(json.dumps({**cfg, **changes}))
    code = main(["export", str(f), "--method", "tome", "--flops", "0.6", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
