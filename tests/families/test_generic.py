"""The generic adapter: a spec of paths drives a research-code ViT (checkpoint mode and attach_spec)."""

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeprune
from edgeprune import EdgepruneError
from edgeprune.backends.ort import OrtRunner
from edgeprune.families import adapter_for
from edgeprune.families.generic import GenericViTAdapter, attach_spec, load_generic
from edgeprune.exporting.onnx_export import export
from edgeprune.backends.feeds import relative_error
from edgeprune.families.weights import read_state_dict

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "mnist_vit_mit.json"
CKPT = ROOT.parent / "shared" / "models" / "mnist_vit_mit" / "vit_mnist_gpu.pt"
MNIST = ROOT.parent / "shared" / "data" / "mnist"
needs_ckpt = pytest.mark.skipif(not CKPT.is_file(), reason="the shared MNIST ViT checkpoint is not present")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mnist():
    model, info = load_generic(SPEC, checkpoint=CKPT)
    return model, info


def mnist_digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from edgeprune.data.idx import load_idx_split

    images, labels = load_idx_split(MNIST, "test")
    x = torch.tensor(images[:n], dtype=torch.float32).unsqueeze(1) / 255.0
    return (x - 0.1307) / 0.3081, torch.tensor(labels[:n])


def reference_mnist_vit(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The MNIST ViT written out from its README with plain tensor ops, independent of edgeprune."""
    b = x.shape[0]
    # (b, 1, 28, 28) -> 7x7 grid of 4x4 patches, each flattened as (p1 p2 c), row-major over the grid.
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # b, c, gh, gw, p1, p2
    patches = patches.permute(0, 2, 3, 4, 5, 1).reshape(b, 49, 16)
    tokens = patches @ state["to_patch_embedding.1.weight"].T + state["to_patch_embedding.1.bias"]
    tokens = torch.cat([state["cls_token"].expand(b, 1, 64), tokens], dim=1) + state["pos_embedding"]

    def layer_norm(t, prefix):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-5) * state[prefix + ".weight"] + state[prefix + ".bias"]

    for i in range(6):
        pre = f"transformer.layers.{i}"
        h = layer_norm(tokens, f"{pre}.0.norm")
        q, k, v = (h @ state[f"{pre}.0.fn.to_qkv.weight"].T).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, 50, 4, 64).permute(0, 2, 1, 3) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
        mixed = (attn @ v).permute(0, 2, 1, 3).reshape(b, 50, 256)
        tokens = tokens + mixed @ state[f"{pre}.0.fn.to_out.0.weight"].T + state[f"{pre}.0.fn.to_out.0.bias"]
        h = layer_norm(tokens, f"{pre}.1.norm")
        h = torch.relu(h @ state[f"{pre}.1.fn.net.0.weight"].T + state[f"{pre}.1.fn.net.0.bias"])
        tokens = tokens + h @ state[f"{pre}.1.fn.net.3.weight"].T + state[f"{pre}.1.fn.net.3.bias"]
    cls = layer_norm(tokens[:, 0], "mlp_head.0")
    return cls @ state["mlp_head.1.weight"].T + state["mlp_head.1.bias"]


@needs_ckpt
def test_mnist_checkpoint_is_accurate_and_means_what_the_spec_says(mnist):
    model, info = mnist
    assert info["source"] == "generic-spec" and len(info["checkpoint_sha256"]) == 64
    assert info["input"] == {"mean": [0.1307], "std": [0.3081], "source": "spec"}
    assert set(model.state_dict()) == set(read_state_dict(CKPT))  # names are the spec's paths, exactly

    x, labels = mnist_digits(2000)
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in x.split(500)])
        reference = reference_mnist_vit(read_state_dict(CKPT), x[:64])
    top1 = (logits.argmax(1) == labels).float().mean().item()
    print(f"unreduced MNIST top-1 on 2000 test digits: {top1:.4f}")
    assert top1 >= 0.96
    torch.testing.assert_close(logits[:64], reference, rtol=0, atol=1e-5)


@needs_ckpt
def test_mnist_spec_and_adapter(mnist):
    model, _ = mnist
    adapter = adapter_for(model)
    assert isinstance(adapter, GenericViTAdapter) and adapter.output_names == ("logits",)
    spec = adapter.spec
    assert (spec.depth, spec.embed_dim, spec.num_heads, spec.head_dim, spec.attn_dim) == (6, 64, 4, 64, 256)
    assert (spec.num_prefix, spec.num_patches, spec.img_size, spec.in_chans, spec.head_dim_out) == (1, 49, (28, 28), 1, 10)
    assert spec.class_token and spec.prefix_head and spec.head_width == 64
    assert adapter.describe()["family"] == "generic-vit"
    assert adapter.input_config() == {"mean": [0.1307], "std": [0.3081], "source": "spec"}

    # The last block's query-only-for-CLS path equals slicing the full projection.
    view = adapter.blocks()[5]
    h = torch.randn(2, 50, 64)
    q, k, v = view.qkv(h)
    q1, k1, v1 = view.prefix_query_qkv(h, 1)
    for got, want in ((q1, q[:, :, :1]), (k1, k), (v1, v)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_ckpt
def test_mnist_reductions_are_static_and_batch_independent(mnist, pixels):
    model, _ = mnist
    x = pixels(3, size=28, chans=1)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x), ref,
                                   rtol=1e-5, atol=1e-5)
        for method in ("tome", "evit", "gsp"):
            plan = edgeprune.build_plan(model, method, flops=0.6)
            assert plan.macs_ratio <= 0.6 + 1e-9 and plan.final_tokens < 49
            reduced = edgeprune.reduce_model(model, plan)
            counts = []
            embedded = reduced.adapter.embed(x)
            reduced.run_blocks(embedded, torch.ones_like(embedded[..., :1]), reduced._reduce,
                               after=lambda i, t: counts.append(t.shape[1]))
            assert counts == [1 + k for k in plan.keep], method  # token counts are the plan's, whatever the input
            batch, single = reduced(x), reduced(x[1:2])
            assert batch.shape == (3, 10)
            torch.testing.assert_close(single[0], batch[1], rtol=1e-5, atol=1e-5)
        if "prefix_only_last" in inspect.signature(edgeprune.build_plan).parameters:
            # The head reads only CLS, so the last block may run for CLS alone: exact.
            plan = edgeprune.build_plan(model, "none", prefix_only_last=True)
            torch.testing.assert_close(edgeprune.reduce_model(model, plan)(x), ref, rtol=1e-5, atol=1e-5)


@needs_ckpt
@pytest.mark.parametrize("method", ["tome", "evit"])
def test_mnist_onnx_export_parity_and_lint(mnist, method, tmp_path, pixels):
    model, info = mnist
    plan = edgeprune.build_plan(model, method, flops=0.6)
    artifact = export(model, plan, tmp_path / "a", dynamic_batch=True, model_info=info)
    manifest = artifact.manifest
    assert set(manifest["parity"]["batches"]) == {"1", "2"} and manifest["parity"]["max"] <= 1e-4
    assert manifest["trt_lint"]["errors"] == 0
    assert manifest["model"]["family"] == "generic-vit" and manifest["model"]["input"]["mean"] == [0.1307]
    x = pixels(3, size=28, chans=1)
    with torch.no_grad():
        expected = edgeprune.reduce_model(model, plan)(x).numpy()
    with OrtRunner(artifact.onnx_path) as runner:
        got = runner.infer({"pixel_values": x.numpy()})["logits"]
    assert relative_error(got, expected) <= 1e-4


# --- Python call: the user's own research-style module ----------------------------------------------

class ResearchBlock(nn.Module):
    def __init__(self, dim: int, heads: int, width: int, hidden: int) -> None:
        super().__init__()
        self.heads, self.width = heads, width
        self.ln_a = nn.LayerNorm(dim, eps=1e-6)
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, heads * width) for _ in range(3))
        self.proj = nn.Linear(heads * width, dim)
        self.gamma_a = nn.Parameter(torch.rand(dim) + 0.5)
        self.ln_b = nn.LayerNorm(dim, eps=1e-6)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim))
        self.gamma_b = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        b, n, _ = x.shape
        h = self.ln_a(x)
        q, k, v = (f(h).view(b, n, self.heads, self.width).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        attn = (q @ k.transpose(-2, -1) / math.sqrt(self.width)).softmax(-1)
        x = x + self.gamma_a * self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))
        return x + self.gamma_b * self.ff(self.ln_b(x))


class ResearchViT(nn.Module):
    """Conv stem, 2 register tokens, positions on patches only, separate q/k/v with heads wider than
    the model, layer scale, final norm, average pooling over the patches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 24, kernel_size=8, stride=8)
        self.regs = nn.Parameter(torch.randn(1, 2, 24))
        self.pos = nn.Parameter(torch.randn(1, 16, 24) * 0.1)
        self.layers = nn.ModuleList([ResearchBlock(24, 3, 12, 48) for _ in range(4)])
        self.norm = nn.LayerNorm(24, eps=1e-6)
        self.classifier = nn.Linear(24, 5)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2) + self.pos
        x = torch.cat([self.regs.expand(x.shape[0], -1, -1), x], dim=1)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.norm(x)[:, 2:].mean(dim=1))


