"""Time to first token of a LLaVA model with and without visual-token pruning, end to end on this CPU.

One timed run of a variant (``none`` keeps all N patch tokens; ``METHOD-K`` keeps K):

1. the exported vision graph in ONNX Runtime on fixed random pixels (plus a fixed unit query for the
   query-conditioned methods): ``visual_tokens [1, K, D_llm]``;
2. the splice: the prompt's one ``<image>`` placeholder expanded to K, text embedded, visual tokens put
   in (:mod:`edgeprune.mllm.splice`);
3. the LLM prefill in PyTorch, ``model(inputs_embeds, attention_mask, position_ids, logits_to_keep=1)``
   under ``torch.inference_mode()``, and the argmax of the last logits: the first token.

TTFT = (1) + (2) + (3). Every round runs every variant once in shuffled order; before each timed run
the machine idles ``pause`` seconds and runs the variant ``settle`` times untimed (ONNX Runtime's and
OpenMP's thread pools spin after a run, see docs/results and NOTES "Timing hygiene"). The vision
sessions do not spin: each hands its result straight to PyTorch, whose prefill would otherwise share
the cores with ONNX Runtime's idle-spinning threads. Speedups are medians of per-round ratios.

**7B prediction.** The small LLM's measured median prefill times at the variants' sequence lengths T
(= prompt tokens + K) are fitted as ``t = a + s * MACs(T)`` (least squares; ``a >= 0``), where MACs(T)
counts, per layer, the q/k/v/o projections, the three MLP matmuls and the two T x T attention products
(full T^2, as the attention kernels compute them), plus one row of the LM head. The predicted
prefill of Llama-2-7B (:data:`~edgeprune.mllm.configs.LLAMA2_7B`) at the same T is
``a + s * MACs_7B(T)``, and its TTFT the measured vision + splice + that. Assumptions: the 7B runs
in float32 on this CPU at the same seconds per MAC as the small LLM (larger GEMMs are, if anything,
somewhat more efficient, and 27 GB of fp32 weights must fit in memory); the fixed overhead ``a`` does
not grow with depth; the vision tower is the one measured (LLaVA-1.5-7B's is the same CLIP-L/14-336).
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json
from edgeprune.core.progress import Progress, advance, prefixed, say
from edgeprune.mllm.configs import LLAMA2_7B

PAUSE_S = 0.1
PROJECTION_SEED = 1234


# ---------------------------------------------------------------------------------------------- MACs
def llm_dims(text_config: Any) -> dict[str, int]:
    """A Llama-style config's dimensions in :data:`LLAMA2_7B`'s keys (+ kv_heads, head_dim)."""
    heads = int(text_config.num_attention_heads)
    hidden = int(text_config.hidden_size)
    return dict(layers=int(text_config.num_hidden_layers), hidden=hidden, intermediate=int(text_config.intermediate_size),
                heads=heads, kv_heads=int(getattr(text_config, "num_key_value_heads", None) or heads),
                head_dim=int(getattr(text_config, "head_dim", None) or hidden // heads), vocab=int(text_config.vocab_size))


def prefill_macs(dims: dict[str, int], seq_len: int, logits: int = 1) -> int:
    """Multiply-accumulates of one batch-1 prefill of ``seq_len`` tokens through a Llama-style LLM."""
    d, t = dims["hidden"], seq_len
    heads = dims["heads"]
    head_dim = dims.get("head_dim", d // heads)
    kv = dims.get("kv_heads", heads) * head_dim
    q = heads * head_dim
    projections = t * d * (q + 2 * kv) + t * q * d
    mlp = 3 * t * d * dims["intermediate"]
    attention = 2 * heads * t * t * head_dim  # scores and weighted values
    return dims["layers"] * (projections + mlp + attention) + logits * d * dims["vocab"]


def fit_prefill(seq_lens: Sequence[int], times_ms: Sequence[float], dims: dict[str, int]) -> dict[str, Any]:
    """``t = a + s * MACs(T)`` by least squares (a clipped at 0, then s refitted through the origin)."""
    macs = np.array([prefill_macs(dims, t) for t in seq_lens], dtype=np.float64)
    t = np.array(times_ms, dtype=np.float64) / 1e3
    if len(set(seq_lens)) >= 2:
        (a, s), *_ = np.linalg.lstsq(np.stack([np.ones_like(macs), macs], 1), t, rcond=None)
    else:
        a, s = 0.0, 0.0
    if a < 0 or s <= 0:
        a, s = 0.0, float((t @ macs) / (macs @ macs))
    fitted = a + s * macs
    return {"model": "seconds = a + s * MACs(T)", "a_s": float(a), "s_per_mac": float(s),
            "gmacs_per_s": float(1e-9 / s) if s > 0 else None, "seq_lens": [int(x) for x in seq_lens],
            "macs": [int(m) for m in macs], "measured_ms": [float(x) for x in times_ms],
            "fitted_ms": [float(x * 1e3) for x in fitted],
            "max_rel_residual": float(np.max(np.abs(fitted - t) / t)) if len(t) else 0.0}


def predict_prefill_ms(fit: dict[str, Any], dims: dict[str, int], seq_len: int) -> float:
    return 1e3 * (fit["a_s"] + fit["s_per_mac"] * prefill_macs(dims, seq_len))


# -------------------------------------------------------------------------------------------- inputs
def prefill_inputs(parts: Any, prompt_tokens: int, query_dim: Optional[int] = None, seed: int = 0) -> dict[str, Any]:
    """The fixed inputs of every run: ``pixel_values`` [1, 3, H, W], a unit ``query`` [1, D_q] (when
    ``query_dim``) and ``prompt_ids`` [1, prompt_tokens + 1]: random text ids with one ``<image>``
    placeholder after the first quarter of the text (LLaVA puts a system prompt before the image)."""
    if prompt_tokens < 1:
        raise EdgepruneError(f"--prompt-tokens must be >= 1, got {prompt_tokens}")
    rng = np.random.default_rng(seed)
    spec = parts.tower.spec
    pixels = rng.standard_normal((1, spec.in_chans, *spec.img_size)).astype(np.float32)
    text_cfg = parts.model.config.text_config
    pad = _pad_id(parts)
    high = min(int(text_cfg.vocab_size), parts.image_token_id) if parts.image_token_id > 1 else int(text_cfg.vocab_size)
    pool = np.array([i for i in range(1, high) if i not in (pad, parts.image_token_id)], dtype=np.int64)
    text = rng.choice(pool, size=prompt_tokens).tolist()
    before = prompt_tokens // 4
    ids = torch.tensor([text[:before] + [parts.image_token_id] + text[before:]], dtype=torch.int64)
    out: dict[str, Any] = {"pixel_values": pixels, "prompt_ids": ids, "query": None}
    if query_dim:
        q = rng.standard_normal((1, query_dim)).astype(np.float32)
        out["query"] = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return out


def _pad_id(parts: Any) -> int:
    pad = getattr(parts.model.config.text_config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def query_projection(parts: Any, seed: int = PROJECTION_SEED) -> Optional[nn.Module]:
    """A seeded stand-in for CLIP's ``visual_projection`` (only latency is measured); None for SigLIP."""
    if parts.tower.family != "hf-clip-vision":
        return None
    width = parts.tower.spec.embed_dim
    out_dim = int(getattr(parts.model.config.vision_config, "projection_dim", None) or width)
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(width, out_dim, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_dim, width, generator=gen) / width ** 0.5)
    return layer.eval()


