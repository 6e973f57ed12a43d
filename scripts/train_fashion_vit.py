"""Train the small Fashion-MNIST ViT used as edgeprune's second reference model.

A timm ViT at 28x28 with 4x4 patches (7x7 = 49 patch tokens + CLS = 50 tokens; the head reads
CLS only), trained on the Fashion-MNIST train split (60,000 images) and evaluated on the full
test split (10,000) as shipped. Training stops on a wall-clock budget: the first steps are
timed, the cosine schedule is sized to the number of steps that fit in --minutes (and
re-sized every few dozen steps if the machine gets faster or slower), so the whole run,
data loading and the final evaluation included, ends within the budget. --steps fixes the
number of steps instead, for an exactly reproducible schedule.

    python scripts/train_fashion_vit.py --minutes 14 --seed 0

Writes model.safetensors, config.json into --out (default models/fashion_vit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "fashion-mnist").resolve()
DEFAULT_OUT = REPO_ROOT / "models" / "fashion_vit"

from edgeprune.train import mnist as _mnist  # the narrow ViT both ViT scripts use
from edgeprune.train.schedule import lr_at

TIMM_NAME = "vit_tiny_patch16_224"
IMG_SIZE = 28

# 0.45 M parameters. On the shared 2-core machine one step of 128 images takes 0.3-0.8 s
# depending on load, so ~14 minutes buys only a few epochs over 60,000 images: a narrow
# model trained for more steps beats a wider one trained for fewer.
MODEL_ARGS: dict[str, Any] = {"img_size": IMG_SIZE, **_mnist.NARROW_VIT_ARGS, "global_pool": "token"}

SPLIT = "Fashion-MNIST train (60,000) / test (10,000) as shipped"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

TIMING_STEPS = 12  # steps timed (after 3 untimed ones) before the schedule is sized
REPLAN_EVERY = 50  # steps between re-sizings of the schedule in --minutes mode
RATE_WINDOW = 200  # recent steps whose mean time sizes the schedule
PROBE_SECONDS = 60.0  # --threads auto: seconds between trials of the other thread count (doubling while they lose)
PROBE_STEPS = 6  # --threads auto: steps of each trial (the first not counted)
SAFETY = 0.04  # fraction of the budget kept back for timing noise


class UsageError(Exception):
    """A problem with the command line or the data folder: printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# data


