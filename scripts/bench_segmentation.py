"""Token reduction on a segmenter: held-out mIoU and batch-1 ONNX Runtime speed, per plan.

Every plan (method x MACs budget, plus --plan variants, plus the unreduced baseline) is exported as
a static batch-1 artifact, scored through ONNX Runtime and timed in one interleaved run. Two data
sets: ``--data scenes`` (default; the scenes model on held-out procedural scenes) and ``--data
camvid`` (the CamVid model on the 233 real test frames, unlabelled ignored, with overlays of test
frames beside their ground truth). The acceptance question: at <= 0.6 MACs, does a plan keep
>= 98% of the baseline mIoU while running >= --speedup faster (1.4x for scenes, 1.3x for camvid)?

    python scripts/bench_segmentation.py --work out/segbench            # the full sweep (~15 min)
    python scripts/bench_segmentation.py --data camvid --work out/segbench-camvid
    python scripts/bench_segmentation.py --flops 0.6,0.4 --images 40 --rounds 10 --plan tome:0.5:0,2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

REPO = Path(__file__).resolve().parents[1]

from edgeprune.measure.seg_overlays import overlay_inputs, overlays
METHODS = ("tome", "gsp", "evit", "cluster", "pass")
RETENTION, MACS_CAP, DROP = 0.98, 0.6, 0.95
SPEEDUP = {"scenes": 1.4, "camvid": 1.3}  # the acceptance bar each data set's issue set
console = Console(stderr=True)


@dataclass
class Variant:
    method: str
    flops: Optional[float] = None
    points: Optional[list[int]] = None  # None: build_plan's default for the method
    extra: bool = False  # from --plan, not the budget sweep
    plan: Any = None
    error: str = ""
    artifact: Any = None
    score: dict = field(default_factory=dict)
    bench: Any = None

    @property
    def name(self) -> str:
        if self.method == "none":
            return "none"
        pts = f"-p{'_'.join(map(str, self.points))}" if self.points is not None else ""
        return f"{self.method}-{self.flops:.2f}{pts}"

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def points_text(self) -> str:
        if self.plan is not None:
            return ",".join(map(str, self.plan.reduction_points)) or "-"
        return ",".join(map(str, self.points)) if self.points is not None else "default"


def parse_plan(text: str) -> Variant:
    """``method:flops[:points]``, e.g. ``tome:0.5:0,2``."""
    from edgeprune import EdgepruneError

    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError
        points = [int(p) for p in parts[2].split(",")] if len(parts) == 3 else None
        return Variant(parts[0].lower(), float(parts[1]), points, extra=True)
    except ValueError:
        raise EdgepruneError(f"--plan {text!r}: expected method:flops[:points], e.g. tome:0.5:0,2") from None


def build_variants(model, methods: list[str], budgets: list[float], extra: list[Variant]) -> list[Variant]:
    """Baseline, the sweep and the extra variants, deduplicated; an impossible budget is kept as n/a."""
    import edgeprune

    variants = [Variant("none")] + [Variant(m, f) for m in methods for f in budgets] + extra
    unique: dict[str, Variant] = {}
    for v in variants:
        unique.setdefault(v.name, v)  # a --plan equal to a sweep point stays part of the sweep
    unique = list(unique.values())
    for v in unique:
        try:
            kwargs = {} if v.method == "none" else {"flops": v.flops}
            if v.points is not None:
                kwargs["points"] = v.points
            v.plan = edgeprune.build_plan(model, v.method, **kwargs)
        except edgeprune.EdgepruneError as exc:
            v.error = str(exc)
    return unique


def bar(what: str) -> Progress:
    return Progress(TextColumn(f"{what:<8}"), TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def export_all(model, variants: list[Variant], work: Path, weights_sha: str) -> None:
    """Static batch-1 artifacts in ``work``; an existing one is reused when its plan and weights match."""
    import json

    import edgeprune
    from edgeprune.artifacts.artifact import load_artifact

    todo = [v for v in variants if v.ok]
    reused = 0
    with bar("export") as progress:
        task = progress.add_task("", total=len(todo))
        for v in todo:
            progress.update(task, description=v.name)
            target, wanted = work / v.name, json.loads(json.dumps(v.plan.to_dict()))
            try:
                old = load_artifact(target)
                if (old.manifest["plan"] == wanted and old.manifest["model"].get("weights_sha256") == weights_sha
                        and old.manifest["inputs"][0]["shape"][0] == 1):
                    v.artifact, reused = old, reused + 1
            except edgeprune.EdgepruneError:
                pass
            if v.artifact is None:
                try:
                    v.artifact = edgeprune.export(model, v.plan, target, batch=1, overwrite=True,
                                                  model_info={"weights_sha256": weights_sha})
                except edgeprune.EdgepruneError as exc:
                    if v.method == "none":
                        raise
                    v.error = f"export failed: {exc}"  # one broken plan must not sink a long sweep
            progress.advance(task)
    print(f"{len(todo)} artifacts in {work} ({reused} reused, {len(todo) - reused} exported)")


def evaluate_all(variants: list[Variant], eval_set, count: int, threads: int) -> None:
    from edgeprune.measure.seg_eval import evaluate_artifact

    todo = [v for v in variants if v.ok]
    with bar("mIoU") as progress:
        task = progress.add_task("", total=count * len(todo))
        for i, v in enumerate(todo):
            progress.update(task, description=v.name)
            v.score = evaluate_artifact(v.artifact, eval_set, threads,
                                        progress=lambda done, _n, i=i: progress.update(task, completed=i * count + done))


def busy_cpu_seconds() -> Optional[float]:
    """CPU seconds all processes have used (Linux /proc/stat); None elsewhere."""
    try:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def time_all(variants: list[Variant], rounds: int, threads: int):
    """One interleaved run over every artifact; also how many cores other processes used meanwhile,
    since on a shared machine their load turns speedups into noise."""
    from edgeprune.measure.bench import benchmark

    todo = [v for v in variants if v.ok]
    busy, mine, start = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    with bar("timing") as progress:
        task = progress.add_task(f"{len(todo)} artifacts", total=rounds)
        result = benchmark([v.artifact for v in todo], batch=1, rounds=rounds, threads=threads,
                           progress=lambda done, _n: progress.update(task, completed=done))
    wall, mine, after = time.perf_counter() - start, time.process_time() - mine, busy_cpu_seconds()
    others = None if busy is None or after is None else max(0.0, (after - busy - mine) / wall)
    for v, row in zip(todo, result.rows):
        v.bench = row
    return result, others


def row_dict(v: Variant, base: Variant) -> dict[str, Any]:
    d: dict[str, Any] = {"name": v.name, "method": v.method, "flops": v.flops, "points": v.points_text, "extra": v.extra}
    if not v.ok:
        return {**d, "error": v.error}
    b = v.bench
    # Quartiles of the per-round ratios: how far one noisy run can be trusted near a threshold.
    q25, q75 = np.percentile(np.asarray(base.bench.samples_ms) / np.asarray(b.samples_ms), [25, 75]).tolist()
    base_miou = base.score["miou"]
    return {**d, "final_tokens": v.plan.final_tokens, "keep": list(v.plan.keep), "macs_ratio": v.plan.macs_ratio,
            "miou": v.score["miou"], "kept": v.score["miou"] / base_miou, "pixel_accuracy": v.score["pixel_accuracy"],
            "per_class_iou": v.score["per_class_iou"], "p50_ms": b.p50_ms, "p90_ms": b.p90_ms, "speedup": b.speedup, "speedup_iqr": [q25, q75],
            "predicted_speedup": b.predicted_speedup, "artifact": str(v.artifact.path)}


def sort_key(r: dict) -> tuple:
    order = ("none", *METHODS)
    rank = order.index(r["method"]) if r["method"] in order else len(order)
    return rank, r["method"], -(r["flops"] or 1.0), r["points"]


def print_table(rows: list[dict]) -> None:
    head = f"{'method':<8} {'flops':>5} {'points':<8} {'tokens':>6} {'MACs':>6} {'mIoU':>7} {'kept %':>7} {'p50 ms':>7} {'speedup':>7} {'IQR':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        flops = "-" if r["flops"] is None else f"{r['flops']:.2f}"
        start = f"{r['method']:<8} {flops:>5} {r['points']:<8}"
        if "error" in r:
            print(f"{start} {'n/a':>6}  ({r['error'].split(';')[0]})")
            continue
        print(f"{start} {r['final_tokens']:>6} {r['macs_ratio']:>6.3f} {r['miou']:>7.4f} {100 * r['kept']:>6.1f}% "
              f"{r['p50_ms']:>7.2f} {r['speedup']:>6.2f}x {r['speedup_iqr'][0]:>4.2f}-{r['speedup_iqr'][1]:.2f}")


def describe(r: dict) -> str:
    return (f"{r['method']} flops {r['flops']:.2f} points {r['points']} ({r['final_tokens']} tokens, MACs {r['macs_ratio']:.3f}): "
            f"mIoU {r['miou']:.4f} = {100 * r['kept']:.1f}% kept, {r['speedup']:.2f}x")


def summarize(rows: list[dict], speedup: float) -> dict[str, Any]:
    """(1) per method, the first sweep budget (high to low) under 95% of the baseline mIoU; (2) acceptance."""
    first: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "none"):
        sweep = sorted((r for r in rows if r["method"] == method and not r["extra"] and "error" not in r),
                       key=lambda r: -r["flops"])
        below = next((r for r in sweep if r["kept"] < DROP), None)
        first[method] = None if below is None else below["flops"]
        if below:
            print(f"  {method:<8} flops {below['flops']:.2f}: mIoU {below['miou']:.4f} = {100 * below['kept']:.1f}% kept "
                  f"(MACs {below['macs_ratio']:.3f}, {below['speedup']:.2f}x)")
        elif sweep:
            print(f"  {method:<8} none in range (lowest budget {sweep[-1]['flops']:.2f} keeps {100 * sweep[-1]['kept']:.1f}%)")
        else:
            print(f"  {method:<8} no budget measured")
    pool = [r for r in rows if r["method"] != "none" and "error" not in r and r["macs_ratio"] <= MACS_CAP + 1e-9]
    passing = sorted((r for r in pool if r["kept"] >= RETENTION and r["speedup"] >= speedup),
                     key=lambda r: (r["speedup"], r["kept"]), reverse=True)
    rule = f"MACs <= {MACS_CAP}, mIoU kept >= {RETENTION:.0%}, speedup >= {speedup}x"
    if passing:
        best, verdict = passing[0], "PASS"
        print(f"acceptance ({rule}): PASS, {len(passing)} of {len(pool)} plans pass")
        for r in passing:
            print(f"  meets it: {describe(r)}")
        print(f"  best (fastest that meets it): {describe(best)}")
    elif pool:
        best, verdict = max(pool, key=lambda r: min(r["kept"] / RETENTION, r["speedup"] / speedup)), "FAIL"
        print(f"acceptance ({rule}): FAIL, none of {len(pool)} plans passes")
        print(f"  FAIL, best trade-off (max of min(kept/98%, speedup/{speedup}x)): {describe(best)}")
    else:
        best, verdict = None, "FAIL"
        print(f"acceptance ({rule}): FAIL, no plan at <= {MACS_CAP} MACs was measured")
    return {"first_below_95": first, "acceptance": {"rule": rule, "verdict": verdict, "passing": [r["name"] for r in passing],
                                                     "best": best["name"] if best else None}}


def check(eager: dict, v: Variant) -> str:
    return "" if abs(eager["miou"] - v.score["miou"]) <= 0.01 else "  WARNING: eager and ONNX disagree, suspect the export"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("scenes", "camvid"), default="scenes",
                   help="held-out procedural scenes (the scenes model) or the CamVid test split (the CamVid model)")
    p.add_argument("--model", type=Path, help="timm-vit-seg folder (default: models/scene_seg or models/camvid_seg)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list (default: %(default)s)")
    p.add_argument("--flops", default="0.8,0.7,0.6,0.5,0.4,0.3", help="MACs-ratio budgets (default: %(default)s)")
    p.add_argument("--plan", action="append", default=[], metavar="METHOD:FLOPS[:POINTS]",
                   help="extra variant, e.g. tome:0.5:0,2 (repeatable)")
    p.add_argument("--images", "--scenes", dest="images", type=int,
                   help="images scored for mIoU (default: 200 held-out scenes, or all 233 CamVid test frames)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="CamVid split scored (default: test; choose plans on val, then report them on test)")
    p.add_argument("--speedup", type=float, help="acceptance speedup (default: 1.4 for scenes, 1.3 for camvid)")
    p.add_argument("--overlay-frames", type=int, default=4, help="CamVid test frames drawn (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, help="artifact folder, reused across runs (default: a new temp dir)")
    p.add_argument("--json", type=Path, help="default <work>/results.json")
    p.add_argument("--plot", type=Path, help="default <work>/pareto.png")
    p.add_argument("--overlays", type=Path, help="default <work>/overlays")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "segmentation",
                   help="with --data scenes: photos to draw overlays of (default: %(default)s)")
    args = p.parse_args(argv)
    if args.model is None:
        args.model = REPO / "models" / ("camvid_seg" if args.data == "camvid" else "scene_seg")
    if args.speedup is None:
        args.speedup = SPEEDUP[args.data]
    return args


def run(args: argparse.Namespace) -> None:
    import torch

    import edgeprune
    from edgeprune.core.files import sha256_file, write_json_atomic
    from edgeprune.families.timm_seg import load_segmenter, read_segmenter_config
    from edgeprune.measure.plotting import plot_tradeoff
    from edgeprune.measure.seg_eval import EvalSet, eval_size, evaluate_module

    try:
        budgets = [float(f) for f in args.flops.split(",") if f.strip()]
    except ValueError:
        raise edgeprune.EdgepruneError(f"--flops expects comma-separated numbers, got {args.flops!r}") from None
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    extra = [parse_plan(t) for t in args.plan]
    from edgeprune.plan.methods import TOKEN_METHODS as ALL_METHODS

    unknown = sorted({m for m in methods + [v.method for v in extra] if m not in ALL_METHODS or m == "none"})
    if unknown:
        raise edgeprune.EdgepruneError(f"unknown method {', '.join(unknown)} (choose from {', '.join(ALL_METHODS[1:])})")
    if (args.images is not None and args.images < 1) or args.rounds < 1 or args.overlay_frames < 1:
        raise edgeprune.EdgepruneError("--images, --rounds and --overlay-frames must be >= 1")
    if args.data == "camvid":
        eval_set = EvalSet("camvid", args.images, args.split)
    else:
        eval_set = EvalSet("scenes", args.images or 200)
    torch.set_num_threads(args.threads)
    started = time.time()
    model = load_segmenter(args.model)
    config, weights = read_segmenter_config(args.model)
    work = args.work or Path(tempfile.mkdtemp(prefix="segbench-"))
    work.mkdir(parents=True, exist_ok=True)
    variants = build_variants(model, methods, budgets, extra)
    export_all(model, variants, work, sha256_file(weights))
    _, h, w = model.info["input"]["size"]
    count = eval_size(eval_set, h, w)
    evaluate_all(variants, eval_set, count, args.threads)
    result, others = time_all(variants, args.rounds, args.threads)
    base = variants[0]
    rows = sorted((row_dict(v, base) for v in variants), key=sort_key)

    print(f"\n{args.model.name}: {eval_set.describe()}, ONNX Runtime CPU, "
          f"batch 1, {args.threads} threads, {args.rounds} interleaved rounds; baseline mIoU {base.score['miou']:.4f}, "
          f"p50 {base.bench.p50_ms:.2f} ms\n")
    print_table(rows)
    print("(speedup: median of per-round ratios to the baseline; IQR: their quartiles)")
    if others is not None:
        print(f"other processes used {others:.2f} of {os.cpu_count()} CPUs on average while timing" + (
            ": WARNING they competed for the cores, so speedups are noisy; rerun on a quiet machine" if others > 0.25 else ""))
    # Eager PyTorch on the same scenes: a gap to the ONNX numbers would mean an export problem.
    eager = {"none": evaluate_module(model, eval_set)}
    recorded = config.get("eval", {})
    recorded = recorded.get(args.split, {}) if args.data == "camvid" else recorded
    note = f"; config.json records {recorded['miou']:.4f} for these images" if recorded.get("n") == count else ""
    print(f"\neager PyTorch baseline mIoU {eager['none']['miou']:.4f} vs ONNX {base.score['miou']:.4f}{note}"
          + check(eager["none"], base))
    print(f"\nfirst budget under {DROP:.0%} of the baseline mIoU, scanning budgets from high to low:")
    summary = summarize(rows, args.speedup)
    best = next((v for v in variants if v.name == summary["acceptance"]["best"]), None)
    if best is not None:
        eager[best.name] = evaluate_module(edgeprune.reduce_model(model, best.plan), eval_set, model.info["input"])
        print(f"  eager PyTorch mIoU of {best.name}: {eager[best.name]['miou']:.4f} vs ONNX {best.score['miou']:.4f}"
              + check(eager[best.name], best))

    plot_path = args.plot or work / "pareto.png"
    measured = [r for r in rows if "error" not in r]
    points = [{**r, "kept_pct": 100 * r["kept"], "label": "base" if r["method"] == "none" else
               f"{r['flops']:.2f}" + ("" if not r["extra"] else f"[{r['points']}]")} for r in measured]
    plot_tradeoff(points, plot_path, vline=args.speedup, title=f"{args.model.name}: mIoU kept vs batch-1 speedup "
                  f"({count} {args.data} images, {args.rounds} rounds, {args.threads} threads)")
    macs_path = plot_path.with_name(plot_path.stem + "_macs" + plot_path.suffix)
    plot_tradeoff(points, macs_path, vline=MACS_CAP, x="macs_ratio",
                  title=f"{args.model.name}: mIoU kept vs MACs ({count} {args.data} images)")
    print(f"\nwrote {plot_path} and {macs_path}")

    overlay_report: list[dict] = []
    photos, truth, what = overlay_inputs(args.data, args.photos, args.overlay_frames)
    if not photos:
        print(f"no photos under {args.photos}: skipping overlays")
    else:
        shown = [("baseline (none)", base)]
        if best is not None:
            verdict = summary["acceptance"]["verdict"]
            shown.append((f"best: {best.name}" if verdict == "PASS" else f"best trade-off (FAIL): {best.name}", best))
        shown += [(v.name, v) for v in variants if v.ok and not v.extra and v.flops == MACS_CAP and v is not best]
        out_dir = args.overlays or work / "overlays"
        print(f"overlays of {len(photos)} images in {out_dir}:")
        overlay_report = overlays(photos, [(t, v.artifact) for t, v in shown], out_dir, args.threads, truth, what)

    json_path = args.json or work / "results.json"
    write_json_atomic(json_path, {
        "model": str(args.model), "data": args.data, "images": count, "eval": eval_set.describe(), "rounds": args.rounds,
        "speedup_bar": args.speedup,
        "threads": args.threads, "timing_other_cpus": others, "baseline": {"miou": base.score["miou"], "p50_ms": base.bench.p50_ms},
        "eager_miou": {k: v["miou"] for k, v in eager.items()}, "rows": rows, "summary": summary,
        "bench": result.to_dict(), "overlays": overlay_report, "seconds": round(time.time() - started, 1)})
    print(f"wrote {json_path} ({time.time() - started:.0f} s in all)")


def main(argv: Optional[list[str]] = None) -> int:
    from edgeprune.core.errors import EdgepruneError

    sys.stdout.reconfigure(line_buffering=True)  # keep prints in order with the progress bars in a log
    try:
        run(parse_args(argv))
    except EdgepruneError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
