"""Feed pruned visual tokens to a Hugging Face language model, unchanged, through ``generate``.

The exported vision graph returns ``visual_tokens [B, K, D_llm]`` (already projected, raster order)
plus ``grid_position [B, K, 2]``. Two things must then agree with what the model would have done
with the full image:

* **Embeddings** (LLaVA-style): the prompt gets exactly K ``<image>`` placeholders
  (:func:`expand_image_placeholders`) and the visual tokens replace them in order
  (:func:`splice_visual_tokens`), the same as transformers' ``masked_scatter`` merge. The model is then
  driven with ``inputs_embeds``; its own merge (which insists on one placeholder per *unpruned* token)
  never runs.
* **Positions** (Qwen2-VL M-RoPE): every kept token keeps its original (t, row, col) position, and
  text after the image resumes at max(previous positions) + 1 (:func:`mrope_position_ids`).

What to pass to ``generate`` (transformers 5.24):

* LLaVA: ``model.generate(inputs_embeds=..., attention_mask=...)``; ``position_ids`` is optional
  (generate derives the same cumsum-of-mask positions itself and extends them by +1 per new token).
* Qwen2-VL: ``model.generate(inputs_embeds=..., attention_mask=..., position_ids=<[3, B, T] from
  mrope_position_ids>)``. Passing ``position_ids`` is required: without ``input_ids`` +
  ``mm_token_type_ids`` + ``image_grid_thw``, ``_prepare_position_ids_for_generation`` falls back to
  plain 1-D text positions with ``rope_deltas = 0``, which is wrong for any image. With them given,
  generate never calls ``get_rope_index``; it appends ``position_ids[..., -1:] + 1`` (all three axes)
  per new token, which is right because a chat prompt ends with text, whose (p, p, p) is the maximum.
  ``rope_deltas`` is only read when ``position_ids`` is *not* given (e.g. a hand-written decode loop
  calling ``model(...)`` with a cache); for that, set ``model.model.rope_deltas =
  mrope_rope_deltas(position_ids, attention_mask)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError


def _image_runs(ids: Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive image tokens in a 1-D id row."""
    is_img = (ids == image_token_id).to(torch.int8)
    # Edges of the 0/1 sequence padded with zeros: +1 opens a run, -1 closes one.
    edges = torch.diff(torch.nn.functional.pad(is_img, (1, 1)).to(torch.int64))
    starts = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return list(zip(starts, ends))


def expand_image_placeholders(
    input_ids: Tensor | list[list[int]],
    image_token_id: int,
    counts: Sequence[int] | int,
    pad_token_id: int,
) -> tuple[Tensor, Tensor]:
    """Repeat each row's single ``<image>`` token to ``counts[b]`` placeholders; left-pad the batch.

    A row may also already hold exactly ``counts[b]`` consecutive image tokens (left as is). Leading
    ``pad_token_id`` entries of a tensor row are taken as left padding and dropped before re-padding.
    Returns ``(input_ids [B, T'] int64, attention_mask [B, T'] int64)``, padded on the left because
    generation appends new tokens on the right and reads the last position.
    """
    rows: list[list[int]]
    if isinstance(input_ids, Tensor):
        if input_ids.ndim != 2:
            raise EdgepruneError(f"input_ids must be [batch, seq]; got shape {tuple(input_ids.shape)}")
        rows = []
        for row in input_ids.tolist():
            lead = 0
            while lead < len(row) and row[lead] == pad_token_id:
                lead += 1
            rows.append(row[lead:])
    else:
        rows = [list(r) for r in input_ids]
    n = len(rows)
    wanted = [int(counts)] * n if isinstance(counts, int) else [int(c) for c in counts]
    if len(wanted) != n:
        raise EdgepruneError(f"got {len(wanted)} placeholder counts for {n} sequences")

    out: list[list[int]] = []
    for b, (row, count) in enumerate(zip(rows, wanted)):
        if count < 1:
            raise EdgepruneError(f"sequence {b}: placeholder count must be >= 1, got {count}")
        runs = _image_runs(torch.tensor(row, dtype=torch.int64), image_token_id)
        if not runs:
            raise EdgepruneError(f"sequence {b} has no image token (id {image_token_id})")
        if len(runs) > 1:
            raise EdgepruneError(f"sequence {b} has {len(runs)} separate image-token runs; expected one")
        start, end = runs[0]
        if end - start not in (1, count):
            raise EdgepruneError(
                f"sequence {b} has {end - start} image tokens; expected 1 or {count} (one per visual token)"
            )
        out.append(row[:start] + [image_token_id] * count + row[end:])

    length = max(len(r) for r in out)
    ids = torch.full((n, length), pad_token_id, dtype=torch.int64)
    mask = torch.zeros((n, length), dtype=torch.int64)
    for b, row in enumerate(out):
        ids[b, length - len(row) :] = torch.tensor(row, dtype=torch.int64)
        mask[b, length - len(row) :] = 1
    return ids, mask


def _placeholder_counts(input_ids: Tensor, image_token_id: int, k: int) -> Tensor:
    """Boolean placeholder mask; raises unless every row holds exactly ``k`` placeholders."""
    is_img = input_ids == image_token_id
    per_row = is_img.sum(dim=1).tolist()
    bad = [(b, c) for b, c in enumerate(per_row) if c != k]
    if bad:
        b, c = bad[0]
        raise EdgepruneError(f"sequence {b} has {c} image placeholders but there are {k} visual tokens")
    return is_img


