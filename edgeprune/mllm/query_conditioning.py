"""Is Script's query conditioning real? Class share among the K kept tokens on the reference segmenter.

On held-out procedural scenes (``models/scene_seg``'s generator and seeds), pick one small foreground
object per scene (a class id 2..6 covering < 10 % of the image; the smallest such class), set the
query to the mean tower feature of that class's patches *taken from a different held-out scene*, and
count how many of the K kept tokens are patches of that class, for the query-conditioned selectors
(``qcsp``, ``script``) and the query-free ones (``visionzip``, ``gsp``). The acceptance criterion:
qcsp's mean share is >= 2x visionzip's and gsp's at K = 32 over 200 scenes.

The segmenter has no text tower, so the query lives in the tower's own feature space: ``joint`` =
``similar`` = the patch tokens of the feature layer (no projection). Layer 6 is the last block's
output (HF ``hidden_states[-1]``, before the final norm); layer 5 is LLaVA's ``-2``.

The study itself; ``scripts/query_conditioning.py`` runs it and writes ``docs/results/query_conditioning.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "scene_seg"  # the reference segmenter, in a checkout
FOREGROUND = (2, 3, 4, 5, 6)  # box, ball, cylinder, tool, person
MAX_COVER = 0.10  # an object covers under 10 % of the image
DONOR_MIN_PATCHES = 2  # the query's scene must hold >= 2 patches of the class
METHODS = ("qcsp", "script", "visionzip", "gsp", "qcsp_generic")
RATIO = 2.0


# ----------------------------------------------------------------------------------------- labels


def patch_labels(labels: np.ndarray, patch: int) -> np.ndarray:
    """Majority class of each ``patch`` x ``patch`` cell: labels [B, H, W] -> [B, (H/p)*(W/p)] in raster
    order (ties go to the lower class id)."""
    b, h, w = labels.shape
    gh, gw = h // patch, w // patch
    cells = labels[:, :gh * patch, :gw * patch].reshape(b, gh, patch, gw, patch).transpose(0, 1, 3, 2, 4)
    cells = cells.reshape(b, gh * gw, patch * patch)
    counts = np.stack([(cells == c).sum(-1) for c in range(int(labels.max(initial=0)) + 1)], -1)
    return counts.argmax(-1)


def pick_target(label: np.ndarray, patches: np.ndarray, max_cover: float = MAX_COVER,
                min_patches: int = 1) -> Optional[int]:
    """The smallest foreground class (by pixels) covering under ``max_cover`` of the image and owning at
    least ``min_patches`` patches (a class with no patch of its own cannot be kept by anyone), or None."""
    total = label.size
    best = None
    for c in FOREGROUND:
        pixels = int((label == c).sum())
        if pixels == 0 or pixels / total >= max_cover or int((patches == c).sum()) < min_patches:
            continue
        if best is None or pixels < best[0]:
            best = (pixels, c)
    return None if best is None else best[1]


def kept_stats(index: np.ndarray, patches: np.ndarray, cls: int) -> dict[str, float]:
    """How one selection treats class ``cls``: ``index`` [K] kept raster indices, ``patches`` [N] the
    per-patch classes. share = kept of the class / K (the primary number); capped = kept / min(n_c, K);
    recall = kept / n_c."""
    k = len(index)
    n_c = int((patches == cls).sum())
    kept = int((patches[np.asarray(index)] == cls).sum())
    return {"kept": kept, "share": kept / k, "capped": kept / max(1, min(n_c, k)), "recall": kept / max(1, n_c)}


# --------------------------------------------------------------------------------------- features


def load_model(folder: Path = MODEL_DIR):
    from edgeprune.families.timm_seg import load_segmenter

    return load_segmenter(folder)


def render(seeds: Sequence[int], model) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixels [B, 3, H, W] and labels [B, H, W] of the seeds, at the segmenter's input size."""
    from edgeprune.data import SceneConfig, scene_batch
    from edgeprune.imaging.evaluation import normalize

    info = model.info["input"]
    _, h, w = (int(v) for v in info["size"])
    images, labels = scene_batch(seeds, SceneConfig(height=h, width=w))
    return normalize(images, info["mean"], info["std"]), labels


