"""Train the small MNIST ViT used as edgeprune's reference model.

The model is a timm ViT at 32x32 with 4x4 patches (64 patch tokens + CLS = 65
tokens), small enough to train on two CPU cores in ~10 minutes yet deep enough
for token reduction to have several layers to act on.

    python scripts/train_mnist_vit.py --epochs 30 --seed 0

Writes model.safetensors, config.json into --out (default models/mnist_vit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from edgeprune.train import mnist as _mnist
from edgeprune.train.schedule import lr_at

TIMM_NAME = "vit_tiny_patch16_224"

# Chosen so one epoch over 8000 digits takes ~20 s on 2 idle cores (see model card);
# the training regime is step-limited, so a narrower model trained longer wins.
MODEL_ARGS: dict[str, Any] = {"img_size": _mnist.IMG_SIZE, **_mnist.NARROW_VIT_ARGS}


def create_model() -> torch.nn.Module:
    return timm.create_model(TIMM_NAME, pretrained=False, **MODEL_ARGS)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to +-max_shift px, filling with background.

    Digits are centred by construction in MNIST, so small shifts are the cheapest
    augmentation that stops a patch-based model from memorising positions.
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    bg = (0.0 - _mnist.MEAN) / _mnist.STD
    padded = F.pad(x, (max_shift,) * 4, value=bg)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)

    x_tr, y_tr = _mnist.load_split("train", args.data_dir)
    x_ev, y_ev = _mnist.load_split("eval", args.data_dir)
    model = create_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{TIMM_NAME} {MODEL_ARGS} -> {n_params / 1e6:.2f}M params")
    print(f"train {len(y_tr)} / held-out {len(y_ev)} digits from {args.data_dir}")

    # No weight decay on norms, biases and the position/CLS embeddings (usual ViT practice).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in ("pos_embed", "cls_token") else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )

    steps_per_epoch = math.ceil(len(y_tr) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup = steps_per_epoch  # one epoch
    step = 0
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(y_tr), generator=gen)
        run_loss, run_correct = 0.0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            xb = random_shift(x_tr[idx], args.shift, gen)
            yb = y_tr[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, warmup, args.lr, args.lr * 0.01)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            run_loss += loss.item() * len(yb)
            run_correct += int((logits.argmax(-1) == yb).sum())
        acc = _mnist.evaluate(model, x_ev, y_ev)
        print(
            f"epoch {epoch + 1:2d}/{args.epochs}  loss {run_loss / len(y_tr):.4f}  "
            f"train {run_correct / len(y_tr):.4f}  held-out {acc:.4f}  "
            f"[{(time.time() - t0) / 60:.1f} min]",
            flush=True,
        )
    minutes = (time.time() - t0) / 60
    top1 = _mnist.evaluate(model, x_ev, y_ev)
    return {"model": model, "top1": top1, "minutes": minutes}


def save(model: torch.nn.Module, out: Path, args: argparse.Namespace, top1: float, minutes: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # contiguous() because safetensors refuses views; keys stay exactly timm's.
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "timm_name": TIMM_NAME})
    os.replace(tmp, out / "model.safetensors")
    os.chmod(out / "model.safetensors", 0o644)  # safetensors writes 0600; the file is meant to be shared

    config = {
        "timm_name": TIMM_NAME,
        "model_args": MODEL_ARGS,
        "input": {"size": [1, _mnist.IMG_SIZE, _mnist.IMG_SIZE], "mean": _mnist.MEAN, "std": _mnist.STD, "pad": _mnist.PAD},
        "train": {
            "seed": args.seed,
            "epochs": args.epochs,
            "split": {
                "source": "MNIST t10k (10,000 test digits)",
                "train": f"[0, {_mnist.N_TRAIN})",
                "eval": f"[{_mnist.N_TRAIN}, {_mnist.N_TOTAL})",
            },
            "minutes": round(minutes, 2),
            "threads": args.threads,
            "batch_size": args.batch_size,
            "optimizer": {"name": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay, "schedule": "1 epoch warmup + cosine"},
            "augment": {"random_shift_px": args.shift, "label_smoothing": args.label_smoothing},
        },
        "eval": {"top1": round(top1, 4), "n": _mnist.N_TOTAL - _mnist.N_TRAIN},
    }
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out / "config.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=_mnist.DEFAULT_DATA_DIR)
    p.add_argument("--out", type=Path, default=_mnist.REPO_ROOT / "models" / "mnist_vit")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--shift", type=int, default=2, help="max random translation in px")
    # On a busy shared machine, 1 thread is far faster than 2 (OpenMP threads wait on each other).
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = train(args)
    save(result["model"], args.out, args, result["top1"], result["minutes"])
    print(f"held-out top-1 {result['top1']:.4f} after {result['minutes']:.1f} min -> {args.out}")


if __name__ == "__main__":
    main()
