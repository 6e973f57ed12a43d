"""Held-out MNIST top-1 of the reference ViT under token reduction, vs realised MACs.

For each method and MACs target, plans are built with several reduction-point
schedules (the library default, a single early point, three spread points, and
ToMe's constant r per block) and the reduced model is evaluated in eager PyTorch on the 2000 held-out digits.

    python scripts/accuracy_vs_flops.py --json out/mnist_acc.json --plot out/mnist_acc.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file

import edgeprune
from edgeprune.train import mnist as _mnist

DEFAULT_METHODS = ("tome", "evit", "gsp")
DEFAULT_TARGETS = (0.8, 0.7, 0.6, 0.5, 0.4)


def load_reference(model_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Recreate the timm model from config.json and load its safetensors weights strictly."""
    cfg = json.loads((model_dir / "config.json").read_text())
    model = timm.create_model(cfg["timm_name"], pretrained=False, **cfg["model_args"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=True)
    return model.eval(), cfg


def schedules_for(depth: int) -> dict[str, dict[str, Any]]:
    """Reduction schedules to compare, as build_plan kwargs keyed by a short label.

    The three-point schedule is [1, 3, 5] at depth 6 and keeps the same relative
    positions at other depths. ToMe's constant-r schedule is the reference the
    few-point schedules (cheaper per reduction point on an engine) must compete with.
    """
    spread = sorted({min(depth - 1, round(depth * f / 6)) for f in (1, 3, 5)})
    return {
        "default": {},
        "[1]": {"points": [1]},
        str(spread).replace(" ", ""): {"points": spread},
        "constant": {"schedule": "constant"},
    }


def run_sweep(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    methods: list[str],
    targets: list[float],
    batch_size: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    base_top1 = _mnist.evaluate(model, x, y, batch_size)
    # The reducer's own block loop with no reduction should reproduce the model exactly;
    # if it does not, every number below is suspect, so record it next to the baseline.
    none_plan = edgeprune.build_plan(model, "none")
    none_top1 = _mnist.evaluate(edgeprune.reduce_model(model, none_plan), x, y, batch_size)
    baseline = {"top1": base_top1, "none_plan_top1": none_top1, "macs": none_plan.macs}

    depth = none_plan.spec.depth
    rows: list[dict[str, Any]] = []
    for method in methods:
        for target in targets:
            for label, kwargs in schedules_for(depth).items():
                row: dict[str, Any] = {"method": method, "target": target, "schedule": label}
                try:
                    plan = edgeprune.build_plan(model, method, flops=target, **kwargs)
                except Exception as exc:  # infeasible targets are data, not failures
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    rows.append(row)
                    continue
                top1 = _mnist.evaluate(edgeprune.reduce_model(model, plan), x, y, batch_size)
                row.update(
                    macs_ratio=plan.macs_ratio,
                    top1=top1,
                    drop=base_top1 - top1,
                    final_tokens=plan.final_tokens,
                    points=plan.reduction_points,
                    plan=plan.to_dict(),
                )
                rows.append(row)
    return baseline, rows


def best_by_target(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """Highest-top-1 schedule per (method, target); ties go to the lower MACs ratio."""
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for r in rows:
        if "error" in r:
            continue
        key = (r["method"], r["target"])
        cur = best.get(key)
        if cur is None or (r["top1"], -r["macs_ratio"]) > (cur["top1"], -cur["macs_ratio"]):
            best[key] = r
    return best


def print_tables(baseline: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(
        f"unreduced held-out top-1 {baseline['top1']:.4f} "
        f"(method 'none' through edgeprune: {baseline['none_plan_top1']:.4f}), "
        f"{baseline['macs'] / 1e6:.1f} MMACs/image"
    )
    print()
    hdr = f"{'method':<6} {'target':>6} {'schedule':<9} {'points':<13} {'tokens':>6} {'MACs':>6} {'top-1':>7} {'drop':>7}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        head = f"{r['method']:<6} {r['target']:>6.2f} {r['schedule']:<9}"
        if "error" in r:
            print(f"{head} skipped: {r['error']}")
            continue
        pts = str(r["points"]).replace(" ", "")
        print(
            f"{head} {pts:<13} {r['final_tokens']:>6d} {r['macs_ratio']:>6.3f} "
            f"{r['top1']:>7.4f} {r['drop'] * 100:>+6.2f}pp"
        )
    print()
    print("best schedule per method and target (top-1, realised MACs ratio):")
    best = best_by_target(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    print(f"{'target':>6}  " + "  ".join(f"{m:<26}" for m in methods))
    for t in targets:
        cells = []
        for m in methods:
            b = best.get((m, t))
            cells.append(f"{b['schedule']:<9} {b['top1']:.4f} @{b['macs_ratio']:.3f}" if b else f"{'-':<26}")
        print(f"{t:>6.2f}  " + "  ".join(f"{c:<26}" for c in cells))


def plot(baseline: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or edge boxes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    best = best_by_target(rows)
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and "error" not in r]
        pts = sorted((b["macs_ratio"], b["top1"] * 100) for (m, _), b in best.items() if m == method)
        if not pts:
            continue
        # Every schedule as faint dots, the best per target as the method's line.
        (line,) = ax.plot(*zip(*pts), marker="o", label=method)
        ax.scatter([r["macs_ratio"] for r in ok], [r["top1"] * 100 for r in ok], s=12, alpha=0.35, color=line.get_color())
    ax.axhline(baseline["top1"] * 100, color="grey", linestyle="--", linewidth=1, label="unreduced")
    ax.set_xlabel("realised MACs / unreduced MACs")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title("MNIST ViT: accuracy vs compute (best schedule per target)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=_mnist.REPO_ROOT / "models" / "mnist_vit")
    p.add_argument("--data-dir", type=Path, default=_mnist.DEFAULT_DATA_DIR)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--targets", nargs="+", type=float, default=list(DEFAULT_TARGETS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write all rows (with plans) here")
    p.add_argument("--plot", type=Path, help="write a PNG of top-1 vs MACs ratio here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, cfg = load_reference(args.model_dir)
    x, y = _mnist.load_split("eval", args.data_dir)
    t0 = time.time()
    with torch.inference_mode():
        baseline, rows = run_sweep(model, x, y, args.methods, args.targets, args.batch_size)
    print_tables(baseline, rows)
    print(f"\n{len(rows)} rows in {time.time() - t0:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"model": cfg, "baseline": baseline, "best": [
            {"method": m, "target": t, "schedule": b["schedule"], "top1": b["top1"], "macs_ratio": b["macs_ratio"]}
            for (m, t), b in best_by_target(rows).items()
        ], "rows": rows}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(baseline, rows, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
