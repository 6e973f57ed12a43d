"""Train edgeprune's reference *segmentation* ViT on procedural scenes, on a CPU, in minutes.

Why: token-reduction methods for dense prediction need a model with real (trained) weights whose
per-patch outputs matter. Scenes come from :mod:`edgeprune.data` on the fly (every seed is a new
labelled image, so there is no over-fitting to a fixed set), and the held-out score is measured on
:data:`HELDOUT_SEEDS`, which training never touches. Writes ``model.safetensors``, ``config.json``
and a model card ``README.md`` to ``--out``.

    python scripts/train_scene_segmenter.py --minutes 18 --threads 1 --out models/scene_seg
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeprune.data import CLASSES, HELDOUT_SEEDS, PALETTE, TRAIN_SEEDS, SceneConfig, scene_batch
from edgeprune.families.timm_seg import create_segmenter, save_segmenter
from edgeprune.train.schedule import warmup_cosine

BACKBONE = "vit_tiny_patch16_224"
N_EVAL = 200


def model_args(size: int) -> dict:
    return dict(img_size=size, patch_size=8, depth=6, embed_dim=128, num_heads=4, mlp_ratio=2.0)


def to_tensor(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W]."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)


def data_stats(cfg: SceneConfig, n: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Channel mean/std (of [0, 1] pixels) and class pixel frequencies of the first ``n`` train
    seeds: normalisation that fits the generator, and frequencies for the loss weights."""
    images, labels = scene_batch(TRAIN_SEEDS[:n], cfg)
    px = images.reshape(-1, 3).astype(np.float64) / 255.0
    freq = np.bincount(labels.ravel(), minlength=len(CLASSES)) / labels.size
    return px.mean(0).round(3), px.std(0).round(3), freq


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: SceneConfig, mean: np.ndarray, std: np.ndarray,
             n: int = N_EVAL, batch: int = 25) -> dict:
    """Per-class IoU over ``n`` held-out scenes (one confusion matrix over all pixels); the mean
    is over classes that occur in the ground truth, so an absent class cannot score 0 or 1."""
    model.eval()
    k = len(CLASSES)
    conf = np.zeros((k, k), np.int64)
    seeds = HELDOUT_SEEDS[:n]
    for i in range(0, n, batch):
        images, labels = scene_batch(seeds[i:i + batch], cfg)
        pred = model(to_tensor(images, mean, std)).argmax(1).numpy()
        conf += np.bincount(labels.ravel().astype(np.int64) * k + pred.ravel(), minlength=k * k).reshape(k, k)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    iou = {c: (round(float(tp[j] / union[j]), 4) if present[j] else None) for j, c in enumerate(CLASSES)}
    miou = float(np.mean([tp[j] / union[j] for j in range(k) if present[j]]))
    return {"miou": round(miou, 4), "per_class_iou": iou, "pixel_accuracy": round(float(tp.sum() / conf.sum()), 4),
            "n": n, "seeds": f"HELDOUT_SEEDS[:{n}] = range({seeds.start}, {seeds.stop})"}


