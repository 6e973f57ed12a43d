"""torchvision VisionTransformer adapter: parity with torchvision's forward, static reduced shapes,
batch independence, ONNX parity, and loading ``torchvision:vit_*`` through the CLI.

Models are tiny and randomly initialised (never downloaded).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")

import edgeprune  # noqa: E402
from edgeprune.cli.main import main  # noqa: E402
from edgeprune.core.errors import EdgepruneError  # noqa: E402
from edgeprune.families import adapter_for  # noqa: E402
from edgeprune.families.torchvision_vit import TorchvisionViTAdapter, create_torchvision_vit  # noqa: E402
from edgeprune.families.loading import load_model  # noqa: E402

TINY = dict(image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5)
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(**overrides) -> nn.Module:
    """torchvision zero-initialises the classifier and CLS token; random ones make the logits
    depend on the image, so parity checks compare something."""
    torch.manual_seed(0)
    model = create_torchvision_vit("vit_b_16", {**TINY, **overrides})
    nn.init.normal_(model.heads.head.weight)
    nn.init.normal_(model.class_token)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return make()


def test_adapter_and_spec(model):
    adapter = adapter_for(model)
    assert type(adapter) is TorchvisionViTAdapter and adapter.family == "torchvision-vit"
    spec = adapter.spec
    assert (spec.depth, spec.embed_dim, spec.num_heads, spec.mlp_hidden) == (4, 32, 2, 64)
    assert (spec.num_prefix, spec.num_patches, spec.patch_size, spec.img_size) == (1, 16, 8, (32, 32))
    assert (spec.head_dim_out, spec.head_width, spec.class_token, spec.prefix_head) == (5, 0, True, True)
    assert adapter.output_names == ("logits",) and adapter.input_config() is None


@pytest.mark.parametrize("batch", [1, 2])
def test_unreduced_equals_torchvision(model, pixels, batch):
    x = pixels(batch)
    with torch.no_grad():
        out = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x)
        ref = model(x)
    assert ref.abs().max() > 0.1  # a real comparison, not two zero heads
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("method", ["tome", "evit", "gsp"])
def test_reduced_is_static_and_batch_independent(model, pixels, method):
    plan = edgeprune.build_plan(model, method, flops=0.6)
    assert plan.macs_ratio <= 0.6 + 1e-9 and plan.final_tokens < plan.spec.num_patches
    reduced = edgeprune.reduce_model(model, plan)
    x = pixels(2)
    with torch.no_grad():
        both, alone, ref = reduced(x), reduced(x[1:]), model(x)
    assert both.shape == (2, 5)
    torch.testing.assert_close(alone[0], both[1], rtol=1e-5, atol=ATOL)
    assert not torch.allclose(both, ref, atol=1e-4)  # the plan really changed the computation


def test_prefix_query_qkv_equals_slicing(model):
    h = torch.randn(2, 17, 32)
    for view in adapter_for(model).blocks():
        q, k, v = view.qkv(h)
        q1, k1, v1 = view.prefix_query_qkv(h, 1)
        assert q1.shape == (2, 2, 1, 16)
        for a, b in ((q[:, :, :1], q1), (k, k1), (v, v1)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_export_tome_parity_batch_1_and_2(model, tmp_path):
    artifact = edgeprune.export(model, edgeprune.build_plan(model, "tome", flops=0.6), tmp_path / "a", dynamic_batch=True)
    m = artifact.manifest
    assert set(m["parity"]["batches"]) == {"1", "2"} and m["parity"]["max"] <= 1e-4
    assert m["model"]["family"] == "torchvision-vit"
    # A symbolic batch axis is the lint's only (inherent) warning; static exports lint fully clean below.
    assert m["trt_lint"]["errors"] == 0 and set(m["trt_lint"]["rules"]) <= {"dynamic-batch"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(conv_stem=True), "conv-stem"),
    (dict(subclass=True), "overrides forward"),
    (dict(separate_qkv=True), "encoder layer 1"),
])
def test_refuses_non_stock_layouts(kwargs, message):
    from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

    if "conv_stem" in kwargs:
        model = create_torchvision_vit("vit_b_16", {**TINY, "conv_stem_configs": [ConvStemConfig(16, 3, 8)]})
    elif "subclass" in kwargs:
        class Custom(VisionTransformer):
            def forward(self, x):
                return super().forward(x) * 2

        model = Custom(**TINY)
    else:
        model = make()
        model.encoder.layers[1].self_attention = nn.MultiheadAttention(32, 2, batch_first=True, kdim=16, vdim=16)
    with pytest.raises(EdgepruneError, match=message) as info:
        adapter_for(model)
    assert "\n" not in str(info.value)


# --- loading: torchvision:NAME in load_model and the CLI --------------------------------------------

CLI_ARGS = [a for k, v in TINY.items() if k != "image_size" for a in ("--model-arg", f"{k}={v}")]


def test_load_model_names_and_normalisation(tmp_path):
    net, info = load_model("torchvision:vit_b_32", model_args={k: v for k, v in TINY.items() if k != "image_size"}, img_size=32)
    assert net.image_size == 32 and net.patch_size == 8 and len(net.encoder.layers) == 4 and not net.training
    assert info["source"] == "torchvision" and info["weights"].startswith("random")
    assert info["input"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "source": "torchvision ImageNet weights"}
    with pytest.raises(EdgepruneError, match="torchvision:vit_b_16") as err:
        load_model("torchvision:resnet50")
    assert "torchvision:vit_h_14" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EdgepruneError, match="never downloaded"):
        load_model("torchvision:vit_b_16", model_args={"weights": "DEFAULT"})
    with pytest.raises(EdgepruneError, match="cannot build torchvision vit_b_16"):
        load_model("torchvision:vit_b_16", model_args={"depth": 3})


def test_cli_export_with_checkpoint(model, tmp_path, capsys):
    ckpt = tmp_path / "weights.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    code = main(["export", "torchvision:vit_b_16", *CLI_ARGS, "--img-size", "32", "--checkpoint", str(ckpt),
                 "--method", "evit", "--flops", "0.6", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["source"] == "torchvision" and m["model"]["name"] == "torchvision:vit_b_16"
    assert m["model"]["input"]["source"] == "torchvision ImageNet weights"
    assert m["method"] == "evit" and m["parity"]["max"] <= 1e-4
    assert m["trt_lint"]["errors"] == 0 and m["trt_lint"]["warnings"] == 0  # static batch: fully clean
    # The exported graph computes with the checkpoint's weights, not fresh random ones.
    from edgeprune.backends.ort import OrtRunner

    x = torch.randn(1, 3, 32, 32)
    plan = edgeprune.build_plan(model, "evit", flops=0.6)
    with torch.no_grad():
        expected = edgeprune.reduce_model(model, plan)(x)
    with OrtRunner(out / "model.onnx") as runner:
        got = runner.infer({"pixel_values": x.numpy()})["logits"]
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4)


def test_cli_errors_exit_2_and_write_nothing(model, tmp_path, capsys):
    code = main(["export", "torchvision:vit_b_99", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "torchvision:vit_b_16" in err and "Traceback" not in err
    bad = tmp_path / "bad.pth"
    torch.save({k: v for k, v in model.state_dict().items() if "heads" not in k}, bad)
    code = main(["export", "torchvision:vit_b_16", *CLI_ARGS, "--img-size", "32", "--checkpoint", str(bad),
                 "--out", str(tmp_path / "b")])
    assert code == 2 and "missing keys" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