@torch.no_grad()
def tower_features(adapter, pixels: torch.Tensor, layers: Sequence[int]) -> dict[int, tuple]:
    """Per feature layer (hidden-state index, 0 = embeddings): patch tokens [B, N, C], the CLS
    attention each patch receives at the block producing that layer (summed over heads) [B, N] and the
    keys averaged over heads [B, N, Dh]; the blocks run by hand as in ``edgeprune.mllm.llava``."""
    from edgeprune.mllm.llava import _attention_signals

    prefix = adapter.spec.num_prefix
    x = adapter.embed(pixels)
    out = {}
    for i, view in enumerate(adapter.blocks()[:max(layers)]):
        q, k, v = view.qkv(view.norm1(x))
        signals = _attention_signals(q, k, view.scale, prefix) if i + 1 in layers else None
        x = x + view.ls1(view.attn_out(F.scaled_dot_product_attention(q, k, v, scale=view.scale)))
        x = x + view.ls2(view.mlp(view.norm2(x)))
        if signals is not None:
            out[i + 1] = (x[:, prefix:].clone(), signals[0], signals[1])
    return out


# ------------------------------------------------------------------------------------------ study


def find_scenes(model, n_scenes: int, seeds: Sequence[int], chunk: int = 100, min_patches: int = 1):
    """Walk ``seeds`` until ``n_scenes`` scenes hold a qualifying small object, then find each one's
    query donor: the next seed (in ``seeds`` order, wrapping, never the scene itself) whose scene holds
    >= DONOR_MIN_PATCHES patches of the class. Returns (targets [(seed, cls)], donors [seed], the
    rendered pixels and patch labels of every seed touched, keyed by seed)."""
    patch = int(model.patch_size[0])
    cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    seeds = list(seeds)
    position = {s: i for i, s in enumerate(seeds)}

    def scene(s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixels, labels, patch labels) of seed ``s``, rendering its whole chunk of ``seeds`` at once."""
        if s not in cache:
            start = position[s] // chunk * chunk
            part = seeds[start:start + chunk]
            pixels, labels = render(part, model)
            for j, t in enumerate(part):
                cache[t] = (pixels[j], labels[j], patch_labels(labels[j:j + 1], patch)[0])
        return cache[s]

    targets = []
    for s in seeds:
        if len(targets) == n_scenes:
            break
        cls = pick_target(scene(s)[1], scene(s)[2], min_patches=min_patches)
        if cls is not None:
            targets.append((s, cls))
    if len(targets) < n_scenes:
        raise RuntimeError(f"only {len(targets)} of {n_scenes} scenes with a small object in {len(seeds)} seeds")
    donors = []
    for s, cls in targets:
        for step in range(1, len(seeds)):
            d = seeds[(position[s] + step) % len(seeds)]
            if int((scene(d)[2] == cls).sum()) >= DONOR_MIN_PATCHES:
                donors.append(d)
                break
        else:
            raise RuntimeError(f"no other scene holds class {cls}")
    return targets, donors, cache


@torch.no_grad()
def run_study(model, n_scenes: int = 200, k: int = 32, layers: Sequence[int] = (6, 5), survivors: int = 128,
              dominant: Optional[int] = None, seeds: Optional[Sequence[int]] = None, min_patches: int = 1,
              batch: int = 100) -> dict:
    """Per-layer, per-method class shares among the K kept tokens (see the module docstring)."""
    from edgeprune.data import HELDOUT_SEEDS
    from edgeprune.families import adapter_for
    from edgeprune.mllm.select import gsp_select, qcsp_select, script_select, visionzip_select

    seeds = list(HELDOUT_SEEDS if seeds is None else seeds)
    dominant = round(k * 54 / 64) if dominant is None else dominant
    adapter = adapter_for(model)
    targets, donors, cache = find_scenes(model, n_scenes, seeds, min_patches=min_patches)
    needed = sorted({s for s, _ in targets} | set(donors), key=seeds.index)
    feats: dict[int, dict[int, tuple]] = {layer: {} for layer in layers}
    for i in range(0, len(needed), batch):
        part = needed[i:i + batch]
        pixels = torch.from_numpy(np.stack([cache[s][0] for s in part]))
        out = tower_features(adapter, pixels, layers)
        for layer in layers:
            f, a, kk = out[layer]
            for j, s in enumerate(part):
                feats[layer][s] = (f[j], a[j], kk[j])

    n_tokens = next(iter(feats[layers[0]].values()))[0].shape[0]
    class_patches = np.array([int((cache[s][2] == c).sum()) for s, c in targets])
    cover = np.array([float((cache[s][1] == c).mean()) for s, c in targets])
    result = {"k": k, "tokens": int(n_tokens), "survivors": survivors, "dominant": dominant,
              "scenes": [{"seed": s, "class": c, "class_pixels_frac": round(float(v), 5), "class_patches": int(p),
                          "donor": d, "donor_patches": int((cache[d][2] == c).sum())}
                         for (s, c), d, v, p in zip(targets, donors, cover, class_patches)],
              "layers": {}}
    for layer in layers:
        per = {m: [] for m in METHODS}
        distinct = {m: set() for m in METHODS}
        for i in range(0, len(targets), batch):
            part = list(range(i, min(i + batch, len(targets))))
            f = torch.stack([feats[layer][targets[j][0]][0] for j in part])
            attn = torch.stack([feats[layer][targets[j][0]][1] for j in part])
            keys = torch.stack([feats[layer][targets[j][0]][2] for j in part])
            query = torch.stack([class_query(cache[donors[j]][2], feats[layer][donors[j]][0], targets[j][1])
                                 for j in part])
            generic = F.normalize(torch.stack([feats[layer][donors[j]][0].mean(0) for j in part]), dim=-1)
            picks = {
                "qcsp": qcsp_select(f, f, query, k).index,
                "script": script_select(f, f, f, query, k, survivors).index,
                "visionzip": visionzip_select(f, attn, keys, k, dominant).index,
                "gsp": gsp_select(f, k).index,
                "qcsp_generic": qcsp_select(f, f, generic, k).index,
            }
            for m, index in picks.items():
                distinct[m].update(tuple(r) for r in index.tolist())
                for row, j in enumerate(part):
                    s, c = targets[j]
                    per[m].append(kept_stats(index[row].numpy(), cache[s][2], c))
        result["layers"][str(layer)] = summarise(per, class_patches, k, n_tokens)
        # A selector that keeps the same K patches in every scene does not look at the features.
        result["layers"][str(layer)]["distinct_selections"] = {m: len(v) for m, v in distinct.items()}
    return result


def class_query(donor_patches: np.ndarray, donor_features: torch.Tensor, cls: int) -> torch.Tensor:
    """The unit-norm mean feature [C] of the donor scene's patches of class ``cls`` (the norm does not
    change relevance, which is min-max normalised per image)."""
    mask = torch.from_numpy(donor_patches == cls)
    return F.normalize(donor_features[mask].mean(0), dim=0)


def summarise(per: dict[str, list[dict]], class_patches: np.ndarray, k: int, n_tokens: int) -> dict:
    """Means per method, random-K expectations, the ratios and the criterion."""
    arr = {m: {key: np.array([r[key] for r in rows], float) for key in ("share", "capped", "recall")}
           for m, rows in per.items()}
    means = {m: {key: float(v.mean()) for key, v in d.items()} for m, d in arr.items()}
    # A uniformly random K-subset keeps K * n_c / N class patches in expectation.
    exp_kept = k * class_patches / n_tokens
    means["random"] = {"share": float((class_patches / n_tokens).mean()),
                       "capped": float((exp_kept / np.maximum(1, np.minimum(class_patches, k))).mean()),
                       "recall": float(k / n_tokens)}

    def ratio(a: str, b: str) -> Optional[float]:
        return None if means[b]["share"] == 0 else means[a]["share"] / means[b]["share"]

    ratios = {f"{a}/{b}": ratio(a, b) for a in ("qcsp", "script") for b in ("visionzip", "gsp", "random")}
    ratios["qcsp/qcsp_generic"] = ratio("qcsp", "qcsp_generic")
    share = {m: d["share"] for m, d in arr.items()}
    wins = {f"{a}>={b}": float((share[a] >= share[b]).mean()) for a in ("qcsp", "script") for b in ("visionzip", "gsp")}
    wins.update({f"{a}>{b}": float((share[a] > share[b]).mean()) for a in ("qcsp", "script") for b in ("visionzip", "gsp")})
    passed = {a: bool(all(ratios[f"{a}/{b}"] is None or ratios[f"{a}/{b}"] >= RATIO for b in ("visionzip", "gsp"))
                      and means[a]["share"] > 0)
              for a in ("qcsp", "script")}
    return {"means": means, "ratios": ratios, "scene_fraction": wins, "pass": passed}