def model_fingerprint(model: nn.Module) -> str:
    """The config and every weight: tells a reusable artifact of this model from a stale one."""
    from edgeprune.families.weights import model_fingerprint as weights_fingerprint

    config = model.config.to_json_string(use_diff=False)
    return hashlib.sha256(f"{config}{weights_fingerprint(model)}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ exports
def _artifact(parts: Any, method: str, k: int, folder: Path, fingerprint: str, projection: Optional[nn.Module],
              progress: Optional[Progress] = None) -> tuple[Path, bool]:
    """The vision artifact at ``folder``: reused when its manifest matches, else (re-)exported."""
    from edgeprune.mllm.export import KIND, export_visual
    from edgeprune.mllm.graph import QUERY_METHODS

    info = {"fingerprint": fingerprint, "projection_seed": PROJECTION_SEED if method in QUERY_METHODS else None}
    manifest_file = folder / "manifest.json"
    if manifest_file.is_file():
        try:
            m = read_json(manifest_file)
            if (m.get("kind") == KIND and m.get("method") == method and m.get("tokens") == k
                    and all(m.get("model", {}).get(key) == v for key, v in info.items())
                    and m["inputs"][0]["shape"][0] == 1 and (folder / m["onnx"]["file"]).is_file()):
                return folder, True
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            pass
    say(progress, f"exporting {method} K={k} to {folder}")
    export_visual(parts, method, folder, tokens=k, projection=projection if method in QUERY_METHODS else None,
                  batch=1, model_info=info, overwrite=True, progress=prefixed(progress, f"{method} K={k}"))
    return folder, False


# ---------------------------------------------------------------------------------------- benchmark
def check_prefill_args(model: nn.Module, tokens: Sequence[int], method: str) -> tuple[Any, list[int]]:
    """The model's LLaVA parts and the K values, or one clear error (before any export or timing)."""
    from edgeprune.mllm.graph import METHODS, check_options
    from edgeprune.mllm.llava import llava_parts

    if method not in METHODS or method == "none":
        raise EdgepruneError(f"--method {method!r}: choose a pruning method ({', '.join(m for m in METHODS if m != 'none')})")
    ks = [int(k) for k in tokens]
    if not ks or len(set(ks)) != len(ks):
        raise EdgepruneError(f"--tokens needs one or more distinct values, got {list(tokens)}")
    parts = llava_parts(model)
    if parts.family != "llava":
        raise EdgepruneError(f"the prefill benchmark takes LLaVA-1.5-style models (one image), not {parts.family}")
    for k in ks:
        check_options(method, k, parts.num_patches, {})
    return parts, ks


class _Variant:
    def __init__(self, name: str, method: str, k: int, path: Path, reused: bool) -> None:
        self.name, self.method, self.k, self.path, self.reused = name, method, k, path, reused
        self.runner: Any = None
        self.feed: dict[str, np.ndarray] = {}
        self.times = []  # (vision, splice, prefill) seconds per timed run
        self.tokens: set[int] = set()


def prefill_bench(model_or_folder: Union[nn.Module, str, os.PathLike], tokens: Sequence[int] = (64, 128, 192),
                  method: str = "visionzip", prompt_tokens: int = 32, rounds: int = 10, threads: Optional[int] = None,
                  *, work_dir: Union[str, os.PathLike], progress: Optional[Progress] = None,
                  warmup: int = 1, settle: int = 1,
                  pause: float = PAUSE_S, seed: int = 0, source: Optional[str] = None) -> dict[str, Any]:
    """TTFT of the unpruned LLaVA and of ``method`` at each K in ``tokens``, interleaved; see the module
    docstring. ``work_dir`` keeps the exported vision graphs (reused on a rerun when their manifest
    matches the model). ``progress`` gets the steps as messages, then each timed round as ``(round, rounds,
    "timing rounds")``. Returns a JSON-able dict: config, rows per variant, fit, 7B prediction."""
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.core.machine import library_versions
    from edgeprune.mllm.graph import QUERY_METHODS
    from edgeprune.mllm.llava import load_llava
    from edgeprune.mllm.splice import expand_image_placeholders, splice_visual_tokens

    if prompt_tokens < 1:
        raise EdgepruneError(f"--prompt-tokens must be >= 1, got {prompt_tokens}")
    if rounds < 1 or warmup < 0 or settle < 0 or pause < 0:
        raise EdgepruneError("--rounds must be >= 1, --warmup and --settle >= 0")
    if threads is not None and threads < 1:
        raise EdgepruneError(f"--threads must be >= 1, got {threads}")
    if isinstance(model_or_folder, nn.Module):
        model = model_or_folder
    else:
        source = str(model_or_folder)
        say(progress, f"loading {source}")
        model = load_llava(model_or_folder)
    parts, ks = check_prefill_args(model, tokens, method)
    n = parts.num_patches
    dims = llm_dims(model.config.text_config)
    projection = query_projection(parts) if method in QUERY_METHODS else None
    query_dim = (projection.out_features if projection is not None else parts.tower.spec.embed_dim) \
        if method in QUERY_METHODS else None
    inputs = prefill_inputs(parts, prompt_tokens, query_dim, seed)
    fingerprint = model_fingerprint(model)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    variants = []
    for name, meth, k in [("none", "none", n)] + [(f"{method}-{k}", method, k) for k in ks]:
        path, reused = _artifact(parts, meth, k, work / name, fingerprint, projection, progress)
        variants.append(_Variant(name, meth, k, path, reused))

    embed = parts.embed_tokens
    image_id, pad = parts.image_token_id, _pad_id(parts)
    ort_threads = threads or torch.get_num_threads()
    torch_threads_before = torch.get_num_threads()

    def run(v: _Variant) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        visual = v.runner.infer(v.feed)["visual_tokens"]
        t1 = time.perf_counter()
        with torch.inference_mode():
            ids, mask = expand_image_placeholders(inputs["prompt_ids"], image_id, v.k, pad)
            batch = splice_visual_tokens(ids, mask, visual, embed, image_id)
            t2 = time.perf_counter()
            logits = model(**batch, logits_to_keep=1).logits
            v.tokens.add(int(logits[0, -1].argmax()))
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    try:
        if threads:
            torch.set_num_threads(threads)
        for v in variants:
            v.runner = OrtRunner(v.path / "model.onnx", threads=ort_threads, spinning=False).activate()
            v.feed = {"pixel_values": inputs["pixel_values"]}
            if v.method in QUERY_METHODS:
                v.feed["query"] = inputs["query"]
            say(progress, f"warming up {v.name}")
            for _ in range(warmup):
                run(v)
        order = list(range(len(variants)))
        shuffler = random.Random(seed)
        for r in range(rounds):
            shuffler.shuffle(order)
            for i in order:
                v = variants[i]
                gc.collect()
                time.sleep(pause)
                for _ in range(settle):
                    run(v)
                v.times.append(run(v))
            advance(progress, r + 1, rounds, "timing rounds")
    finally:
        for v in variants:
            if v.runner is not None:
                v.runner.deactivate()
        torch.set_num_threads(torch_threads_before)

    return _report(variants, dims, parts, model, source, method, ks, prompt_tokens, rounds, warmup, settle, pause,
                   threads, ort_threads, seed, library_versions())


def _report(variants: list[_Variant], dims: dict[str, int], parts: Any, model: nn.Module, source: Optional[str],
            method: str, ks: list[int], prompt_tokens: int, rounds: int, warmup: int, settle: int, pause: float,
            threads: Optional[int], ort_threads: int, seed: int, versions: dict[str, str]) -> dict[str, Any]:
    times = np.array([v.times for v in variants]) * 1e3  # [variant, round, (vision, splice, prefill)] ms
    ttft = times.sum(axis=-1)  # [variant, round]
    base = 0
    med = np.median(times, axis=1)  # [variant, 3]
    seq = [prompt_tokens + v.k for v in variants]
    fit = fit_prefill(seq, med[:, 2].tolist(), dims)
    big = {**LLAMA2_7B, "kv_heads": LLAMA2_7B["heads"], "head_dim": LLAMA2_7B["hidden"] // LLAMA2_7B["heads"]}
    pred_prefill = [predict_prefill_ms(fit, big, t) for t in seq]
    pred_ttft = [float(med[i, 0] + med[i, 1] + pred_prefill[i]) for i in range(len(variants))]
    rows, prediction = [], []
    for i, v in enumerate(variants):
        rows.append({
            "name": v.name, "method": v.method, "tokens": v.k, "seq_len": seq[i], "artifact": str(v.path),
            "reused_artifact": v.reused, "vision_ms": float(med[i, 0]), "splice_ms": float(med[i, 1]),
            "prefill_ms": float(med[i, 2]), "ttft_ms": float(np.median(ttft[i])),
            "ttft_p90_ms": float(np.percentile(ttft[i], 90)),
            "speedup": float(np.median(ttft[base] / ttft[i])),
            "vision_speedup": float(np.median(times[base, :, 0] / times[i, :, 0])),
            "prefill_speedup": float(np.median(times[base, :, 2] / times[i, :, 2])),
            "prefill_macs": prefill_macs(dims, seq[i]),
            "first_tokens": sorted(v.tokens),
            "predicted_7b_speedup": pred_ttft[base] / pred_ttft[i],
            "samples_ms": times[i].round(3).tolist(),
        })
        prediction.append({"name": v.name, "tokens": v.k, "seq_len": seq[i], "prefill_ms": pred_prefill[i],
                           "prefill_macs": prefill_macs(big, seq[i]), "ttft_ms": pred_ttft[i],
                           "speedup": pred_ttft[base] / pred_ttft[i]})
    text_cfg = model.config.text_config
    return {
        "kind": "prefill-bench",
        "config": {"source": source, **parts.describe(), "patch_tokens": parts.num_patches,
                   "image_size": list(parts.tower.spec.img_size), "vision_layers": parts.tower.spec.depth,
                   "vision_width": parts.tower.spec.embed_dim, "llm": dims, "method": method, "tokens": ks,
                   "prompt_tokens": prompt_tokens, "batch": 1, "dtype": "float32", "seed": seed,
                   "attn_implementation": getattr(text_cfg, "_attn_implementation", None)},
        "threads": {"torch": threads or torch.get_num_threads(), "onnxruntime": ort_threads, "ort_spinning": False},
        "rounds": rounds, "warmup": warmup, "settle": settle, "pause_s": pause, "baseline": variants[base].name,
        "timing": "median per stage over rounds; speedups = median over rounds of (none TTFT / variant TTFT)",
        "rows": rows,
        "fit": fit,
        "prediction": {"llm": "Llama-2-7B", "dims": big, "rows": prediction,
                       "assumptions": ["float32 on this CPU at the small LLM's fitted seconds per MAC",
                                       "fixed overhead a not scaled with depth",
                                       "vision and splice times as measured here (same CLIP-L/14-336 tower)",
                                       "attention counted as full T x T products"]},
        "versions": versions,
    }
