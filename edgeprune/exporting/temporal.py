"""Temporal token reuse for segmenters (STA-style): recompute only the patches that changed.

From a still camera most of a frame repeats the previous one. :class:`TemporalSegmenter` runs the
segmenter's blocks on the prefix tokens plus a fixed number M of patches (``update_index``; the
runtime picks the most changed ones) and takes everything else from a cache: at block i the
recomputed tokens attend to all T tokens, using their own fresh keys and values and the cached
ones of the rest. The keys and values of all T tokens, and the head's input features of all
patches, come back as the next frame's cache, so the output is a full mask every frame. Shapes
are static in M. Fresh rows enter a cache as one row Gather over [cached; fresh], no Scatter.
With M = every patch the graph computes the full model and fills the cache (a refresh).

Caches, one tensor per block or tap so that nothing is sliced or stacked (T = prefix + patches,
P = patches, C = width): ``cache_keys.{i}`` and ``cache_values.{i}`` [B, T, C] (heads side by
side, after any key norm) for each block i, and ``cache_feats.{j}`` [B, P, C], the patch tokens the
head reads from feature block j (the deepest after the final norm). Outputs ``next_*`` match.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.artifacts.temporal import GRAPHS, TEMPORAL_FORMAT, TEMPORAL_KIND
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, say



class TemporalSegmenter(nn.Module):
    """A segmenter that recomputes ``recompute`` patches per call and reuses cached states for the rest.

    ``forward(pixels, update_index [B, M] int64, *caches) -> (logits, *next_caches)`` in the order
    of :attr:`cache_names`. ``update_index`` holds M distinct patch indices in [0, patches)
    (row-major); prefix tokens (CLS, registers) are always recomputed. With M = every patch (a
    refresh) it is ``forward(pixels)``: the full model, returning the caches it fills.
    """

    def __init__(self, model: nn.Module, recompute: int) -> None:
        super().__init__()
        from edgeprune.families import adapter_for
        from edgeprune.families.timm_seg import SegmenterAdapter

        adapter = adapter_for(model)
        if not isinstance(adapter, SegmenterAdapter):
            raise EdgepruneError(f"temporal reuse needs a segmenter (family timm-vit-seg), not {adapter.family}")
        spec = adapter.spec
        if not 1 <= recompute <= spec.num_patches:
            raise EdgepruneError(f"temporal reuse: recompute must be 1..{spec.num_patches} patches, got {recompute}")
        self.model = model.eval()
        self.adapter = adapter
        self.views = adapter.blocks()
        self.attns = [b.attn for b in model.backbone.blocks[: spec.depth]]
        self.heads = int(self.attns[0].num_heads)
        self.recompute = int(recompute)
        self.num_prefix = spec.num_prefix
        self.num_patches = spec.num_patches
        self.depth = spec.depth
        self.width = spec.embed_dim
        self.feature_blocks = tuple(model.feature_blocks)

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def cache_names(self) -> list[str]:
        return ([f"cache_keys.{i}" for i in range(self.depth)] + [f"cache_values.{i}" for i in range(self.depth)]
                + [f"cache_feats.{j}" for j in range(len(self.feature_blocks))])

    @property
    def input_names(self) -> list[str]:
        if self.recompute == self.num_patches:
            return ["pixel_values"]
        return ["pixel_values", "update_index", *self.cache_names]

    @property
    def output_names(self) -> list[str]:
        return ["logits", *(n.replace("cache_", "next_", 1) for n in self.cache_names)]

    def cache_shapes(self, batch: Any) -> dict[str, list[Any]]:
        t, p, c = self.num_tokens, self.num_patches, self.width
        return {n: [batch, p if n.startswith("cache_feats") else t, c] for n in self.cache_names}

    def _kv(self, i: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, H, S, D] and k, v in token layout [B, S, C] of block i's recomputed tokens."""
        attn, view = self.attns[i], self.views[i]
        h = view.norm1(x)
        if isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity):
            # The projection's output already is [q | k | v] with heads side by side: no round trip.
            q, k, v = attn.qkv(h).chunk(3, dim=-1)
            b, s, c = q.shape
            return q.reshape(b, s, self.heads, c // self.heads).transpose(1, 2), k, v
        q, k, v = view.qkv(h)
        b, heads, s, d = k.shape
        return q, k.transpose(1, 2).reshape(b, s, heads * d), v.transpose(1, 2).reshape(b, s, heads * d)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, c = t.shape
        return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, pixels: Tensor, *update: Tensor) -> tuple[Tensor, ...]:
        """``update`` is ``(update_index, *caches)``; a refresh (every patch) takes pixels only."""
        x_all = self.adapter.embed(pixels)
        if self.recompute == self.num_patches:
            # Every token is recomputed in place: no cache to read, no rows to merge.
            return self._refresh(x_all, pixels.shape[-2:])
        update_index, caches = update[0], update[1:]
        depth, prefix, n_tok = self.depth, self.num_prefix, self.num_tokens
        keys_in, values_in, feats_in = caches[:depth], caches[depth:2 * depth], caches[2 * depth:]
        b, device = x_all.shape[0], pixels.device
        rows = torch.cat([torch.arange(prefix, device=device).unsqueeze(0).expand(b, -1), update_index + prefix], dim=1)
        s = rows.shape[1]
        # Where every token of the merged cache comes from, as rows of [cached T; recomputed S]: a
        # one-hot compare finds each token's slot among the recomputed rows (rows are distinct).
        hit = rows.unsqueeze(2) == torch.arange(n_tok, device=device).view(1, 1, -1)
        fresh = hit.any(dim=1)
        slot = (hit.to(torch.int64) * torch.arange(s, device=device).view(1, -1, 1)).sum(dim=1)  # [B, T]
        source = torch.where(fresh, slot + n_tok, torch.arange(n_tok, device=device).unsqueeze(0))
        batch_rows = torch.arange(b, device=device).unsqueeze(1)
        flat_tokens = (source + batch_rows * (n_tok + s)).reshape(-1)
        # The same for the patch-only feature caches: rows of [cached P; recomputed patches M].
        n_pat = self.num_patches
        patch_source = torch.where(fresh[:, prefix:], slot[:, prefix:] + (n_pat - prefix),
                                   torch.arange(n_pat, device=device).unsqueeze(0))
        flat_patches = (patch_source + batch_rows * (n_pat + s - prefix)).reshape(-1)

        def merge(cached: Tensor, fresh: Tensor, flat: Tensor) -> Tensor:
            both = torch.cat([cached, fresh], dim=1)
            return torch.index_select(both.reshape(-1, both.shape[-1]), 0, flat).reshape(cached.shape)

        x = torch.index_select(x_all.reshape(-1, x_all.shape[-1]), 0,
                               (rows + batch_rows * n_tok).reshape(-1)).reshape(b, s, -1)
        keys, values, feats = [], [], []
        taps = {blk: j for j, blk in enumerate(self.feature_blocks)}
        last = self.feature_blocks[-1]
        for i, view in enumerate(self.views):
            q, k, v = self._kv(i, x)
            keys.append(merge(keys_in[i], k, flat_tokens))
            values.append(merge(values_in[i], v, flat_tokens))
            a = F.scaled_dot_product_attention(q, self._heads(keys[-1]), self._heads(values[-1]), scale=view.scale)
            x = x + view.ls1(view.attn_out(a))
            x = x + view.ls2(view.mlp(view.norm2(x)))
            if i in taps:
                patches = (self.adapter.final_norm(x) if i == last else x)[:, prefix:]
                feats.append(merge(feats_in[taps[i]], patches, flat_patches))
        logits = self.adapter.head(feats, pixels.shape[-2:])
        return (logits, *keys, *values, *feats)

    def _refresh(self, x: Tensor, size: Sequence[int]) -> tuple[Tensor, ...]:
        keys, values, feats = [], [], []
        last = self.feature_blocks[-1]
        for i, view in enumerate(self.views):
            q, k, v = self._kv(i, x)
            keys.append(k)
            values.append(v)
            a = F.scaled_dot_product_attention(q, self._heads(k), self._heads(v), scale=view.scale)
            x = x + view.ls1(view.attn_out(a))
            x = x + view.ls2(view.mlp(view.norm2(x)))
            if i in self.feature_blocks:
                feats.append((self.adapter.final_norm(x) if i == last else x)[:, self.num_prefix:])
        return (self.adapter.head(feats, size), *keys, *values, *feats)


