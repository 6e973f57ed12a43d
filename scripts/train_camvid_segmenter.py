"""Train edgeprune's real-scene segmenter on CamVid (real driving frames, 11 classes) on a CPU.

A ``timm-vit-seg`` model (conv stem, 8 ViT blocks, multi-level head) at CamVid's 240x180, trained
from scratch with augmentation (scale-and-crop, flips, colour jitter) under a time budget, with a
checkpoint every few minutes so that an interrupted run resumes where it stopped (same command).
The unlabelled class is ignored. Writes ``model.safetensors``, ``config.json`` and a model card
``README.md`` with per-class IoU on the val and test splits to ``--out``.

    python scripts/train_camvid_segmenter.py --minutes 70 --out models/camvid_seg
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeprune.data import camvid
from edgeprune.imaging.evaluation import confusion, iou_report
from edgeprune.imaging.images import write_atomic
from edgeprune.families.timm_seg import create_segmenter, read_segmenter_config, save_segmenter
from edgeprune.train.schedule import save_checkpoint, warmup_cosine

BACKBONE = "vit_tiny_patch16_224"
HEIGHT, WIDTH = 180, 240
MODEL_ARGS = dict(img_size=(HEIGHT, WIDTH), patch_size=12, depth=8, embed_dim=192, num_heads=3, mlp_ratio=3.0)
STEM = {"channels": [32, 64]}
HEAD_ARGS = {"width": 96, "fuse": "sum", "norm": "bn", "upsample": True}
FEATURE_BLOCKS = (2, 5, 7)


def build_model() -> torch.nn.Module:
    return create_segmenter(BACKBONE, len(camvid.CLASSES), head="multilevel", feature_blocks=FEATURE_BLOCKS,
                            head_args=HEAD_ARGS, stem=STEM, **MODEL_ARGS)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W], (x / 255 - mean) / std."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


COLOUR = {  # brightness, contrast and saturation factor ranges, and per-channel gains (a colour cast)
    "base": dict(brightness=(0.75, 1.25), contrast=(0.75, 1.25), saturation=(0.75, 1.25), cast=(1.0, 1.0)),
    # Other cameras than CamVid's: a clear blue sky (never in CamVid's overcast Cambridge) came out as
    # "building" until the model saw casts and strong saturation.
    "camera": dict(brightness=(0.6, 1.35), contrast=(0.7, 1.3), saturation=(0.4, 2.2), cast=(0.8, 1.25)),
}


def augment(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
            colour: str = "base") -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: random scale in [0.7, 1.6] and a random crop back to 180x240 (padding with the
    ignore label when smaller), a horizontal flip, and brightness / contrast / saturation jitter."""
    n = images.shape[0]
    out_x = torch.empty(n, 3, HEIGHT, WIDTH)
    out_y = torch.full((n, HEIGHT, WIDTH), camvid.IGNORE, dtype=torch.long)
    for i in range(n):
        x = images[i].permute(2, 0, 1).float()[None] / 255.0
        y = labels[i].float()[None, None]
        s = float(torch.empty(1).uniform_(0.7, 1.6, generator=gen))
        h, w = max(8, round(HEIGHT * s)), max(8, round(WIDTH * s))
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y, size=(h, w), mode="nearest")[0, 0].long()
        if torch.rand(1, generator=gen) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        # crop (or place) into the output canvas at a random offset
        oy = int(torch.randint(0, abs(h - HEIGHT) + 1, (1,), generator=gen))
        ox = int(torch.randint(0, abs(w - WIDTH) + 1, (1,), generator=gen))
        if h >= HEIGHT and w >= WIDTH:
            out_x[i], out_y[i] = x[:, oy:oy + HEIGHT, ox:ox + WIDTH], y[oy:oy + HEIGHT, ox:ox + WIDTH]
        else:
            canvas = x.mean((1, 2), keepdim=True).expand(3, HEIGHT, WIDTH).clone()
            sy, sx = (0, oy) if h >= HEIGHT else (oy, 0)
            sxo, sxi = (0, ox) if w >= WIDTH else (ox, 0)
            hh, ww = min(h, HEIGHT), min(w, WIDTH)
            canvas[:, sy:sy + hh, sxo:sxo + ww] = x[:, sx:sx + hh, sxi:sxi + ww]
            out_x[i] = canvas
            out_y[i, sy:sy + hh, sxo:sxo + ww] = y[sx:sx + hh, sxi:sxi + ww]
        c = COLOUR[colour]
        draw = [float(torch.empty(1).uniform_(*c[k], generator=gen)) for k in ("brightness", "contrast", "saturation")]
        cast = torch.empty(3, 1, 1).uniform_(*c["cast"], generator=gen)
        xi = out_x[i] * draw[0] * cast
        mean = xi.mean()
        xi = (xi - mean) * draw[1] + mean
        grey = xi.mean(0, keepdim=True)
        out_x[i] = ((xi - grey) * draw[2] + grey).clamp(0, 1)
    return out_x, out_y


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
             batch: int = 16) -> dict:
    """IoU per class over a split (one confusion matrix over all pixels, unlabelled ignored)."""
    model.eval()
    k = len(camvid.CLASSES)
    conf = np.zeros((k, k), np.int64)
    for i in range(0, len(images), batch):
        x = normalise(torch.from_numpy(images[i:i + batch]), mean, std)
        pred = model(x).argmax(1).numpy()
        conf += confusion(labels[i:i + batch], pred, k)  # the unlabelled id (11 = k) is skipped
    return {**iou_report(conf, camvid.CLASSES), "n": len(images)}