RESEARCH_SPEC = {
    "format": 1, "kind": "edgeprune-vit-spec", "name": "research",
    "image": {"size": 32, "in_chans": 3},
    "patch_embed": {"kind": "conv", "path": "stem", "patch_size": 8},
    "embed_dim": 24,
    "registers": {"path": "regs", "count": 2},
    "pos_embed": {"path": "pos", "covers": "patches"},
    "attention": {"num_heads": 3, "head_width": 12},
    "mlp": {"hidden": 48, "act": "gelu"},
    "norm_eps": 1e-6,
    "blocks": {"depth": 4, "norm1": "layers.{i}.ln_a", "q": "layers.{i}.to_q", "k": "layers.{i}.to_k",
               "v": "layers.{i}.to_v", "attn_out": "layers.{i}.proj", "norm2": "layers.{i}.ln_b",
               "fc1": "layers.{i}.ff.0", "fc2": "layers.{i}.ff.3", "ls1": "layers.{i}.gamma_a", "ls2": "layers.{i}.gamma_b"},
    "final_norm": "norm",
    "head": {"pool": "avg", "linear": "classifier", "num_classes": 5},
}


def test_attached_research_module_equals_its_own_forward(pixels):
    model = attach_spec(ResearchViT().eval(), RESEARCH_SPEC)
    adapter = adapter_for(model)
    assert isinstance(adapter, GenericViTAdapter) and adapter.describe()["mode"] == "attached"
    spec = adapter.spec
    assert (spec.num_prefix, spec.class_token, spec.prefix_head, spec.head_width) == (2, False, False, 12)
    x = pixels(3)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x), ref,
                                   rtol=1e-5, atol=1e-5)
        reduced = edgeprune.reduce_model(model, edgeprune.build_plan(model, "tome", keep=0.5, points=[0, 2]))
        torch.testing.assert_close(reduced(x[1:2])[0], reduced(x)[1], rtol=1e-5, atol=1e-5)
    view = adapter.blocks()[0]
    h = torch.randn(2, 18, 24)
    q1, k1, v1 = view.prefix_query_qkv(h, 2)
    q, k, v = view.qkv(h)
    torch.testing.assert_close(q1, q[:, :, :2])


