"""Query tower: tiny random CLIP/SigLIP text towers with small real tokenizers, exported and encoded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeprune.core.errors import EdgepruneError
from edgeprune.mllm.query import (QueryEncoder, export_query_tower, load_query_model, query_vector,
                                  tokenize_questions)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
VISION = dict(TINY, image_size=32, patch_size=8)
WORDS = "a the cat dog photo of is what where red on table".split()


def clip_tokenizer():
    """A real CLIP BPE tokenizer: the byte alphabet (bare and with ``</w>``), a few merges, and the
    special tokens last, as in CLIP's vocab (so EOS is also the highest id)."""
    from edgeprune.mllm.configs import byte_clip_tokenizer

    return byte_clip_tokenizer()


def siglip_tokenizer():
    """A SigLIP-like Unigram tokenizer (pad = EOS = ``</s>``, EOS appended, no BOS), built without
    sentencepiece, which this environment lacks."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,?!'"]
    pieces += [("\u2581" + w, -1.0) for w in WORDS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>")


def save_clip(folder, tokenizer=True, **text):
    import transformers

    tok = clip_tokenizer()
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id, max_position_embeddings=77)
    cfg = transformers.CLIPConfig(text_config={**TINY, **ids, **text}, vision_config=VISION, projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


def save_siglip(folder):
    import transformers

    tok = siglip_tokenizer()
    ids = dict(vocab_size=len(tok), pad_token_id=1, eos_token_id=1, bos_token_id=None, max_position_embeddings=64)
    cfg = transformers.SiglipConfig(text_config={**TINY, **ids, "projection_size": 24}, vision_config=VISION)
    torch.manual_seed(0)
    transformers.SiglipModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    src = save_clip(root / "tiny-clip")
    return src, export_query_tower(src, root / "query")


@pytest.fixture(scope="module")
def siglip_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip")
    src = save_siglip(root / "tiny-siglip")
    return src, export_query_tower(src, root / "query")


def test_clip_export_manifest_and_parity(clip_export):
    src, out = clip_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "query-tower" and manifest["family"] == "clip"
    assert (manifest["query_dim"], manifest["max_length"], manifest["visual_projection"]) == (16, 77, True)
    assert manifest["input"] == {"name": "input_ids", "shape": ["batch", 77], "dtype": "int64"}
    assert manifest["output"]["shape"] == ["batch", 16] and manifest["source"] == "tiny-clip"
    assert set(manifest["parity"]["batches"]) == {"1", "2"} and manifest["parity"]["max"] <= 1e-4
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    model = load_query_model(src)
    assert model.family == "clip" and model.visual_projection is not None
    assert (model.visual_projection.in_features, model.visual_projection.out_features) == (32, 16)


def test_clip_encode_matches_eager_and_clip_model(clip_export):
    from transformers import AutoTokenizer, CLIPModel

    src, out = clip_export
    questions = ["What is on the table?", "a photo of a red dog", "cat"]
    with QueryEncoder(out, threads=1) as encoder:
        onnx = encoder.encode(questions)
    model, tokenizer = load_query_model(src), AutoTokenizer.from_pretrained(out / "tokenizer")
    eager = query_vector(model, tokenizer, questions).numpy()
    assert onnx.shape == (3, 16) and onnx.dtype == np.float32
    np.testing.assert_allclose(onnx, eager, atol=1e-4)
    # Short questions are one segment: the normalised CLIP text features of the padded text.
    clip = CLIPModel.from_pretrained(src).eval()
    with torch.no_grad():
        feats = clip.get_text_features(**tokenizer(questions, padding="max_length", max_length=77,
                                                   return_tensors="pt")).pooler_output
    np.testing.assert_allclose(onnx, torch.nn.functional.normalize(feats, dim=-1).numpy(), atol=1e-4)


def test_long_question_is_mean_of_normalised_segments(clip_export):
    from transformers import AutoTokenizer

    src, out = clip_export
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    long_q = " ".join(WORDS[i % len(WORDS)] for i in range(120)) + "?"
    body = tokenizer(long_q, add_special_tokens=False, verbose=False)["input_ids"]
    assert len(body) > 2 * 75
    ids, owner = tokenize_questions(tokenizer, ["a cat", long_q], 77)
    segments = ids[owner == 1]
    assert len(segments) == -(-len(body) // 75) and list(owner) == [0] + [1] * len(segments)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert all(row[0] == bos and (row == eos).any() for row in segments)
    assert [t for row in segments for t in row[1:list(row).index(eos)]] == body  # nothing lost or repeated
    with QueryEncoder(out, threads=1) as encoder:
        got = encoder.encode(["a cat", long_q])
        unit = encoder.encode_tokens(segments, normalize=True)
    np.testing.assert_allclose(got[1], unit.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(got[0], encoder_free_single(src, tokenizer, "a cat"), atol=1e-4)
    eager = query_vector(load_query_model(src), tokenizer, ["a cat", long_q]).numpy()
    np.testing.assert_allclose(got, eager, atol=1e-4)


def encoder_free_single(src, tokenizer, text):
    model = load_query_model(src)
    ids = tokenizer([text], padding="max_length", max_length=model.max_length, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return torch.nn.functional.normalize(model.text(ids), dim=-1)[0].numpy()


def test_encoder_runs_without_torch(clip_export):
    import subprocess
    import sys

    _, out = clip_export
    code = ("import sys; sys.modules['torch'] = None  # as if torch were not installed\n"
            "from edgeprune.mllm.query import QueryEncoder\n"
            f"print(QueryEncoder({str(out)!r}, threads=1).encode(['a cat', 'the dog']).shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(2, 16)")


def test_siglip_export_encode_tokens_and_encode(siglip_export):
    from transformers import AutoTokenizer, SiglipModel

    src, out = siglip_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["family"], manifest["query_dim"], manifest["max_length"]) == ("siglip", 24, 64)
    assert manifest["visual_projection"] is False and manifest["parity"]["max"] <= 1e-4
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    questions = ["what is the cat on?", "where is the red dog"]
    ids = tokenizer(questions, padding="max_length", max_length=64, return_tensors="np")["input_ids"]
    siglip = SiglipModel.from_pretrained(src).eval()
    with torch.no_grad():
        ref = siglip.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output.numpy()
    with QueryEncoder(out, threads=1) as encoder:
        raw = encoder.encode_tokens(ids)
        vectors = encoder.encode(questions)
        with pytest.raises(EdgepruneError, match="shape"):
            encoder.encode_tokens(ids[:, :10])
    np.testing.assert_allclose(raw, ref, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(vectors, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-4)
    eager = query_vector(load_query_model(src), tokenizer, questions).numpy()
    np.testing.assert_allclose(vectors, eager, atol=1e-4)


def test_text_only_folders_load(tmp_path):
    import transformers

    cfg = transformers.CLIPTextConfig(**TINY, vocab_size=100, projection_dim=8)
    transformers.CLIPTextModelWithProjection(cfg).save_pretrained(tmp_path / "clip-text")
    model = load_query_model(tmp_path / "clip-text")
    assert (model.family, model.query_dim, model.max_length, model.visual_projection) == ("clip", 8, 77, None)
    assert model.text(torch.zeros(2, 77, dtype=torch.long)).shape == (2, 8)
    SiglipText = transformers.SiglipTextModel
    SiglipText(transformers.SiglipTextConfig(**TINY, vocab_size=100)).save_pretrained(tmp_path / "siglip-text")
    model = load_query_model(tmp_path / "siglip-text")
    assert (model.family, model.max_length, model.visual_projection) == ("siglip", 64, None)


def test_legacy_clip_config_pools_at_highest_id(tmp_path):
    """Hub CLIP configs from before transformers PR #24773 say eos_token_id 2: the model then pools at
    the highest token id, which is EOS in CLIP's vocab; segments must still pool there."""
    from transformers import CLIPModel

    src = save_clip(tmp_path / "legacy", eos_token_id=2)
    model, tokenizer = load_query_model(src), clip_tokenizer()
    questions = ["a red cat", " ".join(WORDS * 12)]
    got = query_vector(model, tokenizer, questions)
    ids, owner = tokenize_questions(tokenizer, questions, 77)
    with torch.no_grad():
        feats = CLIPModel.from_pretrained(src).eval().get_text_features(input_ids=torch.from_numpy(ids)).pooler_output
    unit = torch.nn.functional.normalize(feats, dim=-1)
    expected = torch.stack([unit[torch.from_numpy(owner == i)].mean(0) for i in range(2)])
    assert (owner == 1).sum() > 1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_bad_folder_is_one_error_and_writes_nothing(tmp_path):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(EdgepruneError, match="not a CLIP/SigLIP model folder .*'llama'"):
        export_query_tower(llama, tmp_path / "out")
    with pytest.raises(EdgepruneError, match="does not exist"):
        load_query_model(tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_writes_nothing(tmp_path):
    src = save_clip(tmp_path / "no-tok", tokenizer=False)
    with pytest.raises(EdgepruneError, match="no tokenizer files"):
        export_query_tower(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-tok"]


def test_existing_out_dir_is_kept(clip_export, tmp_path):
    src, _ = clip_export
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EdgepruneError, match="already exists"):
        export_query_tower(src, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_mismatched_eos_and_bad_questions(clip_export, tmp_path):
    src, out = clip_export
    wrong = save_clip(tmp_path / "wrong-eos", eos_token_id=5)
    with pytest.raises(EdgepruneError, match="pools at eos_token_id 5"):
        export_query_tower(wrong, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with QueryEncoder(out, threads=1) as encoder:
        for bad in (["what?", "  "], "a single string", [None]):
            with pytest.raises(EdgepruneError):
                encoder.encode(bad)
        with pytest.raises(EdgepruneError, match="lie in"):
            encoder.encode_tokens(np.full((1, 77), 10**6))
    with pytest.raises(EdgepruneError, match="not a query-tower"):
        QueryEncoder(src)