def recompute_count(fraction_or_count: float, num_patches: int) -> int:
    """``0.4`` -> 40% of the patches (rounded, at least 1); an integer > 1 is a patch count."""
    value = float(fraction_or_count)
    if value <= 0:
        raise EdgepruneError(f"--temporal: the recomputed share must be > 0, got {fraction_or_count}")
    count = round(value * num_patches) if value <= 1 else int(value)
    if value > 1 and value != int(value):
        raise EdgepruneError(f"--temporal: a share is in (0, 1], a count is a whole number; got {fraction_or_count}")
    if not 1 <= count <= num_patches:
        raise EdgepruneError(f"--temporal: {count} patches is out of range 1..{num_patches}")
    return max(1, count)


def temporal_macs(module: TemporalSegmenter, recompute: int) -> int:
    """Matmul MACs of one call recomputing ``recompute`` patches: projections and MLP on S tokens,
    attention of S queries over all T keys, the patch embedding and the dense head on every patch."""
    from edgeprune.plan.macs import embed_macs

    spec = module.adapter.spec
    s, t, c = module.num_prefix + recompute, module.num_tokens, module.width
    per_block = s * c * 3 * c + 2 * s * t * c + s * c * c + 2 * s * c * spec.mlp_hidden
    return embed_macs(spec) + module.depth * per_block + int(spec.dense_head_macs)