def test_attach_spec_rejects_what_does_not_fit():
    with pytest.raises(EdgepruneError, match=r"layers\.\{i\}\.to_qq.*nearest: layers\.0\.to_q"):
        attach_spec(ResearchViT(), {**RESEARCH_SPEC, "blocks": {**RESEARCH_SPEC["blocks"], "q": "layers.{i}.to_qq"}})
    with pytest.raises(EdgepruneError, match=r"to_q\.weight' in ResearchViT is \[36, 24\], the spec needs \[48, 24\]"):
        attach_spec(ResearchViT(), {**RESEARCH_SPEC, "attention": {"num_heads": 4, "head_width": 12}})
    model = ResearchViT()
    with pytest.raises(EdgepruneError, match="eps 1e-06, the spec's norm_eps is 1e-05"):
        attach_spec(model, {**RESEARCH_SPEC, "norm_eps": 1e-5})
    assert not GenericViTAdapter.matches(model)  # a failed attach marks nothing


def test_linear_patch_order_registers_after_positions_and_token_output(pixels):
    from edgeprune.families.generic import GenericViT
    from edgeprune.families.generic_spec import read_spec

    spec = read_spec({
        "format": 1, "kind": "edgeprune-vit-spec",
        "image": {"size": 16, "in_chans": 3},
        "patch_embed": {"kind": "linear", "path": "pe", "patch_size": 4, "order": "c p1 p2"},
        "embed_dim": 8, "cls_token": "cls", "registers": {"path": "reg", "count": 2},
        "pos_embed": {"path": "pos", "covers": "cls"},  # DINOv2-style: registers join after the positions
        "attention": {"num_heads": 2}, "mlp": {"hidden": 16, "act": "quick_gelu"},
        "blocks": {"depth": 2, "norm1": "b.{i}.n1", "qkv": "b.{i}.qkv", "attn_out": "b.{i}.o", "norm2": "b.{i}.n2",
                   "fc1": "b.{i}.f1", "fc2": "b.{i}.f2"},
        "final_norm": "norm",
    })
    model = GenericViT(spec).eval()
    adapter = adapter_for(model)
    assert adapter.output_names == ("tokens",) and adapter.spec.num_prefix == 3 and not adapter.spec.prefix_head
    x = pixels(2, size=16, chans=3)
    with torch.no_grad():
        tokens = adapter.embed(x)
        # "c p1 p2" is a conv weight's own layout: the Linear is that conv, reshaped.
        conv = F.conv2d(x, model.pe.weight.reshape(8, 3, 4, 4), model.pe.bias, stride=4).flatten(2).transpose(1, 2)
        pos = model.pos.reshape(17, 8)
        torch.testing.assert_close(tokens[:, 0], (model.cls.reshape(8) + pos[0]).expand(2, 8))
        torch.testing.assert_close(tokens[:, 1:3], model.reg.reshape(1, 2, 8).expand(2, 2, 8))
        torch.testing.assert_close(tokens[:, 3:], conv + pos[1:], rtol=1e-5, atol=1e-6)
        out = model(x)
        assert out.shape == (2, 19, 8)
        torch.testing.assert_close(edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x), out)


