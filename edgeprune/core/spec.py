"""The few numbers of a ViT that plans, FLOPs and latency models need."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ViTSpec:
    depth: int
    embed_dim: int
    num_heads: int
    mlp_hidden: int
    num_prefix: int  # protected tokens in front: CLS, distillation, registers
    num_patches: int
    patch_size: int
    in_chans: int
    img_size: tuple[int, int]
    head_dim_out: int = 0  # classifier outputs (0 when the model returns tokens)
    class_token: bool = True  # the first prefix token is a CLS token (registers alone are not)
    # Dense (segmentation) models: blocks whose per-patch tokens feed the head, and the head's MACs.
    feature_blocks: tuple[int, ...] = ()
    dense_head_macs: int = 0
    # Width of one attention head when it is not embed_dim // num_heads (research ViTs often run
    # e.g. 4 heads of 64 on a 64-wide model); 0 means the usual split.
    head_width: int = 0
    # The head reads only the prefix tokens (CLS, distillation): the last block may then compute
    # attention and MLP for those alone (exact), see TokenPlan.prefix_only_last.
    prefix_head: bool = False
    # MACs of a convolutional stem that replaces the linear patch projection (0: linear patchify).
    stem_macs: int = 0

    @property
    def head_dim(self) -> int:
        return self.head_width or self.embed_dim // self.num_heads

    @property
    def attn_dim(self) -> int:
        """Width of q, k, v and the attention output before the out-projection."""
        return self.num_heads * self.head_dim

    @property
    def dense(self) -> bool:
        return bool(self.feature_blocks)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch rows and columns."""
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        d["feature_blocks"] = list(self.feature_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTSpec":
        d = dict(d)
        d["img_size"] = tuple(d["img_size"])
        d["feature_blocks"] = tuple(d.get("feature_blocks", ()))
        d.setdefault("class_token", d["num_prefix"] > 0)
        return cls(**d)
