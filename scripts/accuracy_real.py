"""Top-1 vs MACs vs measured latency on real data: every reducer at fixed plans, and tuned plans.

Models (both classify 28x28 grey images from 49 patch tokens + CLS):
  * ``mit``: the pretrained MNIST ViT from outside the project (../shared/models/mnist_vit_mit), loaded
    through the generic adapter's spec file; MNIST ships only its test split here, so the tuner
    calibrates on 1000 test digits (seeded) and figures are given on the other 9000 (disjoint) and on
    all 10000;
  * ``fashion``: the ViT trained here on Fashion-MNIST (models/fashion_vit); calibration on 1000
    train images, figures on the full 10000-image test split.
For each target MACs ratio: edgeprune's default plan and ToMe-style constant-r plan per method (as
``export --flops R [--schedule constant]`` builds them), and the plan ``edgeprune tune`` finds. Every
plan is then exported (batch 1, parity-checked) and all are timed interleaved in one ONNX Runtime run
with ``bench``'s hygiene; speedups are medians of per-round ratios against the unreduced graph. A
latency-targeted tune (``--latency``) reports measured vs asked speedup. Optionally the reference
segmenter's mIoU under the new reducers.

    python scripts/accuracy_real.py --json docs/results/accuracy_real.json
    python scripts/accuracy_real.py --models mit --targets 0.62 --rounds 30     # quicker
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
METHODS = ("tome", "tofu", "prune-merge", "evit", "gsp")


def load(name: str):
    """(model, eval image set, calibration set, the eval images disjoint from calibration as a slice
    (None: all of them are), description)."""
    from edgeprune.families.loading import load_model
    from edgeprune.tune import Preprocess, load_calibration

    if name == "mit":
        model, info = load_model(str(REPO / "specs" / "mnist_vit_mit.json"), checkpoint=SHARED / "models" / "mnist_vit_mit" / "vit_mnist_gpu.pt")
        pre = Preprocess((28, 28), 1, tuple(info["input"]["mean"]), tuple(info["input"]["std"]))
        # Both draws use the same seeded permutation of the 10000 digits: the first 1000 of `full`
        # are the calibration digits, the other 9000 the disjoint part.
        calib, _ = load_calibration(SHARED / "data" / "mnist", pre, 1000, 0)
        full, _ = load_calibration(SHARED / "data" / "mnist", pre, 10000, 0)
        assert torch.equal(full.images[:1000], calib.images)
        return model, full, calib, slice(1000, None), "mnist_vit_mit (pretrained elsewhere), MNIST test"
    cfg = json.loads((REPO / "models" / "fashion_vit" / "config.json").read_text())
    model, _ = load_model(cfg["timm_name"], checkpoint=REPO / "models" / "fashion_vit" / "model.safetensors", model_args=cfg["model_args"])
    mean, std = cfg["input"]["mean"], cfg["input"]["std"]
    as_tuple = lambda v: tuple(v) if isinstance(v, list) else (v,)  # noqa: E731
    pre = Preprocess(tuple(model.patch_embed.img_size), 1, as_tuple(mean), as_tuple(std))
    calib, test = load_calibration(SHARED / "data" / "fashion-mnist", pre, 1000, -1)
    return model, test, calib, None, "fashion_vit (trained here), Fashion-MNIST test"


@torch.no_grad()
def correct(model, images) -> torch.Tensor:
    """Per-image correctness [N] bool."""
    return torch.cat([model(images.images[i : i + 500]).argmax(-1) == images.labels[i : i + 500]
                      for i in range(0, len(images), 500)])


def plans_for(model, calib, targets, budget_minutes, say) -> list[tuple[str, Any]]:
    import edgeprune
    from edgeprune.core.progress import messages
    from edgeprune.tune import tune

    rows: list[tuple[str, Any]] = [("unreduced", edgeprune.build_plan(model, "none")),
                                   ("prefix-only last block", edgeprune.build_plan(model, "none", prefix_only_last=True))]
    for target in targets:
        for method in METHODS:
            for schedule in ("points", "constant"):
                try:
                    rows.append((f"{method} {schedule} @{target}", edgeprune.build_plan(model, method, flops=target, schedule=schedule)))
                except edgeprune.EdgepruneError as exc:
                    say(f"  skip {method} {schedule} @{target}: {exc}")
        say(f"  tuning at flops {target}")
        result = tune(model, calib, flops=target, budget_minutes=budget_minutes, progress=messages(lambda m: say("    " + m)))
        rows.append((f"tuned @{target}", result.plan))
        say(f"    tuned: {result.plan.method} {result.plan.options} keep {list(result.plan.keep)} ({result.info['seconds']} s)")
    return rows


def measure(model, rows, rounds: int, say) -> dict[str, dict[str, float]]:
    from edgeprune.measure.bench import benchmark
    from edgeprune.exporting.onnx_export import export

    with tempfile.TemporaryDirectory(prefix="edgeprune-acc-") as tmp:
        artifacts = []
        for i, (label, plan) in enumerate(rows):
            say(f"  exporting {i + 1}/{len(rows)}: {label}")
            artifacts.append(export(model, plan, Path(tmp) / f"a{i}"))
        say(f"  timing {len(artifacts)} graphs interleaved, {rounds} rounds")
        bench = benchmark(artifacts, rounds=rounds, baseline=str(artifacts[0].path))
    return {label: {"p50_ms": r.p50_ms, "speedup": r.speedup, "parity": a.manifest["parity"]["max"]}
            for (label, _), r, a in zip(rows, bench.rows, artifacts)}


def latency_check(model, calib, target: float, rounds: int, say) -> dict[str, Any]:
    """tune --latency: the measured speedup against the one asked for (1 / target)."""
    import edgeprune
    from edgeprune.core.progress import messages
    from edgeprune.tune import tune

    try:
        result = tune(model, calib, latency=target, budget_minutes=6, progress=messages(lambda m: say("    " + m)))
    except edgeprune.EdgepruneError as exc:  # a small model at batch 1 may not reach the target at all
        found = re.search(r"smallest reachable is ([0-9.]+)", str(exc))
        if not found:
            raise
        target = round((1 + float(found.group(1))) / 2, 2)
        say(f"    {exc}; asking for {target} instead")
        result = tune(model, calib, latency=target, budget_minutes=6, progress=messages(lambda m: say("    " + m)))
    timing = measure(model, [("unreduced", edgeprune.build_plan(model, "none")), ("latency-tuned", result.plan)], rounds, say)
    measured = timing["latency-tuned"]["speedup"]
    return {"target_latency_ratio": target, "asked_speedup": 1 / target, "predicted_latency_ratio": result.plan.target.get("predicted_latency_ratio"),
            "measured_speedup": measured, "measured_latency_ratio": 1 / measured, "off_by": measured * target - 1,
            "plan": {"method": result.plan.method, "keep": list(result.plan.keep), "macs_ratio": result.plan.macs_ratio}}


def segmenter_miou(say) -> list[dict[str, Any]]:
    import edgeprune
    from edgeprune.data import HELDOUT_SEEDS, SceneConfig, scene_batch
    from edgeprune.imaging.evaluation import confusion, iou_report, normalize
    from edgeprune.families.loading import load_model

    model, _ = load_model(str(REPO / "models" / "scene_seg"))
    images, labels = scene_batch(HELDOUT_SEEDS[:100], SceneConfig(height=128, width=128))
    x = torch.from_numpy(normalize(images, model.info["input"]["mean"], model.info["input"]["std"]))
    out = []
    for method in ("none", "tome", "tofu", "prune-merge", "gsp"):
        plan = edgeprune.build_plan(model, method, **({} if method == "none" else {"flops": 0.6}))
        reduced = edgeprune.reduce_model(model, plan)
        with torch.no_grad():
            pred = torch.cat([reduced(x[i : i + 20]).argmax(1) for i in range(0, len(x), 20)]).numpy()
        miou = iou_report(confusion(labels, pred, 7))["miou"]
        out.append({"method": method, "macs_ratio": plan.macs_ratio, "miou": miou})
        say(f"  segmenter {method}: MACs {plan.macs_ratio:.3f} mIoU {miou:.4f}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mit,fashion")
    ap.add_argument("--targets", default="0.62,0.5", help="MACs ratios")
    ap.add_argument("--latency", type=float, default=0.6, help="latency target for the tune --latency check (0 = skip)")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--budget-minutes", type=float, default=6.0)
    ap.add_argument("--segmenter", action="store_true", help="also the reference segmenter's mIoU under the new reducers")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    targets = [float(t) for t in args.targets.split(",")]
    report: dict[str, Any] = {"command": "python scripts/accuracy_real.py " + " ".join(sys.argv[1:]), "models": {}}
    for name in args.models.split(","):
        started = time.perf_counter()
        model, test, calib, disjoint, what = load(name)
        say(f"{what}: {len(test)} eval images")
        rows = plans_for(model, calib, targets, args.budget_minutes, say)
        timing = measure(model, rows, args.rounds, say)
        entries = []
        for label, plan in rows:
            reduced = edgeprune_reduce(model, plan)
            hits = correct(reduced, test)
            entry = {"plan": label, "method": plan.method, "keep": list(plan.keep), "prefix_only_last": plan.prefix_only_last,
                     "macs_ratio": round(plan.macs_ratio, 4), "top1": float(hits.float().mean()), **timing[label]}
            if disjoint is not None:
                entry["top1_disjoint"] = float(hits[disjoint].float().mean())
            entries.append(entry)
        base = entries[0]
        print(f"\n{what} ({len(test)} images{', disjoint part: the last ' + str(len(test) - 1000) if disjoint is not None else ''})")
        print(f"{'plan':<28} {'MACs':>6} {'top-1':>7} {'loss pt':>8} {'speedup':>8} {'p50 ms':>7}" + ("  disjoint loss" if disjoint is not None else ""))
        for e in entries:
            extra = f"  {100 * (e['top1_disjoint'] - base['top1_disjoint']):+.2f}" if disjoint is not None else ""
            print(f"{e['plan']:<28} {e['macs_ratio']:>6.3f} {e['top1']:>7.4f} {100 * (e['top1'] - base['top1']):>+8.2f} "
                  f"{e['speedup']:>7.2f}x {e['p50_ms']:>7.3f}{extra}")
        model_report: dict[str, Any] = {"what": what, "rows": entries}
        if args.latency:
            say(f"  tune --latency {args.latency}")
            check = latency_check(model, calib, args.latency, args.rounds, say)
            print(f"tune --latency {check['target_latency_ratio']}: asked {check['asked_speedup']:.3f}x, measured {check['measured_speedup']:.3f}x "
                  f"({100 * check['off_by']:+.1f} %), predicted ratio {check['predicted_latency_ratio']}")
            model_report["latency_check"] = check
        model_report["seconds"] = round(time.perf_counter() - started, 1)
        report["models"][name] = model_report
    if args.segmenter:
        report["segmenter"] = segmenter_miou(say)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def edgeprune_reduce(model, plan):
    import edgeprune

    return edgeprune.reduce_model(model, plan)


if __name__ == "__main__":
    sys.exit(main())