@pytest.mark.parametrize("name, module", [("relu", nn.ReLU()), ("gelu", nn.GELU()), ("gelu_tanh", nn.GELU("tanh")),
                                          ("silu", nn.SiLU())])
def test_activations_are_torchs(name, module):
    from edgeprune.families.generic import ACTIVATION_FNS

    x = torch.randn(64)
    torch.testing.assert_close(ACTIVATION_FNS[name](x), module(x))
    torch.testing.assert_close(ACTIVATION_FNS["quick_gelu"](x), x * torch.sigmoid(1.702 * x))


# --- spec errors, one line each ---------------------------------------------------------------------

def _spec(**changes) -> dict:
    spec = json.loads(SPEC.read_text())
    for key, value in changes.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    return spec


@pytest.mark.parametrize("spec, message", [
    (_spec(kind="timm"), "'kind' must be \"edgeprune-vit-spec\""),
    (_spec(format=2), "unsupported 'format' 2"),
    (_spec(embed_dim=None), "missing required field 'embed_dim'"),
    (_spec(mlp={"hidden": 128}), "missing required field 'mlp.act'"),
    (_spec(mlp={"hidden": 128, "act": "swish"}), "'mlp.act' must be one of relu, gelu"),
    (_spec(cls_tokn="cls_token"), "unknown field 'cls_tokn' .did you mean 'cls_token'"),
    (_spec(patch_embed={"kind": "linear", "path": "x", "patch_size": 4, "order": "p1 c c"}), "patch_embed.order"),
    (_spec(patch_embed={"kind": "linear", "path": "x", "patch_size": 5}), "not a multiple of patch_size 5"),
    (_spec(cls_token=None), "'head.pool' is 'cls' but the spec has no cls_token"),
])
def test_bad_spec_documents_are_named(spec, message):
    with pytest.raises(EdgepruneError, match=message):
        attach_spec(nn.Linear(1, 1), spec)