def splice_visual_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    visual_tokens: Tensor | np.ndarray,
    embed_tokens: nn.Module,
    image_token_id: int,
) -> dict[str, Tensor]:
    """Embed ``input_ids`` and put row b's ``visual_tokens[b]`` into its placeholders, in order.

    Same result as transformers' ``inputs_embeds.masked_scatter(image_mask, features)`` for one image
    per row, built with a gather + where so it neither mutates nor depends on the flat batch layout.
    Returns ``inputs_embeds [B, T, D]``, ``attention_mask`` and 1-D ``position_ids [B, T]`` =
    cumsum(mask) - 1 with pads at 0, exactly what ``generate`` derives for left-padded prompts.
    """
    if isinstance(visual_tokens, np.ndarray):
        visual_tokens = torch.from_numpy(visual_tokens)
    if visual_tokens.ndim != 3 or visual_tokens.shape[0] != input_ids.shape[0]:
        raise EdgepruneError(
            f"visual_tokens must be [batch={input_ids.shape[0]}, K, D]; got {tuple(visual_tokens.shape)}"
        )
    k = visual_tokens.shape[1]
    is_img = _placeholder_counts(input_ids, image_token_id, k)
    # The placeholder id may lie outside a resized vocabulary's embedding; its row is overwritten anyway.
    text = embed_tokens(input_ids.masked_fill(is_img, 0))
    if visual_tokens.shape[-1] != text.shape[-1]:
        raise EdgepruneError(
            f"visual tokens have width {visual_tokens.shape[-1]} but the LLM embeds to {text.shape[-1]}"
        )
    visual_tokens = visual_tokens.to(device=text.device, dtype=text.dtype)
    # j-th placeholder of a row takes visual token j: its slot is the running placeholder count - 1.
    slot = (is_img.long().cumsum(dim=1) - 1).clamp(min=0)
    gathered = visual_tokens.gather(1, slot.unsqueeze(-1).expand(-1, -1, text.shape[-1]))
    embeds = torch.where(is_img.unsqueeze(-1).to(text.device), gathered, text)
    mask = attention_mask.to(torch.int64)
    position_ids = (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 0)
    return {"inputs_embeds": embeds, "attention_mask": attention_mask, "position_ids": position_ids}


def mrope_position_ids(
    input_ids: Tensor,
    attention_mask: Tensor,
    image_token_id: int,
    grid_position: Tensor,
    temporal: Tensor | int = 0,
) -> Tensor:
    """Qwen2-VL M-RoPE positions ``[3, B, T]`` (t, row, col) for prompts holding kept visual tokens.

    Mirrors ``Qwen2VLModel.get_rope_index`` (transformers 5.24), generalised to a pruned token set:
    text tokens get (p, p, p) with p running; an image-placeholder run starting when the next text
    position would be s gets (t + s, row + s, col + s) per token, where ``grid_position[b, k]`` is the
    (row, col) of row b's k-th placeholder in the LLM grid (for Qwen2-VL the 2x2-merged grid) and
    ``temporal`` its t (int, or ``[B, K]``; 0 for still images). Text after an image resumes at
    max(all previous positions) + 1, so pruning the last row/column shortens the gap, as the original
    Qwen2-VL code and OpenVINO GenAI's CDPruner port do. Only tokens with ``attention_mask == 1`` are
    numbered (left padding is skipped); pads get 0 on all axes, as ``get_rope_index`` leaves them.
    See the module docstring for what ``generate`` needs.
    """
    if grid_position.ndim != 3 or grid_position.shape[-1] != 2 or grid_position.shape[0] != input_ids.shape[0]:
        raise EdgepruneError(
            f"grid_position must be [batch={input_ids.shape[0]}, K, 2]; got {tuple(grid_position.shape)}"
        )
    bsz, seq = input_ids.shape
    k = grid_position.shape[1]
    _placeholder_counts(input_ids, image_token_id, k)
    grid = grid_position.to(device=input_ids.device, dtype=torch.int64)
    if isinstance(temporal, Tensor):
        t_all = temporal.to(device=input_ids.device, dtype=torch.int64).expand(bsz, k)
    else:
        t_all = torch.full((bsz, k), int(temporal), dtype=torch.int64, device=input_ids.device)
    # (t, row, col) offsets of every kept token, [B, 3, K].
    offsets = torch.stack([t_all, grid[..., 0], grid[..., 1]], dim=1)

    out = torch.zeros(3, bsz, seq, dtype=torch.int64, device=input_ids.device)
    for b in range(bsz):
        real = attention_mask[b].bool()
        ids = input_ids[b][real]
        pieces: list[Tensor] = []
        nxt = 0  # next text position = max(previous) + 1
        cursor = 0  # tokens of this row consumed
        used = 0  # visual tokens of this row consumed
        for start, end in _image_runs(ids, image_token_id) + [(len(ids), len(ids))]:
            if start > cursor:  # text before this run
                text = torch.arange(nxt, nxt + start - cursor, device=ids.device)
                pieces.append(text.expand(3, -1))
                nxt += start - cursor
            if end > start:
                vis = offsets[b, :, used : used + end - start] + nxt
                pieces.append(vis)
                nxt = int(vis.max()) + 1
                used += end - start
            cursor = end
        out[:, b, real] = torch.cat(pieces, dim=1) if pieces else out.new_zeros(3, 0)
    return out


def mrope_rope_deltas(position_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``rope_deltas [B, 1]`` as ``get_rope_index`` returns them: max position + 1 - real length.

    Only needed when decoding *without* passing ``position_ids`` (the model then numbers token i of
    the cache as i + delta); assign it to ``model.model.rope_deltas``.
    """
    mask = attention_mask.bool()
    masked = position_ids.masked_fill(~mask.unsqueeze(0), torch.iinfo(position_ids.dtype).min)
    top = masked.amax(dim=(0, 2))
    return (top + 1 - mask.sum(dim=1)).unsqueeze(1)