def fresh_inputs(module: TemporalSegmenter, batch: int, recompute: int) -> tuple[Tensor, ...]:
    """Random pixels, a random distinct ``update_index`` per batch element and random caches."""
    from edgeprune.exporting.onnx_export import fresh_pixels
    from edgeprune.backends.feeds import fresh_seed

    gen = torch.Generator().manual_seed(fresh_seed())
    spec = module.adapter.spec
    pixels = fresh_pixels([batch, spec.in_chans, *spec.img_size])
    index = torch.stack([torch.randperm(module.num_patches, generator=gen)[:recompute] for _ in range(batch)])
    if recompute == module.num_patches:
        return (pixels,)
    caches = [torch.randn(*shape, generator=gen) for shape in module.cache_shapes(batch).values()]
    return (pixels, index, *caches)


def check_temporal_parity(module: TemporalSegmenter, onnx_path: Path, batches: list[int], tolerance: float) -> dict[str, Any]:
    """ONNX Runtime vs eager PyTorch on fresh random pixels, indices and caches, per output."""
    from edgeprune.exporting.onnx_export import check_parity

    return check_parity(module, onnx_path, [], batches, tolerance, input_names=module.input_names,
                        make_inputs=lambda batch: fresh_inputs(module, batch, module.recompute))


def export_temporal(
    model: nn.Module,
    recompute: float,
    out_dir: str | os.PathLike,
    *,
    batch: int = 1,
    dynamic_batch: bool = False,
    opset: Optional[int] = None,
    tolerance: Optional[float] = None,
    model_info: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
    progress: Optional[Progress] = None,
) -> Path:
    """Export the refresh graph (every patch) and the update graph (``recompute`` patches: a share in
    (0, 1] or a count) of a segmenter to ``out_dir`` with one manifest; both parity-checked."""
    from edgeprune.artifacts.artifact import MANIFEST
    from edgeprune.core.files import atomic_directory, sha256_file, write_json_atomic
    from edgeprune.exporting.onnx_export import DEFAULT_OPSET, DEFAULT_TOLERANCE, trace_to_onnx, trt_lint_report
    from edgeprune.core.machine import library_versions
    from edgeprune.backends.graph import load_graph, op_counts, safety_problems

    opset = opset or DEFAULT_OPSET
    tolerance = tolerance or DEFAULT_TOLERANCE
    if opset < 17:
        raise EdgepruneError(f"opset {opset} is too old: edgeprune needs opset >= 17 (one LayerNormalization node)")
    if batch < 1:
        raise EdgepruneError(f"--batch must be >= 1, got {batch}")
    probe = TemporalSegmenter(model, 1)
    count = recompute_count(recompute, probe.num_patches)
    counts = {"refresh": probe.num_patches, "update": count}
    started = time.perf_counter()
    graphs: dict[str, Any] = {}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for name, m in counts.items():
            module = TemporalSegmenter(model, m)
            path = tmp / f"{name}.onnx"
            say(progress, f"{name} graph ({m} of {module.num_patches} patches): tracing and converting to ONNX")
            trace_batch = 2 if dynamic_batch else batch
            dim = torch.export.Dim("batch", min=1, max=256)
            # forward takes (pixels, *update): the update inputs' shapes go in as one nested tuple.
            rest = tuple({0: dim} for _ in module.input_names[1:])
            dynamic = (({0: dim}, rest) if rest else ({0: dim},)) if dynamic_batch else None
            trace_to_onnx(module, fresh_inputs(module, trace_batch, m), path, input_names=module.input_names,
                          output_names=module.output_names, opset=opset, dynamic_shapes=dynamic)
            graph = load_graph(path)
            problems = safety_problems(graph)
            if problems:
                raise EdgepruneError(f"exported {name} graph breaks edgeprune's export rules: {problems[0]}")
            say(progress, f"{name} graph: checking ONNX Runtime against eager PyTorch")
            parity = check_temporal_parity(module, path, [1, 2] if dynamic_batch else [batch], tolerance)
            graphs[name] = {"file": path.name, "recompute": m, "inputs": module.input_names, "sha256": sha256_file(path),
                            "ops": op_counts(graph), "trt_lint": trt_lint_report(graph),
                            "macs": temporal_macs(module, m), "parity": parity}
        shapes = probe.cache_shapes("batch" if dynamic_batch else batch)  # type: ignore[arg-type]
        spec = probe.adapter.spec
        manifest = {
            "format": TEMPORAL_FORMAT, "kind": TEMPORAL_KIND,
            "model": {**probe.adapter.describe(), **(model_info or {}), "spec": spec.to_dict()},
            "patches": probe.num_patches, "prefix": probe.num_prefix, "grid": list(spec.grid),
            "recompute": count, "recompute_share": round(count / probe.num_patches, 6),
            "batch": "batch" if dynamic_batch else batch, "opset": opset,
            "inputs": {"pixel_values": ["batch" if dynamic_batch else batch, spec.in_chans, *spec.img_size],
                       "update_index": ["batch" if dynamic_batch else batch, count], **shapes},
            "outputs": probe.output_names, "graphs": graphs,
            "versions": library_versions(), "export_seconds": round(time.perf_counter() - started, 2),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return Path(out_dir)


__all__ = ["GRAPHS", "TEMPORAL_KIND", "TemporalSegmenter", "check_temporal_parity",
           "export_temporal", "fresh_inputs", "recompute_count", "temporal_macs"]