def test_bad_spec_files(tmp_path):
    with pytest.raises(EdgepruneError, match="cannot be read"):
        load_generic(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgepruneError, match="is not JSON"):
        load_generic(tmp_path / "bad.json")


@needs_ckpt
def test_checkpoint_mismatches_are_named(tmp_path):
    typo = _spec(blocks={**json.loads(SPEC.read_text())["blocks"], "qkv": "transformer.layers.{i}.0.fn.to_qvk"})
    (tmp_path / "typo.json").write_text(json.dumps(typo))
    with pytest.raises(EdgepruneError, match=r"to_qvk.*block 0.*has no module.*nearest: transformer\.layers\.0\.0\.fn\.to_qkv"):
        load_generic(tmp_path / "typo.json", checkpoint=CKPT)
    (tmp_path / "heads.json").write_text(json.dumps(_spec(attention={"num_heads": 4, "head_width": 32})))
    with pytest.raises(EdgepruneError, match=r"to_qkv\.weight' in checkpoint .* is \[768, 64\], the spec needs \[384, 64\]"):
        load_generic(tmp_path / "heads.json", checkpoint=CKPT)
    state = read_state_dict(CKPT)
    torch.save({**state, "extra.weight": torch.zeros(3)}, tmp_path / "extra.pt")
    with pytest.raises(EdgepruneError, match="does not match spec .*'extra.weight'"):
        load_generic(SPEC, checkpoint=tmp_path / "extra.pt")


def test_random_weights_without_checkpoint(pixels):
    model, info = load_generic(SPEC)
    assert info["weights"].startswith("random")
    with torch.no_grad():
        out = model(pixels(2, size=28, chans=1))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


# --- the CLI ----------------------------------------------------------------------------------------

@needs_ckpt
def test_cli_exports_from_a_spec(tmp_path):
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.cli.main import main

    assert main(["export", str(SPEC), "--checkpoint", str(CKPT), "--out", str(tmp_path / "a"), "--flops", "0.6"]) == 0
    artifact = load_artifact(tmp_path / "a")
    assert artifact.manifest["model"]["source"] == "generic-spec"
    assert artifact.manifest["model"]["input"] == {"mean": [0.1307], "std": [0.3081], "source": "spec"}
    assert artifact.manifest["parity"]["max"] <= 1e-4


@needs_ckpt
def test_cli_bad_inputs_exit_2_and_write_nothing(tmp_path):
    from edgeprune.cli.main import main

    base = json.loads(SPEC.read_text())
    (tmp_path / "unreadable.json").write_text("format: 1")
    (tmp_path / "nopath.json").write_text(json.dumps(_spec(head={**base["head"], "norm": "mlp_hed.0"})))
    (tmp_path / "shape.json").write_text(json.dumps(_spec(mlp={"hidden": 256, "act": "relu"})))
    truncated = {k: v for k, v in read_state_dict(CKPT).items() if not k.startswith("transformer.layers.5.")}
    torch.save(truncated, tmp_path / "five_blocks.pt")
    cases = [
        ("unreadable.json", CKPT),
        ("nopath.json", CKPT),
        ("shape.json", CKPT),
        (str(SPEC), tmp_path / "five_blocks.pt"),
    ]
    for i, (spec, ckpt) in enumerate(cases):
        out = tmp_path / f"out{i}"
        spec_path = spec if spec.startswith("/") else str(tmp_path / spec)
        assert main(["export", spec_path, "--checkpoint", str(ckpt), "--out", str(out), "--flops", "0.6"]) == 2, spec
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folders either