def stage_command(train: dict, out: Path) -> str:
    """The command line that ran one training stage, from its record in config.json."""
    colour = (train.get("augment") or {}).get("colour", "base")
    init = f" --init {train['init']}" if train.get("init") else ""
    return (f"python scripts/train_camvid_segmenter.py --minutes {train['minutes_budget']:g} --threads {train['threads']} "
            f"--seed {train['seed']} --lr {train['lr']:g} --warmup {train['warmup_steps']} --colour {colour}{init} --out {out}")


def write_card(out: Path, config: dict, n_params: int) -> None:
    tr, inp = config["train"], config["input"]
    stages = tr.get("stages") or [tr]
    lines = []
    for n, st in enumerate(stages, 1):
        c = st["augment"].get("colour", "base") if isinstance(st.get("augment"), dict) else "base"
        what = "from scratch" if not st.get("init") else f"from the stage-{n - 1} weights"
        lines.append(f"{n}. {what}, {st['minutes']:.1f} minutes ({st['steps']} steps of batch {st['batch_size']}, "
                     f"{st['epochs']:.0f} epochs, {st['threads']} CPU threads), lr {st['lr']:g} with {st['warmup_steps']} "
                     f"warmup steps, colour augmentation `{c}`:\n\n   ```bash\n   {st['command']}\n   ```")
    total = sum(st["minutes"] for st in stages)
    training = (f"{len(stages)} stage{'s' if len(stages) > 1 else ''}, {total:.1f} minutes in all on this 2-core CPU. "
                "AdamW (weight decay 0.05), linear warmup then cosine decay over each stage's time budget, "
                "gradient clipping at 1.0, cross-entropy weighted by class frequency^-0.5 (capped at 8, in "
                "`config.json`), ignore index 11. Augmentation per image: random scale 0.7-1.6 with a random "
                "180x240 crop (padded with the ignore label when smaller), horizontal flip, and colour: `base` "
                "= brightness/contrast/saturation x0.75-1.25; `camera` = brightness x0.6-1.35, contrast "
                "x0.7-1.3, saturation x0.4-2.2 and a per-channel colour cast x0.8-1.25 (other cameras' white "
                "balance; without it a clear blue sky, which CamVid's overcast footage never shows, came out "
                "as building).\n\n" + "\n".join(lines))
    test, val = config["eval"]["test"], config["eval"]["val"]
    rows = "\n".join(
        f"| {j} | {c} | `{tuple(int(v) for v in camvid.PALETTE[j])}` | {config['class_share_test'][c]:.3f} | "
        f"{val['per_class_iou'][c] if val['per_class_iou'][c] is not None else '-'} | "
        f"{test['per_class_iou'][c] if test['per_class_iou'][c] is not None else '-'} |"
        for j, c in enumerate(camvid.CLASSES))
    size = (out / "model.safetensors").stat().st_size / 1e6
    ma = config["model_args"]
    gh, gw = HEIGHT // ma["patch_size"], WIDTH // ma["patch_size"]
    text = f"""# camvid_seg: a ViT segmenter for real driving scenes

A {ma['depth']}-block timm Vision Transformer with a convolutional stem and a multi-level head,
trained from scratch on a CPU on CamVid (real driving video frames from Cambridge, 11 classes). It
is edgeprune's default model for real images and video (`edgeprune segment`, `edgeprune demo
VIDEO`) and the model the dense token-reduction methods are measured on.

| | |
|---|---|
| family | `{config['family']}` (`edgeprune.families.timm_seg.load_segmenter`) |
| backbone | timm `{config['backbone']}` class, re-configured: `{ma}` |
| stem | `{config['stem']}`: 3x3 stride-2 conv + BN + ReLU per entry, then a 3x3 stride-3 conv to the width |
| head | `{config['head']}` {config['head_args']}, feature blocks {config['feature_blocks']} (deepest one final-normed) |
| tokens | {gh} x {gw} = {gh * gw} patch tokens + CLS |
| input | 3 x {HEIGHT} x {WIDTH} RGB (height x width), normalised with mean {inp['mean']}, std {inp['std']}; other sizes are resized to it |
| output | logits [B, 11, {HEIGHT}, {WIDTH}] (bilinear upsampling) |
| size | {n_params / 1e6:.2f} M parameters, fp32, `model.safetensors` {size:.1f} MB |
| test mIoU | **{test['miou']:.3f}** (pixel accuracy {test['pixel_accuracy']:.3f}) on the {test['n']} test frames; val {val['miou']:.3f} |

## Classes, palette, per-class IoU

IoU from one confusion matrix over all pixels of a split; the unlabelled class (id 11) is ignored
in training and evaluation. "share" is the class's share of labelled test pixels.

| id | class | palette RGB | share | val IoU | test IoU |
|---|---|---|---|---|---|
{rows}

## Data

CamVid, SegNet's split (367 train, 101 val, 233 test frames from four drives), downsampled to
240x180; see `shared/data/LICENSES.md` (research use, from the SegNet tutorial repository). Only
the train split is used for training; val and test are evaluated once, at the end.

## Training

{training}

Each stage writes `checkpoint.pt` into `--out` every {tr['checkpoint_minutes']:g} minutes; the same
command resumes from it after an interruption and removes it when the stage is done.

## Use

```python
from edgeprune.families.timm_seg import load_segmenter
model = load_segmenter("models/camvid_seg")  # eval mode
logits = model(pixels)  # pixels: [B, 3, {HEIGHT}, {WIDTH}], normalised as above
```
"""
    write_atomic(out / "README.md", lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=70.0, help="training time budget (evaluation not included)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("models/camvid_seg"))
    p.add_argument("--data", type=Path, default=None, help="CamVid root (default: shared/data/camvid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--eval-limit", type=int, default=None, help="score only the first N val/test frames (quick checks)")
    p.add_argument("--colour", choices=sorted(COLOUR), default="base", help="colour augmentation (default: %(default)s)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this segmenter folder's weights (a second, fine-tuning stage; its training "
                        "record is kept in the new config as an earlier stage)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "checkpoint.pt"

    train_x, train_y, _ = camvid.load_split("train", args.data)
    px = train_x.reshape(-1, 3).astype(np.float64) / 255.0
    mean_np, std_np = px.mean(0).round(3), px.std(0).round(3)
    lab = train_y[train_y != camvid.IGNORE]
    freq = np.bincount(lab, minlength=len(camvid.CLASSES)) / lab.size
    weights = np.maximum(freq, 1e-4) ** -0.5
    weights = np.minimum(weights / (weights * freq).sum(), 8.0)
    mean, std = torch.tensor(mean_np, dtype=torch.float32), torch.tensor(std_np, dtype=torch.float32)
    class_w = torch.tensor(weights, dtype=torch.float32)
    xs, ys = torch.from_numpy(train_x), torch.from_numpy(train_y)

    model = build_model()
    earlier: list[dict] = []
    if args.init is not None:
        from edgeprune.families.timm_seg import load_segmenter

        init_config, _ = read_segmenter_config(args.init)
        model.load_state_dict(load_segmenter(args.init).state_dict())
        mean_np = np.asarray(init_config["input"]["mean"])  # keep the normalisation the weights learned
        std_np = np.asarray(init_config["input"]["std"])
        mean, std = torch.tensor(mean_np, dtype=torch.float32), torch.tensor(std_np, dtype=torch.float32)
        earlier = list(init_config["train"].get("stages", [])) or [dict(init_config["train"])]
    n_params = sum(t.numel() for t in model.parameters())
    decay = [q for n, q in model.named_parameters() if q.ndim >= 2 and "pos_embed" not in n and "token" not in n]
    no_decay = [q for n, q in model.named_parameters() if not (q.ndim >= 2 and "pos_embed" not in n and "token" not in n)]
    wd = 0.05
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    step, spent, loss_avg = 0, 0.0, None
    if ckpt_path.exists() and not args.fresh:
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, spent, loss_avg = int(state["step"]), float(state["seconds"]), float(state["loss_avg"])
        print(f"resumed from {ckpt_path}: step {step}, {spent / 60:.1f} min spent", flush=True)
    print(f"{n_params / 1e6:.3f} M params; mean {mean_np} std {std_np}; class weights {weights.round(2)}", flush=True)

    budget = args.minutes * 60.0
    start = time.time() - spent
    last_ckpt = time.time()
    model.train()
    while True:
        elapsed = time.time() - start
        frac = elapsed / budget
        if frac >= 1.0:
            break
        lr = warmup_cosine(args.lr, step, args.warmup, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(xs), (args.batch_size,), generator=gen)
        x, y = augment(xs[idx], ys[idx], gen, args.colour)
        x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        loss = F.cross_entropy(model(x), y, weight=class_w, ignore_index=camvid.IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        if step % 25 == 0:
            print(f"step {step:5d}  {elapsed / 60:5.1f} min  lr {lr:.2e}  loss {loss_avg:.4f}", flush=True)
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                        "generator": gen.get_state(), "step": step, "seconds": time.time() - start,
                                        "loss_avg": loss_avg})
            last_ckpt = time.time()
    minutes = (time.time() - start) / 60.0
    print(f"trained {step} steps in {minutes:.1f} min; evaluating", flush=True)
    ev = {}
    for split in ("val", "test"):
        sx, sy, _ = camvid.load_split(split, args.data, limit=args.eval_limit)
        ev[split] = evaluate(model, sx, sy, mean, std)
        print(f"{split} mIoU {ev[split]['miou']:.4f}  per class {ev[split]['per_class_iou']}", flush=True)
    test_y = camvid.load_split("test", args.data)[1]
    lab = test_y[test_y != camvid.IGNORE]
    share = np.bincount(lab, minlength=len(camvid.CLASSES)) / lab.size

    extra = {
        "classes": list(camvid.CLASSES),
        "palette": camvid.PALETTE.tolist(),
        "ignore_index": camvid.IGNORE,
        "input": {"size": [3, HEIGHT, WIDTH], "mean": mean_np.tolist(), "std": std_np.tolist(),
                  "range": "RGB uint8 / 255, then (x - mean) / std"},
        "train": {
            "data": "CamVid train split (SegNet), 367 frames at 240x180", "seed": args.seed,
            "minutes": round(minutes, 2), "minutes_budget": args.minutes, "steps": step,
            "images": step * args.batch_size, "epochs": step * args.batch_size / len(xs), "threads": args.threads,
            "batch_size": args.batch_size, "lr": args.lr, "weight_decay": wd, "warmup_steps": args.warmup,
            "class_weights": [round(float(w), 4) for w in weights], "checkpoint_minutes": args.checkpoint_minutes,
            "augment": {"scale": [0.7, 1.6], "hflip": 0.5, "colour": args.colour, **COLOUR[args.colour]},
            "init": str(args.init) if args.init else None,
        },
        "eval": ev,
        "class_share_test": {c: round(float(s), 4) for c, s in zip(camvid.CLASSES, share)},
    }
    extra["train"]["command"] = stage_command(extra["train"], args.out)
    if earlier:
        extra["train"]["stages"] = [{**st, "command": st.get("command") or stage_command(st, args.init)} for st in earlier] + \
            [dict(extra["train"])]
    model.eval()
    save_segmenter(model, args.out, extra)
    config, _ = read_segmenter_config(args.out)
    write_card(args.out, config, n_params)
    if ckpt_path.exists():
        ckpt_path.unlink()
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
