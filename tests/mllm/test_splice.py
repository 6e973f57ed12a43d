"""Splicing pruned visual tokens into HF language models: LLaVA embeddings, Qwen2-VL M-RoPE positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from edgeprune.core.errors import EdgepruneError
from edgeprune.mllm.configs import small_llava
from edgeprune.mllm.splice import (
    expand_image_placeholders,
    mrope_position_ids,
    mrope_rope_deltas,
    splice_visual_tokens,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMG = 199
PAD = 0


@pytest.fixture(scope="module")
def llava():
    model = small_llava("llava-clip")  # CLIP tower 64 px / patch 8, Llama 96 wide, image token 199
    # No eos: a random model could emit it and pad the rest, hiding a mismatch.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.model.get_image_features(
            pixel_values=pixels, vision_feature_layer=-2, vision_feature_select_strategy="default"
        )
    feats = torch.stack(list(out.pooler_output))  # [2, 64, 96]
    return model, pixels, feats


PROMPTS = [[1, 5, 6, 7, IMG, 8, 9], [1, IMG, 10]]  # different lengths -> left padding


def test_llava_unpruned_matches_hf_merge(llava):
    model, pixels, feats = llava
    assert feats.shape == (2, 64, 96)
    ids, mask = expand_image_placeholders(PROMPTS, IMG, 64, PAD)
    assert ids.shape == (2, 70) and mask[1, :4].sum() == 0 and mask[0].all()
    spliced = splice_visual_tokens(ids, mask, feats, model.get_input_embeddings(), IMG)
    with torch.no_grad():
        pos = spliced["position_ids"]
        ref = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
        got = model(**spliced).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], atol=1e-5, rtol=0)
    # Numpy tokens (what an ONNX session returns) splice identically.
    again = splice_visual_tokens(ids, mask, feats.numpy(), model.get_input_embeddings(), IMG)
    assert torch.equal(again["inputs_embeds"], spliced["inputs_embeds"])
    assert spliced["position_ids"][1, 4:].tolist() == list(range(66)) and spliced["position_ids"][1, :4].eq(0).all()


def test_llava_pruned_generate_matches_greedy_loop(llava):
    model, _, feats = llava
    keep = [torch.randperm(64, generator=torch.Generator().manual_seed(s))[:16].sort().values for s in (2, 3)]
    tokens = torch.stack([feats[b, keep[b]] for b in range(2)])  # [2, 16, 96], raster order
    ids, mask = expand_image_placeholders(PROMPTS, IMG, [16, 16], PAD)
    spliced = splice_visual_tokens(ids, mask, tokens, model.get_input_embeddings(), IMG)
    with torch.no_grad():
        out = model.generate(
            inputs_embeds=spliced["inputs_embeds"],
            attention_mask=mask,
            max_new_tokens=3,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        new = out.sequences
        assert new.shape == (2, 3)
        # Manual greedy loop without a cache: re-run the whole sequence each step.
        embeds, m, steps = spliced["inputs_embeds"], mask, []
        for step in range(3):
            pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 0)
            logits = model(inputs_embeds=embeds, attention_mask=m, position_ids=pos).logits[:, -1]
            torch.testing.assert_close(out.scores[step], logits, atol=1e-5, rtol=0)
            nxt = logits.argmax(-1)
            steps.append(nxt)
            embeds = torch.cat([embeds, model.get_input_embeddings()(nxt)[:, None]], dim=1)
            m = torch.cat([m, m.new_ones(2, 1)], dim=1)
    assert torch.equal(new, torch.stack(steps, dim=1))


@pytest.fixture(scope="module")
def qwen():
    torch.manual_seed(0)
    cfg = transformers.Qwen2VLConfig(
        text_config=dict(
            vocab_size=200,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=PAD,
            eos_token_id=None,
            bos_token_id=1,
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, spatial_merge_size=2),
        image_token_id=IMG,
        video_token_id=198,
        vision_start_token_id=197,
        vision_end_token_id=196,
    )
    model = transformers.Qwen2VLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model


# Merged grids 3x4 and 4x3 (12 tokens each); image_grid_thw counts patches before the 2x2 merge.
GRIDS = [(3, 4), (4, 3)]
THW = torch.tensor([[1, 6, 8], [1, 8, 6]])
QPROMPTS = [[1, 5, 197, IMG, 196, 7, 8, 9], [1, 2, 3, 4, 5, 197, IMG, 196, 6]]


def _raster(rows: int, cols: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], dim=-1)


def _hf_positions(model, ids, mask):
    return model.model.get_rope_index(
        ids, mm_token_type_ids=(ids == IMG).int(), image_grid_thw=THW, attention_mask=mask
    )


def test_mrope_unpruned_matches_get_rope_index(qwen):
    ids, mask = expand_image_placeholders(QPROMPTS, IMG, 12, PAD)
    assert mask[0, 0] == 0  # row 0 is the shorter one: left padded
    grid = torch.stack([_raster(*g) for g in GRIDS])
    ours = mrope_position_ids(ids, mask, IMG, grid)
    ref, deltas = _hf_positions(qwen, ids, mask)
    assert torch.equal(ours, ref)
    assert torch.equal(mrope_rope_deltas(ours, mask), deltas)


def test_mrope_pruned_keeps_offsets_and_resumes_at_max(qwen):
    ids_full, mask_full = expand_image_placeholders(QPROMPTS, IMG, 12, PAD)
    full = mrope_position_ids(ids_full, mask_full, IMG, torch.stack([_raster(*g) for g in GRIDS]))
    # Keep 5 tokens per image, none from the last row or column, so the max shrinks.
    keep = [torch.tensor([0, 1, 4, 5, 6]), torch.tensor([0, 3, 4, 6, 7])]
    grid = torch.stack([_raster(*GRIDS[b])[keep[b]] for b in range(2)])
    ids, mask = expand_image_placeholders(QPROMPTS, IMG, 5, PAD)
    pos = mrope_position_ids(ids, mask, IMG, grid)
    for b in range(2):
        real_full = full[:, b, mask_full[b].bool()]
        real = pos[:, b, mask[b].bool()]
        img_full = (ids_full[b][mask_full[b].bool()] == IMG).nonzero().flatten()
        img = (ids[b][mask[b].bool()] == IMG).nonzero().flatten()
        start = int(img[0])
        # Text before the image is unchanged; each kept token keeps its (t, row, col) position.
        assert torch.equal(real[:, :start], real_full[:, :start])
        assert torch.equal(real[:, img], real_full[:, img_full[keep[b]]])
        # Text after the image resumes at max(previous) + 1 and runs on by one.
        after = real[:, int(img[-1]) + 1 :]
        top = int(real[:, : int(img[-1]) + 1].max())
        expected = torch.arange(top + 1, top + 1 + after.shape[1]).expand(3, -1)
        assert torch.equal(after, expected)
        assert top < int(real_full[:, : int(img_full[-1]) + 1].max())  # pruning did shrink the span
    assert pos[:, 0, ~mask[0].bool()].eq(0).all()


def test_qwen_generate_with_mrope_positions_matches_hf(qwen):
    """Same prompt two ways: HF's own path (input_ids + image_grid_thw) and inputs_embeds + our positions."""
    ids, mask = expand_image_placeholders(QPROMPTS, IMG, 12, PAD)
    grid = torch.stack([_raster(*g) for g in GRIDS])
    pos = mrope_position_ids(ids, mask, IMG, grid)
    embeds = qwen.get_input_embeddings()(ids)
    mm = (ids == IMG).int()
    with torch.no_grad():
        ref = qwen(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm, image_grid_thw=THW).logits
        got = qwen(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits
        real = mask.bool()
        torch.testing.assert_close(got[real], ref[real], atol=1e-5, rtol=0)
        # Ours first, with no rope_deltas cached: generate must not need them when given position_ids.
        qwen.model.rope_deltas = None
        kw = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
        new = qwen.generate(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, **kw)
        want = qwen.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm, image_grid_thw=THW, **kw)
    assert torch.equal(new.sequences, want.sequences[:, ids.shape[1] :])
    # Scores, not just tokens: a random tiny model often picks the same argmax under wrong positions.
    for a, b in zip(new.scores, want.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_errors():
    with pytest.raises(EdgepruneError, match="no image token"):
        expand_image_placeholders([[1, 2, 3]], IMG, 4, PAD)
    with pytest.raises(EdgepruneError, match="separate image-token runs"):
        expand_image_placeholders([[1, IMG, 2, IMG]], IMG, 4, PAD)
    with pytest.raises(EdgepruneError, match="3 image tokens; expected 1 or 4"):
        expand_image_placeholders([[1, IMG, IMG, IMG, 2]], IMG, 4, PAD)
    # A tensor row: leading pads dropped, an already expanded run kept.
    ids, mask = expand_image_placeholders(torch.tensor([[PAD, 1, IMG, IMG, 2], [1, 3, IMG, 4, 5]]), IMG, 2, PAD)
    assert ids.tolist() == [[PAD, PAD, 1, IMG, IMG, 2], [1, 3, IMG, IMG, 4, 5]]
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6]
    embed = torch.nn.Embedding(200, 8)
    with pytest.raises(EdgepruneError, match="sequence 0 has 2 image placeholders but there are 3"):
        splice_visual_tokens(ids, mask, np.zeros((2, 3, 8), np.float32), embed, IMG)
    with pytest.raises(EdgepruneError, match="2 image placeholders but there are 5"):
        mrope_position_ids(ids, mask, IMG, torch.zeros(2, 5, 2, dtype=torch.long))
    with pytest.raises(EdgepruneError, match="width 7"):
        splice_visual_tokens(ids, mask, torch.zeros(2, 2, 7), embed, IMG)
