"""LLaVA models of known shapes with random weights, for latency work (latency does not depend on
weight values) and tests: :func:`llava15_shaped` (LLaVA-1.5's CLIP-L/14-336 front-end, 576 patches,
with a smaller Llama), :func:`tiny_llava` (seconds to build and export) and the Llama-2-7B dimensions
the prefill benchmark extrapolates to (:data:`LLAMA2_7B`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from edgeprune.core.errors import EdgepruneError

# Llama-2-7B, LLaVA-1.5-7B's language model (vocabulary without LLaVA's added tokens).
LLAMA2_7B = dict(layers=32, hidden=4096, intermediate=11008, heads=32, vocab=32000)

# LLaVA-1.5's vision tower: CLIP ViT-L/14 at 336 px (24 x 24 = 576 patches).
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
LLAVA15_IMAGE_TOKEN = 32000
LLAVA15_PAD_TOKEN = 32001
LLAVA15_VOCAB = 32064


def llama_intermediate(hidden: int) -> int:
    """Llama-style MLP width: about 2.75 x hidden, rounded to a multiple of 256 (2048 -> 5632)."""
    return max(256, int(round(2.75 * hidden / 256)) * 256)


def _llava(vision: dict, text: dict, image_token: int, seed: int):
    import transformers

    from edgeprune.families.hf_loading import _quiet_transformers

    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**vision),
        text_config=transformers.LlamaConfig(**text),
        image_token_index=image_token,
        image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with _quiet_transformers():
            model = transformers.LlavaForConditionalGeneration(cfg)
    finally:
        torch.random.set_rng_state(state)
    return model.float().eval()


def llava15_shaped(llm_layers: int = 4, llm_hidden: int = 2048, seed: int = 0):
    """A ``LlavaForConditionalGeneration`` shaped like LLaVA-1.5 (CLIP-L/14-336 tower, feature layer
    -2, CLS dropped, 2-layer GELU projector, image token 32000) with a ``llm_layers``-layer Llama of
    width ``llm_hidden`` (16 heads, MLP ~2.75x), random weights from ``seed``."""
    if llm_layers < 1:
        raise EdgepruneError(f"llm_layers must be >= 1, got {llm_layers}")
    if llm_hidden < 16 or llm_hidden % 16:
        raise EdgepruneError(f"llm_hidden must be a positive multiple of 16 (16 heads), got {llm_hidden}")
    text = dict(hidden_size=llm_hidden, intermediate_size=llama_intermediate(llm_hidden), num_hidden_layers=llm_layers,
                num_attention_heads=16, num_key_value_heads=16, vocab_size=LLAVA15_VOCAB, max_position_embeddings=4096,
                pad_token_id=LLAVA15_PAD_TOKEN)
    return _llava(CLIP_L_336, text, LLAVA15_IMAGE_TOKEN, seed)


def tiny_llava(seed: int = 0, llm_layers: int = 2, llm_hidden: int = 96):
    """A LLaVA small enough for tests: CLIP tower width 64, 3 layers, 64 px / patch 8 (64 patches);
    Llama width 96, 2 layers, vocabulary 200; image token 199, pad 0."""
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=64,
                  patch_size=8, projection_dim=32, hidden_act="quick_gelu")
    text = dict(hidden_size=llm_hidden, intermediate_size=2 * llm_hidden + 64, num_hidden_layers=llm_layers,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=200, max_position_embeddings=512, pad_token_id=0)
    return _llava(vision, text, 199, seed)


def save_llava(model: torch.nn.Module, folder: Union[str, os.PathLike]) -> Path:
    """``save_pretrained`` (safetensors) to ``folder``; :func:`edgeprune.mllm.llava.load_llava` reads it back."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    from edgeprune.families.hf_loading import _quiet_transformers

    with _quiet_transformers():
        model.save_pretrained(path)
    if not any(path.glob("*.safetensors")):
        raise EdgepruneError(f"save_pretrained wrote no .safetensors file to '{path}'")
    return path


SMALL_TOWER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=64,
                   patch_size=8)
SMALL_LLM = dict(hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=200)
SMALL_FAMILIES = ("llava-clip", "llava-siglip", "llava-next")


def small_llava(family: str = "llava-clip", feature_layer: Union[int, list] = -2, seed: int = 0):
    """A tiny model of each supported family (64 patches, image token 199): ``llava-clip`` (LLaVA-1.5
    layout), ``llava-siglip`` (a SigLIP tower, strategy ``full``: no CLS) and ``llava-next`` (CLIP
    tower, anyres pinpoints up to 128 x 128 px, so the base image plus 2 x 2 crops)."""
    import transformers

    if family not in SMALL_FAMILIES:
        raise EdgepruneError(f"unknown family {family!r} (choose from {', '.join(SMALL_FAMILIES)})")
    text = transformers.LlamaConfig(**SMALL_LLM)
    common = dict(text_config=text, image_token_index=199, vision_feature_layer=feature_layer)
    if family == "llava-siglip":
        cfg = transformers.LlavaConfig(vision_config=transformers.SiglipVisionConfig(**SMALL_TOWER),
                                       vision_feature_select_strategy="full", **common)
        cls = transformers.LlavaForConditionalGeneration
    elif family == "llava-next":
        cfg = transformers.LlavaNextConfig(vision_config=transformers.CLIPVisionConfig(**SMALL_TOWER),
                                           image_grid_pinpoints=[[64, 128], [128, 64], [128, 128]], **common)
        cls = transformers.LlavaNextForConditionalGeneration
    else:
        cfg = transformers.LlavaConfig(vision_config=transformers.CLIPVisionConfig(**SMALL_TOWER), **common)
        cls = transformers.LlavaForConditionalGeneration
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return cls(cfg).float().eval()
    finally:
        torch.random.set_rng_state(state)


def byte_clip_tokenizer():
    """A real ``CLIPTokenizer`` over the byte alphabet (every byte bare and word-final, a few merges,
    the special tokens last as in CLIP's vocabulary): no download, any text tokenizes."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars])}
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def small_clip_query(folder: Union[str, os.PathLike], vision_width: int = 64, projection_dim: int = 16,
                     seed: int = 1) -> Path:
    """A tiny ``CLIPModel`` folder with :func:`byte_clip_tokenizer`, whose vision width matches the small
    towers: the text tower turns questions into queries, its ``visual_projection`` maps patches there."""
    import transformers

    from edgeprune.families.hf_loading import _quiet_transformers

    tok = byte_clip_tokenizer()
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=len(tok),
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                max_position_embeddings=77)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=dict(SMALL_TOWER, hidden_size=vision_width),
                                                               projection_dim=projection_dim))
    finally:
        torch.random.set_rng_state(state)
    path = Path(folder)
    with _quiet_transformers():
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return path
