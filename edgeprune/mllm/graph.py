"""The exported vision graph of a LLaVA-style model: pixels (and a query) -> K visual tokens.

Output contract (static K, batch-independent):
- ``visual_tokens`` [B, K, D_llm]: the kept tokens after the projector, in raster order;
- ``patch_index`` [B, K] int64: each token's raster index in the tower's patch grid;
- ``grid_position`` [B, K, 2] int64: (row, col) of that patch;
- ``token_sizes`` [B, K] float32: patches each token stands for (they sum to N).

LLaVA-NeXT graphs take ``pixel_values`` [B, P, 3, H, W] (the base image then the P-1 crops of one
fixed anyres layout); the base image gets ``tokens`` tokens and every crop ``crop_tokens``, and each
piece's tokens follow the previous piece's, each followed by LLaVA-NeXT's ``image_newline`` token
(``patch_index`` = crop * N + raster index, the separator's -1). Inputs: ``pixel_values`` and, for
the query-conditioned methods, ``query`` [B, D_q].
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.plan.methods import SELECTION_METHODS
from edgeprune.plan.token_plan import check_options as check_typed_options
from edgeprune.mllm.llava import LlavaParts, joint_space, tower_features
from edgeprune.mllm.select import Selection, gsp_select, qcsp_select, script_select, visionzip_select
from edgeprune.reducers.common import gather_tokens

METHODS = SELECTION_METHODS  # declared in edgeprune.plan.methods (group "selection")
QUERY_METHODS = ("qcsp", "script")
OUTPUT_NAMES = ("visual_tokens", "patch_index", "grid_position", "token_sizes")
# VisionZip's released settings keep 54 of 64, 108 of 128 and 162 of 192 tokens as dominant.
VISIONZIP_DOMINANT_SHARE = 54 / 64


def check_options(method: str, tokens: int, num_patches: int, options: dict[str, Any]) -> dict[str, Any]:
    """Typed, range-checked options with the method's defaults filled in; one error line otherwise."""
    if method not in METHODS:
        raise EdgepruneError(f"unknown method {method!r} for a multimodal model (choose from {', '.join(METHODS)})")
    if method == "none":
        if tokens not in (None, num_patches):
            raise EdgepruneError(f"method none keeps all {num_patches} tokens; --tokens {tokens} needs a pruning method")
    elif not 0 < tokens <= num_patches:
        raise EdgepruneError(f"--tokens {tokens} is not in 1..{num_patches} (the tower's patch tokens)")
    out = check_typed_options(method, options, group="selection")
    if method == "visionzip":
        out.setdefault("dominant", max(1, round(tokens * VISIONZIP_DOMINANT_SHARE)))
        if out["dominant"] > tokens:
            raise EdgepruneError(f"option dominant={out['dominant']} exceeds --tokens {tokens}")
    if method == "script":
        out.setdefault("survivors", max(tokens, num_patches // 2))
        if not tokens <= out["survivors"] <= num_patches:
            raise EdgepruneError(f"option survivors={out['survivors']} must lie in [{tokens}, {num_patches}]")
    return out


class VisualTokenGraph(nn.Module):
    """One LLaVA front-end with a selection method baked in; outputs follow :data:`OUTPUT_NAMES`."""

    output_names = OUTPUT_NAMES

    def __init__(self, parts: LlavaParts, method: str, tokens: Optional[int] = None, options: Optional[dict] = None,
                 projection: Optional[nn.Module] = None, crop_tokens: Optional[int] = None) -> None:
        super().__init__()
        n = parts.num_patches
        tokens = n if tokens is None else tokens
        self.parts, self.method, self.tokens = parts, method, tokens
        self.options = check_options(method, tokens, n, dict(options or {}))
        self.crop_tokens = tokens if crop_tokens is None else crop_tokens
        self.crop_options = self.options
        if parts.family == "llava_next":
            self.crop_options = check_options(method, self.crop_tokens, n, dict(options or {}))
            if parts.image_newline is None:
                raise EdgepruneError("this LLaVA-NeXT model has no image_newline parameter")
        self.projection = projection
        self.tower_module = parts.model  # registers the weights, so .eval() and tracing see them
        self.needs_query = method in QUERY_METHODS
        if self.needs_query and parts.tower.family == "hf-clip-vision" and projection is None:
            raise EdgepruneError(f"{method} on a CLIP tower needs the CLIP model's visual_projection (--query-tower)")

    @property
    def input_names(self) -> list[str]:
        return ["pixel_values", "query"] if self.needs_query else ["pixel_values"]

    @property
    def query_dim(self) -> int:
        if self.projection is not None:
            return int(self.projection.out_features)
        return self.parts.tower.spec.embed_dim

    def forward(self, pixel_values: Tensor, query: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.parts.family == "llava_next":
            return self._forward_pieces(pixel_values, query)
        return self._forward_image(pixel_values, query, self.tokens, self.options)

    def _forward_image(self, pixels: Tensor, query: Optional[Tensor], k: int, opts: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        parts, method = self.parts, self.method
        features, received, keys = tower_features(parts, pixels, with_attention=method == "visionzip")
        b, n = features.shape[:2]
        if method == "none":
            sel = Selection(torch.arange(n, device=pixels.device).expand(b, n), features.new_ones(b, n), features)
        elif method == "visionzip":
            sel = visionzip_select(features, received, keys, k, opts["dominant"])
        elif method == "gsp":
            sel = gsp_select(features, k, opts)
        else:
            joint = joint_space(parts, features, self.projection)
            projected = parts.projector(features)  # Script's diversity is the cosine of the projector outputs
            negate = opts.get("negate_relevance", False)
            if method == "qcsp":
                sel = qcsp_select(joint, projected, query, k, negate=negate)
            else:
                sel = script_select(features, joint, projected, query, k, opts["survivors"], opts, negate)
            visual = gather_tokens(projected, sel.index)
            return visual, sel.index, self._grid(sel.index), sel.sizes
        tokens = sel.tokens if sel.tokens is not None else gather_tokens(features, sel.index)
        return parts.projector(tokens), sel.index, self._grid(sel.index), sel.sizes

    def _grid(self, index: Tensor) -> Tensor:
        cols = self.parts.grid[1]
        return torch.stack((torch.div(index, cols, rounding_mode="floor"), index % cols), dim=-1)

    def _forward_pieces(self, pixel_values: Tensor, query: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """LLaVA-NeXT: the base image, then every crop, each followed by the newline token."""
        b, pieces = pixel_values.shape[:2]
        n = self.parts.num_patches
        newline = self.parts.image_newline.to(pixel_values.dtype).view(1, 1, -1).expand(b, 1, -1)
        minus_one = torch.full((b, 1), -1, dtype=torch.int64, device=pixel_values.device)
        outs: list[list[Tensor]] = [[], [], [], []]
        for piece in range(pieces):
            k, opts = (self.tokens, self.options) if piece == 0 else (self.crop_tokens, self.crop_options)
            visual, index, grid, sizes = self._forward_image(pixel_values[:, piece], query, k, opts)
            for store, value, sep in zip(outs, (visual, index + piece * n, grid, sizes),
                                         (newline, minus_one, minus_one.unsqueeze(-1).expand(b, 1, 2), sizes.new_zeros(b, 1))):
                store.extend((value, sep))
        return tuple(torch.cat(store, dim=1) for store in outs)

    def num_outputs(self, pieces: int = 1) -> int:
        """K of the output: tokens (+ crop tokens and one newline per piece for LLaVA-NeXT)."""
        if self.parts.family != "llava_next":
            return self.tokens
        return self.tokens + (pieces - 1) * self.crop_tokens + pieces


__all__ = ["METHODS", "QUERY_METHODS", "OUTPUT_NAMES", "VisualTokenGraph", "check_options"]
