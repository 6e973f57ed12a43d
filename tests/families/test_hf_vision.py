"""HF CLIP/SigLIP vision adapters: parity with HF's forward, static reduced shapes, batch
independence, and loading save_pretrained folders (including every way loading can fail).

All models are tiny and randomly initialised from configs: no hub downloads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import edgeprune  # noqa: E402
from edgeprune.core.errors import EdgepruneError  # noqa: E402
from edgeprune.families import adapter_for  # noqa: E402
from edgeprune.families.hf_vision import ClipVisionAdapter, SiglipVisionAdapter, load_hf_vision  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, image_size=64, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
KINDS = ("clip", "clip_proj", "siglip_head", "siglip_nohead")
ATOL = 1e-5


def make(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY))
    elif kind == "clip_proj":
        model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY, projection_dim=16))
    else:
        cfg = transformers.SiglipVisionConfig(**TINY, vision_use_head=kind == "siglip_head")
        model = transformers.SiglipVisionModel(cfg)
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {kind: make(kind) for kind in KINDS}


def pixels(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_and_spec(models, kind):
    adapter = adapter_for(models[kind])
    clip = kind.startswith("clip")
    assert type(adapter) is (ClipVisionAdapter if clip else SiglipVisionAdapter)
    spec = adapter.spec
    assert (spec.depth, spec.embed_dim, spec.num_heads, spec.mlp_hidden) == (4, 64, 4, 128)
    assert (spec.num_prefix, spec.num_patches, spec.patch_size) == (int(clip), 64, 8)
    assert (spec.in_chans, spec.img_size, spec.head_dim_out) == (3, (64, 64), 0)
    extra = ("image_embeds",) if kind == "clip_proj" else ()
    assert adapter.output_names == ("last_hidden_state", "pooler_output", "token_sizes", *extra)
    assert adapter.describe()["family"] == adapter.family


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_method_none_matches_hf(models, kind, batch):
    model = models[kind]
    x = pixels(batch, seed=batch)
    out = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))(x)
    with torch.no_grad():
        ref = model(pixel_values=x)
    last, pooled, sizes = out[:3]
    n = 65 if kind.startswith("clip") else 64
    assert close(last, ref.last_hidden_state)
    assert torch.equal(sizes, torch.ones(batch, n))
    if kind == "clip":
        assert close(pooled, ref.pooler_output)
    elif kind == "clip_proj":  # HF's projection model does not return the pooled CLS, only its projection
        assert close(pooled, model.vision_model.post_layernorm(ref.last_hidden_state[:, 0]))
        assert close(out[3], ref.image_embeds)
    elif kind == "siglip_head":
        assert close(pooled, ref.pooler_output)
    else:  # HF returns no pooler_output without a head; ours is the (size-weighted) token mean
        assert ref.pooler_output is None
        assert close(pooled, ref.last_hidden_state.mean(dim=1))


@pytest.mark.parametrize("method", ["tome", "evit", "gsp"])
@pytest.mark.parametrize("kind", KINDS)
def test_reduced_shapes_and_batch_independence(models, kind, method):
    model = models[kind]
    plan = edgeprune.build_plan(model, method, flops=0.6)
    assert plan.macs_ratio <= 0.6 + 1e-9 and plan.final_tokens < plan.spec.num_patches
    reduced = edgeprune.reduce_model(model, plan)
    x = pixels(2, seed=7)
    both = reduced(x)
    alone = reduced(x[:1])
    n = plan.spec.num_prefix + plan.final_tokens
    assert both[0].shape == (2, n, 64)
    assert both[1].shape == (2, 64)
    assert both[2].shape == (2, n)
    if kind == "clip_proj":
        assert both[3].shape == (2, 16)
    # Every patch is accounted for once (CLS counts as itself).
    assert torch.allclose(both[2].sum(dim=-1), torch.full((2,), float(plan.spec.num_tokens)))
    if plan.spec.num_prefix:
        assert torch.equal(both[2][:, 0], torch.ones(2))
    for b, a in zip(both, alone):
        assert close(b[:1], a)
    assert not close(both[0][:1], both[0][1:])  # the two images really differ


@pytest.mark.parametrize("kind", ["clip", "siglip_head"])
def test_reduced_model_traces_with_dynamic_batch(models, kind):
    """Traced from a batch-1 example (as the exporter does), the batch axis must stay free: SigLIP's
    stock MultiheadAttention head would pin it to 1, hence the adapter's own attention_pool."""
    fx_config = pytest.importorskip("torch.fx.experimental._config")
    if not hasattr(fx_config, "backed_size_oblivious"):
        pytest.skip("this torch has no size-oblivious tracing")
    model = models[kind]
    reduced = edgeprune.reduce_model(model, edgeprune.build_plan(model, "tome", flops=0.6))
    batch = torch.export.Dim("batch", min=1, max=64)
    with fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(reduced, (pixels(1, seed=3),), dynamic_shapes=({0: batch},), strict=False)
    x = pixels(3, seed=4)
    for a, b in zip(program.module()(x), reduced(x)):
        assert close(a, b)