def load_data(data_dir: Path):
    """(x_train, y_train, x_test, y_test, mean, std): normalised float32 [N,1,28,28], int64 [N]."""
    import numpy as np
    import torch

    from edgeprune.data.idx import load_idx_split
    from edgeprune.core.errors import EdgepruneError

    if not data_dir.is_dir():
        raise UsageError(f"data folder '{data_dir}' does not exist (pass --data-dir, the folder of Fashion-MNIST's IDX files)")
    try:
        tr_img, tr_lab = load_idx_split(data_dir, "train")
        te_img, te_lab = load_idx_split(data_dir, "test")
    except EdgepruneError as exc:
        raise UsageError(str(exc)) from None
    if tr_img.shape[1:] != (IMG_SIZE, IMG_SIZE) or te_img.shape[1:] != (IMG_SIZE, IMG_SIZE):
        raise UsageError(f"'{data_dir}' holds {tr_img.shape[1:]} images, expected 28x28 (Fashion-MNIST)")
    # Statistics of the train split only, in [0, 1], rounded as recorded in config.json.
    pix = tr_img.astype(np.float64) / 255.0
    mean, std = round(float(pix.mean()), 4), round(float(pix.std()), 4)
    del pix

    def prep(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        return (x - mean) / std

    return prep(tr_img), torch.from_numpy(tr_lab.copy()), prep(te_img), torch.from_numpy(te_lab.copy()), mean, std


def augment(x, max_shift: int, flip: bool, bg: float, gen):
    """Random translation by up to +-max_shift px (background fill) and horizontal flip (p=0.5).

    Vectorised: images are grouped by their drawn offset, so a batch costs (2s+1)^2 slices.
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen) if max_shift > 0 else None
    flips = torch.rand(n, generator=gen) < 0.5 if flip else None
    if max_shift > 0:
        padded = F.pad(x, (max_shift,) * 4, value=bg)
        out = torch.empty_like(x)
        key = offs[:, 0] * (2 * max_shift + 1) + offs[:, 1]
        for k in torch.unique(key).tolist():
            sel = (key == k).nonzero(as_tuple=True)[0]
            dy, dx = divmod(k, 2 * max_shift + 1)
            out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
        x = out
    if flip:
        x = torch.where(flips.view(n, 1, 1, 1), x.flip(-1), x)
    return x


def evaluate(model, x, y, batch_size: int = 500) -> float:
    """Top-1 accuracy (0..1) of `model` on (x, y), in eval mode."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    return correct / x.shape[0]


# ---------------------------------------------------------------------------------------------
# training


def load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def train(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.time()
    budget_s = args.minutes * 60.0
    import timm
    import torch
    import torch.nn.functional as F

    auto_threads = args.threads == "auto"
    cur_threads = 2 if auto_threads else int(args.threads)
    torch.set_num_threads(cur_threads)
    steps_at_threads = {1: 0, 2: 0} if auto_threads else {cur_threads: 0}
    probe: dict[str, Any] = {}  # an ongoing trial of the other thread count
    probe_wait = PROBE_SECONDS
    next_probe = time.time() + 10.0
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    x_tr, y_tr, x_te, y_te, mean, std = load_data(args.data_dir)
    bg = (0.0 - mean) / std
    model = timm.create_model(TIMM_NAME, pretrained=False, **MODEL_ARGS)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{TIMM_NAME} {MODEL_ARGS} -> {n_params / 1e6:.2f}M params", flush=True)
    print(f"train {len(y_tr)} / test {len(y_te)} images from {args.data_dir}; mean {mean} std {std}", flush=True)

    # No weight decay on norms, biases and the position/CLS embeddings (usual ViT practice).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in ("pos_embed", "cls_token") else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )

    n_train = len(y_tr)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    timed = args.steps is None
    total = args.steps if not timed else 10**9  # sized after the first timed steps
    warmup = args.warmup
    step, epoch, seen = 0, 0, 0
    eval_s_per_image: Optional[float] = None  # measured on the first per-epoch evaluation
    step_times: list[float] = []
    replans: list[int] = []
    history: list[dict[str, Any]] = []
    t_train0 = time.time()
    stopped_on_time = False

    def reserve_s() -> float:
        """Time kept for the final evaluation of the test split and writing the files."""
        if eval_s_per_image is not None:
            per_img = eval_s_per_image
        else:  # a forward pass costs about a third of a training step; assume half, to be safe
            per_img = sum(step_times[-20:]) / max(1, len(step_times[-20:])) / args.batch_size / 2
        return per_img * len(y_te) + 5.0

    def plan_total() -> int:
        """Steps that still fit: remaining time, less the reserve and the evaluations at epoch ends."""
        recent = step_times[-RATE_WINDOW:]
        per_step = sum(recent) / len(recent)
        remaining = budget_s * (1 - SAFETY) - (time.time() - t_start) - reserve_s()
        eval_per_step = (eval_s_per_image or per_step / args.batch_size) * len(y_te) / steps_per_epoch
        return step + max(0, int(remaining / (per_step + eval_per_step)))

    while step < total:
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        run_loss, run_correct, run_n = 0.0, 0, 0
        for b in range(steps_per_epoch):
            if step >= total:
                break
            if timed and time.time() - t_start > budget_s * (1 - SAFETY) - reserve_s():
                stopped_on_time = True
                total = step
                break
            if auto_threads and not probe and time.time() > next_probe and len(step_times) >= 8:
                probe = {"threads": 3 - cur_threads, "base": sum(step_times[-8:]) / 8, "times": []}
                torch.set_num_threads(probe["threads"])
            t0 = time.time()
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            xb = augment(x_tr[idx], args.shift, args.flip, bg, gen)
            yb = y_tr[idx]
            lr = lr_at(step, total, warmup, args.lr, args.lr * 0.01)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            dt = time.time() - t0
            if step > 3:  # the first steps warm up allocators and caches
                step_times.append(dt)
            steps_at_threads[probe["threads"] if probe else cur_threads] += 1
            if probe:
                probe["times"].append(dt)
                if len(probe["times"]) == PROBE_STEPS:
                    trial = sum(probe["times"][1:]) / (PROBE_STEPS - 1)
                    if trial < probe["base"]:
                        print(f"step {step}: {probe['threads']} thread(s) {trial:.3f} s/step vs {cur_threads}: {probe['base']:.3f} -> switching", flush=True)
                        cur_threads = probe["threads"]
                        probe_wait = PROBE_SECONDS
                    else:
                        probe_wait = min(8 * PROBE_SECONDS, 2 * probe_wait)
                    torch.set_num_threads(cur_threads)
                    next_probe = time.time() + probe_wait
                    probe = {}
            run_loss += loss.item() * len(yb)
            run_correct += int((logits.argmax(-1) == yb).sum())
            run_n += len(yb)
            if timed and (len(step_times) == TIMING_STEPS or (len(step_times) > TIMING_STEPS and step % REPLAN_EVERY == 0)):
                new_total = max(plan_total(), step + 1)
                if len(step_times) == TIMING_STEPS:
                    print(
                        f"timed {TIMING_STEPS} steps: {sum(step_times) / len(step_times):.3f} s/step -> "
                        f"{new_total} steps ({new_total / steps_per_epoch:.2f} epochs) fit in {args.minutes:g} min",
                        flush=True,
                    )
                else:  # move half way, so a burst of load elsewhere does not jerk the learning rate about
                    new_total = max(step + 1, (total + new_total) // 2)
                    if abs(new_total - total) > 0.02 * total:
                        replans.append(new_total)
                total = new_total
        if run_n == 0:
            break
        epoch += 1
        seen += run_n
        t_ev = time.time()
        acc = evaluate(model, x_te, y_te)
        if eval_s_per_image is None:
            eval_s_per_image = (time.time() - t_ev) / len(y_te)
        elapsed = (time.time() - t_start) / 60
        full = run_n == n_train
        history.append({"epoch": round(seen / n_train, 3), "step": step, "loss": round(run_loss / run_n, 4), "test_top1": round(acc, 4), "minutes": round(elapsed, 2)})
        print(
            f"epoch {epoch:2d}{'' if full else f' (partial, {run_n} images)'}  step {step}/{total}  "
            f"loss {run_loss / run_n:.4f}  train {run_correct / run_n:.4f}  test {acc:.4f}  "
            f"lr {lr:.2e}  [{elapsed:.1f} min, load {load_average()}]",
            flush=True,
        )
    top1 = history[-1]["test_top1"] if history and history[-1]["step"] == step else evaluate(model, x_te, y_te)
    minutes = (time.time() - t_start) / 60
    return {
        "model": model,
        "top1": float(top1),
        "minutes": minutes,
        "train_minutes": (time.time() - t_train0) / 60,
        "steps": step,
        "epochs": seen / n_train,
        "mean": mean,
        "std": std,
        "params": n_params,
        "history": history,
        "replans": replans,
        "stopped_on_time": stopped_on_time,
        "s_per_step": sum(step_times) / max(1, len(step_times)),
        "steps_at_threads": steps_at_threads,
    }


# ---------------------------------------------------------------------------------------------
# output


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save(result: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    # contiguous() because safetensors refuses views; keys stay exactly timm's.
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in result["model"].state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "timm_name": TIMM_NAME})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; the file is meant to be shared
    os.replace(tmp, out / "model.safetensors")

    config = {
        "timm_name": TIMM_NAME,
        "model_args": MODEL_ARGS,
        "input": {"size": [1, IMG_SIZE, IMG_SIZE], "mean": result["mean"], "std": result["std"], "pad": 0},
        "classes": CLASSES,
        "train": {
            "seed": args.seed,
            "epochs": round(result["epochs"], 2),
            "steps": result["steps"],
            "split": SPLIT,
            "minutes": round(result["minutes"], 2),
            "budget_minutes": args.minutes if args.steps is None else None,
            "threads": args.threads if args.threads == "auto" else int(args.threads),
            "steps_at_threads": {str(k): v for k, v in result["steps_at_threads"].items()},
            "batch_size": args.batch_size,
            "optimizer": {
                "name": "AdamW",
                "lr": args.lr,
                "weight_decay": args.weight_decay,
                "schedule": f"{args.warmup} steps linear warmup + cosine to 1% over the steps that fit",
                "grad_clip": 1.0,
            },
            "augment": {"random_shift_px": args.shift, "horizontal_flip": args.flip, "label_smoothing": args.label_smoothing},
            "history": result["history"],
        },
        "eval": {"top1": round(result["top1"], 4), "n": 10000},
    }
    _write_atomic(out / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    return config


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder of Fashion-MNIST's IDX files (default: %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=14.0, help="wall-clock budget for the whole run, evaluation included (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead of sizing them to --minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=200, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--shift", type=int, default=0, help="max random translation in px (default: %(default)s; in a budget of a few epochs the model underfits, and shifts only slowed it)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    p.add_argument(
        "--threads",
        default="auto",
        choices=["auto", "1", "2"],
        help="torch threads; auto (default) starts with 2 and about every minute tries the other count, keeping "
        "the faster: on a busy shared 2-core machine 2 threads were 3-10x slower than 1, on a quiet one 2x faster",
    )
    args = p.parse_args(argv)
    for name, low in (("minutes", 0.5), ("batch_size", 1), ("warmup", 1)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.shift < 0 or args.shift >= IMG_SIZE // 2:
        raise UsageError(f"--shift must be in [0, {IMG_SIZE // 2 - 1}], got {args.shift}")
    if not args.data_dir.is_dir():
        raise UsageError(f"data folder '{args.data_dir}' does not exist (pass --data-dir, the folder of Fashion-MNIST's IDX files)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_args(argv)
        result = train(args)
    except UsageError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        return 2
    config = save(result, args.out, args)
    print(
        f"test top-1 {config['eval']['top1']:.4f} after {config['train']['epochs']} epochs / {result['steps']} steps, "
        f"{result['minutes']:.2f} min ({result['s_per_step']:.3f} s/step{', stopped on time' if result['stopped_on_time'] else ''}"
        f"{', re-sized to ' + str(result['replans']) if result['replans'] else ''}) -> {args.out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