def write_card(out: Path, config: dict, n_params: int, argv: list[str]) -> None:
    ev, tr, inp = config["eval"], config["train"], config["input"]
    rows = "\n".join(
        f"| {j} | {c} | `{tuple(int(v) for v in PALETTE[j])}` | "
        f"{'-' if ev['per_class_iou'][c] is None else format(ev['per_class_iou'][c], '.3f')} |"
        for j, c in enumerate(CLASSES))
    size = (out / "model.safetensors").stat().st_size / 1e6
    h = inp["size"][1]
    grid = h // config["model_args"]["patch_size"]
    text = f"""# scene_seg: a small reference ViT segmenter for edgeprune

A {config['model_args']['depth']}-block timm Vision Transformer with a multi-level head, trained from
scratch on edgeprune's procedural robot-view scenes (`edgeprune.data`). It is the reference model
for token reduction in *segmentation*: small enough to train and evaluate on a CPU, with real
weights whose per-patch outputs matter.

| | |
|---|---|
| family | `{config['family']}` (`edgeprune.families.timm_seg.load_segmenter`) |
| backbone | timm `{config['backbone']}` class, re-configured: `{config['model_args']}` |
| head | `{config['head']}` {config['head_args']}, feature blocks {config['feature_blocks']} (deepest one final-normed) |
| tokens | {grid} x {grid} = {grid * grid} patch tokens + CLS |
| input | 3 x {h} x {h} RGB in [0, 1], normalised with mean {inp['mean']}, std {inp['std']} |
| output | logits [B, {config['num_classes']}, {h}, {h}] (bilinear upsampling from the patch grid) |
| size | {n_params / 1e6:.2f} M parameters, fp32, `model.safetensors` {size:.1f} MB |
| held-out mIoU | **{ev['miou']:.3f}** (pixel accuracy {ev['pixel_accuracy']:.3f}) on {ev['seeds']} |

## Classes and per-class held-out IoU

| id | class | palette RGB | IoU |
|---|---|---|---|
{rows}

mIoU is the mean over classes present in the held-out ground truth, from one confusion matrix
over all pixels of the {ev['n']} scenes.

## Data

Every image is `edgeprune.data.make_scene(seed, SceneConfig(height={h}, width={h}))` with the
other generator settings at their defaults (`config.json` -> `train.generator`). Training draws
seeds uniformly from `TRAIN_SEEDS` = `range({TRAIN_SEEDS.start}, {TRAIN_SEEDS.stop})`; evaluation uses
`HELDOUT_SEEDS` = `range({HELDOUT_SEEDS.start}, {HELDOUT_SEEDS.stop})`, which is disjoint, so the score
measures unseen layouts.

## Training

AdamW (lr {tr['lr']}, weight decay {tr['weight_decay']}, batch {tr['batch_size']}), linear warmup
({tr['warmup_steps']} steps) then cosine decay over the {tr['schedule']}, gradient clipping at 1.0,
class-weighted cross-entropy (weights ~ frequency^-0.5, in `config.json`), random horizontal flips,
seed {tr['seed']}. {tr['steps']} steps ({tr['images']} scenes) in {tr['minutes']:.1f} minutes on
{tr['threads']} CPU thread(s). To reproduce, from the repository root:

```bash
python {' '.join(argv)}
```

A time budget makes the step count depend on the machine; pass `--steps {tr['steps']}` to rerun the
same number of steps with a step-based schedule (bitwise equality still depends on the torch build
and thread count).

## Use

```python
from edgeprune.families.timm_seg import load_segmenter
model = load_segmenter("models/scene_seg")  # eval mode
logits = model(pixels)  # pixels: [B, 3, {h}, {h}], normalised as above
```
"""
    fd, tmp = tempfile.mkstemp(dir=out)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / "README.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=18.0, help="training time budget (evaluation not included)")
    p.add_argument("--steps", type=int, default=None, help="fixed step count instead of a time budget")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("models/scene_seg"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, choices=(96, 128))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=60)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    cfg = SceneConfig(height=args.size, width=args.size)
    mean, std, freq = data_stats(cfg)
    weights = np.clip(np.maximum(freq, 1e-4) ** -0.5, 0, None)
    weights = weights / (weights * freq).sum()
    weights = np.minimum(weights, 10.0)
    model = create_segmenter(BACKBONE, len(CLASSES), head="multilevel", feature_blocks=(1, 3, 5),
                             head_args={"width": 64, "fuse": "sum", "norm": "bn"}, **model_args(args.size))
    n_params = sum(t.numel() for t in model.parameters())
    print(f"{n_params / 1e6:.3f} M params; mean {mean} std {std}; class weights {weights.round(2)}", flush=True)

    decay = [q for n, q in model.named_parameters() if q.ndim >= 2 and "pos_embed" not in n and "token" not in n]
    no_decay = [q for n, q in model.named_parameters() if not (q.ndim >= 2 and "pos_embed" not in n and "token" not in n)]
    wd = 0.05
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999))
    class_w = torch.tensor(weights, dtype=torch.float32)
    budget = args.minutes * 60.0
    start = time.time()
    step, loss_avg = 0, None
    model.train()
    while True:
        elapsed = time.time() - start
        frac = step / args.steps if args.steps else elapsed / budget
        if frac >= 1.0:
            break
        lr = warmup_cosine(args.lr, step, args.warmup, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        seeds = rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop, args.batch_size)
        images, labels = scene_batch(seeds, cfg)
        flip = rng.random(args.batch_size) < 0.5
        images[flip], labels[flip] = images[flip][:, :, ::-1], labels[flip][:, :, ::-1]
        x = to_tensor(np.ascontiguousarray(images), mean, std)
        y = torch.from_numpy(np.ascontiguousarray(labels)).long()
        loss = F.cross_entropy(model(x), y, weight=class_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        if step % 25 == 0:
            print(f"step {step:5d}  {elapsed / 60:5.1f} min  lr {lr:.2e}  loss {loss_avg:.4f}", flush=True)
    minutes = (time.time() - start) / 60.0
    print(f"trained {step} steps in {minutes:.1f} min; evaluating on {N_EVAL} held-out scenes", flush=True)
    ev = evaluate(model, cfg, mean, std)
    print(f"held-out mIoU {ev['miou']:.4f}  per class {ev['per_class_iou']}", flush=True)

    extra = {
        "classes": list(CLASSES),
        "palette": PALETTE.tolist(),
        "input": {"size": [3, args.size, args.size], "mean": mean.tolist(), "std": std.tolist(),
                  "range": "RGB uint8 / 255, then (x - mean) / std"},
        "train": {
            "seed": args.seed, "minutes": round(minutes, 2), "steps": step, "images": step * args.batch_size,
            "threads": args.threads, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": wd,
            "warmup_steps": args.warmup,
            "schedule": f"{args.steps} steps" if args.steps else f"{args.minutes:g}-minute time budget",
            "image_size": [args.size, args.size], "train_seeds": [TRAIN_SEEDS.start, TRAIN_SEEDS.stop],
            "generator": dataclasses.asdict(cfg), "class_weights": [round(float(w), 4) for w in weights],
            "augment": {"hflip": 0.5},
        },
        "eval": ev,
    }
    model.eval()
    save_segmenter(model, args.out, extra)
    from edgeprune.families.timm_seg import read_segmenter_config

    config, _ = read_segmenter_config(args.out)
    cmd = ["scripts/train_scene_segmenter.py", "--minutes", f"{args.minutes:g}", "--threads", str(args.threads),
           "--seed", str(args.seed), "--size", str(args.size), "--out", str(args.out)]
    write_card(args.out, config, n_params, cmd)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