def test_rejects_wrong_image_size(models):
    model = models["siglip_head"]
    reduced = edgeprune.reduce_model(model, edgeprune.build_plan(model, "none"))
    with pytest.raises(EdgepruneError, match="does not interpolate"):
        reduced(torch.randn(1, 3, 48, 48))


def test_rejects_modified_layers():
    model = make("clip")
    model.encoder.layers[2].mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    with pytest.raises(EdgepruneError, match="layer 2"):
        adapter_for(model)


def test_full_model_is_not_a_vision_tower():
    full = transformers.CLIPModel(transformers.CLIPConfig(vision_config=TINY, text_config=TEXT))
    assert not ClipVisionAdapter.matches(full) and not SiglipVisionAdapter.matches(full)
    with pytest.raises(EdgepruneError, match="not a supported ViT family"):
        adapter_for(full)


# --- loading save_pretrained folders ---------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory, models) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in ("clip", "clip_proj", "siglip_head"):
        models[kind].save_pretrained(root / kind)
        out[kind] = root / kind
    torch.manual_seed(1)
    full_clip = transformers.CLIPModel(transformers.CLIPConfig(vision_config=TINY, text_config=TEXT))
    full_clip.save_pretrained(root / "full_clip")
    full_siglip = transformers.SiglipModel(transformers.SiglipConfig(vision_config=TINY, text_config=TEXT))
    full_siglip.save_pretrained(root / "full_siglip")
    out.update(full_clip=root / "full_clip", full_siglip=root / "full_siglip", root=root)
    out["full_models"] = {"full_clip": full_clip.eval(), "full_siglip": full_siglip.eval()}
    return out


@pytest.mark.parametrize("kind", ["clip", "clip_proj", "siglip_head"])
def test_load_round_trip(models, folders, kind):
    loaded = load_hf_vision(str(folders[kind]))
    assert type(loaded) is type(models[kind]) and not loaded.training
    x = pixels(2, seed=11)
    with torch.no_grad():
        ref = models[kind](pixel_values=x)
    out = edgeprune.reduce_model(loaded, edgeprune.build_plan(loaded, "none"))(x)
    assert close(out[0], ref.last_hidden_state)


@pytest.mark.parametrize("name", ["full_clip", "full_siglip"])
def test_load_full_folder_gives_vision_tower(folders, name):
    loaded = load_hf_vision(folders[name])
    expected = transformers.CLIPVisionModel if name == "full_clip" else transformers.SiglipVisionModel
    assert type(loaded) is expected
    x = pixels(1, seed=5)
    with torch.no_grad():
        ref = folders["full_models"][name].vision_model(pixel_values=x)
    out = edgeprune.reduce_model(loaded, edgeprune.build_plan(loaded, "none"))(x)
    assert close(out[0], ref.last_hidden_state) and close(out[1], ref.pooler_output)


def _copy(folders, kind: str, name: str) -> Path:
    dst = folders["root"] / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(folders[kind], dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _weights(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))


def _break(folders, case: str) -> Path:
    """A folder broken in the way ``case`` names."""
    if case == "missing_folder":
        return folders["root"] / "does-not-exist"
    f = _copy(folders, "clip", case)
    if case == "no_config":
        (f / "config.json").unlink()
    elif case == "config_not_json":
        (f / "config.json").write_text("{not json")
    elif case == "config_not_object":
        (f / "config.json").write_text("[1, 2]")
    elif case == "config_bad_value":
        _edit_config(f, hidden_size="wide")
    elif case == "unsupported_type":
        _edit_config(f, model_type="bert", architectures=["BertModel"])
    elif case == "no_weights":
        _weights(f).unlink()
    elif case == "corrupt_weights":
        _weights(f).write_bytes(b"not a safetensors file")
    elif case == "resized_weights":
        _edit_config(f, intermediate_size=96)
    elif case == "missing_weights":
        _edit_config(f, num_hidden_layers=5)
    elif case == "extra_weights":
        _edit_config(f, num_hidden_layers=3)
    return f


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_folder", "does not exist"),
        ("no_config", "no config.json"),
        ("config_not_json", "cannot read"),
        ("config_not_object", "not a model config"),
        ("config_bad_value", "cannot load CLIPVisionModel"),
        ("unsupported_type", "model_type 'bert'"),
        ("no_weights", "cannot load CLIPVisionModel"),
        ("corrupt_weights", "cannot load CLIPVisionModel"),
        ("resized_weights", "differ in shape"),
        ("missing_weights", "tensors missing"),
        ("extra_weights", "vision tensors unused"),
    ],
)
def test_load_errors_are_one_clear_line(folders, case, message):
    with pytest.raises(EdgepruneError, match=message) as info:
        load_hf_vision(_break(folders, case))
    assert "\n" not in str(info.value)


def test_load_infers_family_from_architectures(models, folders):
    f = _copy(folders, "siglip_head", "no_model_type")
    cfg = json.loads((f / "config.json").read_text())
    del cfg["model_type"]
    (f / "config.json").write_text(json.dumps({**cfg, "architectures": ["SiglipVisionModel"]}))
    loaded = load_hf_vision(f)
    assert type(loaded) is transformers.SiglipVisionModel
    want = models["siglip_head"].embeddings.position_embedding.weight
    assert torch.equal(loaded.embeddings.position_embedding.weight, want)
