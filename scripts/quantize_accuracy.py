#!/usr/bin/env python
"""int8 (NNCF QDQ, `edgeprune quantize`) against fp32 on the real reference models (issue 24).

Classifiers (28x28 grey digits or clothes, 49 patch tokens + CLS), each unreduced and with ToMe at
0.6 MACs, exported at batch 1 and quantized on 300 calibration images (the command's default):
  * ``mit``: the pretrained MNIST ViT from outside the project (../shared/models/mnist_vit_mit, generic
    adapter); MNIST ships only its test split here, so calibration takes 300 of the 10000 test digits
    (seeded) and top-1 is given on all 10000 and on the 9700 others;
  * ``fashion``: models/fashion_vit; calibration on 300 train images, top-1 on the 10000 test images.
  Per plan: top-1 of fp32 (ONNX Runtime) and int8 (OpenVINO engine, and ONNX Runtime on the QDQ graph),
  the share of ToMe's token groups (merged / kept) that int8 picks as fp32 does, and batch-1 latency of
  ONNX Runtime fp32, OpenVINO fp32, OpenVINO int8 and ONNX Runtime int8, interleaved.
Segmenter: the CamVid model (models/camvid_seg) as the demo's engine set (tome, budgets 1.0/0.75/0.5/
0.35), quantized on 300 CamVid train frames; per budget on every CamVid test frame: pixel agreement
of int8 labels (OpenVINO, and ONNX Runtime) with fp32 labels (min and mean over frames), mIoU of both,
and latency as above.

Latency: every (plan, engine) is one session of :func:`edgeprune.core.timing.interleaved_times`;
sessions take turns in shuffled order, each visit idles ``--pause`` s, runs untimed settle calls for
``--settle`` s, then times one run (scripts/bench_openvino.py's hygiene); medians are reported.

    python scripts/quantize_accuracy.py                       # everything; writes docs/results/quantize.json
    python scripts/quantize_accuracy.py --limit 200 --rounds 10 --json /tmp/q.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
ENGINES = ("ort-fp32", "openvino-fp32", "openvino-int8", "ort-int8")
CAMVID_BUDGETS = (1.0, 0.75, 0.5, 0.35)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def classifier(name: str) -> tuple[Any, dict, Path, np.ndarray, np.ndarray, Optional[np.ndarray], str]:
    """(model, manifest info, calibration source, eval images, labels, indices of eval images outside the
    calibration (None: all are), description)."""
    from edgeprune.data.idx import load_idx_split
    from edgeprune.engines.quantize import DEFAULT_SAMPLES
    from edgeprune.engines.quantize_data import choose
    from edgeprune.families.loading import load_model

    if name == "mit":
        model, info = load_model(str(REPO / "specs" / "mnist_vit_mit.json"),
                                 checkpoint=SHARED / "models" / "mnist_vit_mit" / "vit_mnist_gpu.pt")
        images, labels = load_idx_split(SHARED / "data" / "mnist", "test")
        calibration = set(choose(len(images), DEFAULT_SAMPLES).tolist())  # what quantize picks from this file
        disjoint = np.array([i for i in range(len(images)) if i not in calibration])
        return model, info, SHARED / "data" / "mnist", images, labels, disjoint, "mnist_vit_mit (pretrained elsewhere), MNIST test"
    config = json.loads((REPO / "models" / "fashion_vit" / "config.json").read_text())
    model, info = load_model(config["timm_name"], checkpoint=REPO / "models" / "fashion_vit" / "model.safetensors",
                             model_args=config["model_args"])
    info["input"] = {"mean": [config["input"]["mean"]], "std": [config["input"]["std"]]}
    images, labels = load_idx_split(SHARED / "data" / "fashion-mnist", "test")
    return model, info, SHARED / "data" / "fashion-mnist", images, labels, None, "fashion_vit (trained here), Fashion-MNIST test"


def runners(fp32: Any, int8: Any, work: Path, threads: int) -> dict[str, Any]:
    """The four engines of one plan, active: ONNX Runtime on each graph, OpenVINO engines as built."""
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.backends.trt import BuilderSettings
    from edgeprune.engines.build import build_engine

    ov = {p: build_engine(a, "openvino", BuilderSettings(precision=p), work / f"{a.name}.openvino-{p}")
          for p, a in (("fp32", fp32), ("int8", int8))}
    made = {"ort-fp32": OrtRunner(fp32.onnx_path, ["cpu"], threads, spinning=True),
            "openvino-fp32": ov["fp32"].runner(threads), "openvino-int8": ov["int8"].runner(threads),
            "ort-int8": OrtRunner(int8.onnx_path, ["cpu"], threads, spinning=True)}
    for runner in made.values():
        runner.activate()
    made["_int8_layers"] = ov["int8"].manifest["engine"].get("int8_layers")
    return made


def group_agreement(fp32: Any, int8: Any, feeds: list[np.ndarray]) -> Optional[float]:
    """Share of the token groups (merged / kept per TopK ranking) the int8 graph picks as fp32 does."""
    import onnx
    import onnxruntime as ort

    from edgeprune.backends.precision import choice_agreement, with_choice_outputs

    reference, names = with_choice_outputs(onnx.load(str(fp32.onnx_path)))
    quantized, _ = with_choice_outputs(onnx.load(str(int8.onnx_path)))
    groups = [n for n in names if n.startswith("slice")]
    if not groups:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]) for m in (reference, quantized)]
    agree = []
    for x in feeds:
        a, b = (dict(zip(groups, s.run(groups, {"pixel_values": x}))) for s in sessions)
        agree += [choice_agreement(a[n], b[n]) for n in groups]
    return float(np.mean(agree))


def time_sessions(rows: list[dict[str, Any]], feeds: list[np.ndarray], args: argparse.Namespace) -> list[dict[str, float]]:
    """Median ms of every engine of every row, all interleaved in one run."""
    from edgeprune.core.timing import interleaved_times

    order = [(i, e) for i in range(len(rows)) for e in ENGINES]
    sessions = [[lambda r=rows[i]["runners"][e], f=feeds[i]: r.run_raw({"pixel_values": f})] for i, e in order]
    samples = interleaved_times(sessions, runs=args.rounds, warmup=5, settle_calls=2, settle_s=args.settle,
                                pause_s=args.pause, seed=1)
    medians: list[dict[str, float]] = [{} for _ in rows]
    for (i, engine), times in zip(order, samples):
        medians[i][engine] = round(statistics.median(times[0]), 4)
    return medians


def classifiers(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import edgeprune
    from edgeprune.engines.quantize import quantize_artifact
    from edgeprune.engines.quantize_data import input_spec, model_input
    from edgeprune.exporting.onnx_export import export

    report: dict[str, Any] = {}
    for name in args.models.split(","):
        model, info, calib, images, labels, disjoint, what = classifier(name)
        n = min(args.limit or len(images), len(images))
        images, labels = images[:n], labels[:n]
        rows = []
        for plan_name, plan in (("unreduced", edgeprune.build_plan(model, "none")),
                                ("tome 0.6", edgeprune.build_plan(model, "tome", flops=0.6))):
            say(f"{name} {plan_name}: export, quantize (300 calibration images), build")
            fp32 = export(model, plan, work / f"{name}-{plan.method}", model_info=info)
            int8 = quantize_artifact(fp32, calib, work / f"{name}-{plan.method}.int8")
            shape, mean, std = input_spec(fp32.manifest)
            feeds = [model_input(im, shape, mean, std) for im in images]
            run = runners(fp32, int8, work, args.threads)
            say(f"{name} {plan_name}: top-1 on {n} images")
            hits = {e: np.array([run[e].infer({"pixel_values": x})["logits"].argmax() for x in feeds]) == labels
                    for e in ("ort-fp32", "openvino-int8", "ort-int8")}
            row = {"plan": plan_name, "macs_ratio": round(plan.macs_ratio, 4),
                   "top1": {e: float(h.mean()) for e, h in hits.items()},
                   "int8_layers_openvino": run["_int8_layers"], "runners": run,
                   "check": int8.manifest["quantization"]["check"]["max_relative_error"]}
            if disjoint is not None:
                keep = disjoint[disjoint < n]
                row["top1_outside_calibration"] = {e: float(h[keep].mean()) for e, h in hits.items()}
            row["token_groups_same"] = group_agreement(fp32, int8, feeds) if plan.method != "none" else None
            row["feed"] = feeds[0]
            rows.append(row)
        say(f"{name}: timing {len(rows) * len(ENGINES)} sessions interleaved, {args.rounds} rounds")
        for row, medians in zip(rows, time_sessions(rows, [r.pop("feed") for r in rows], args)):
            row["p50_ms"] = medians
            for runner in (v for k, v in row.pop("runners").items() if not k.startswith("_")):
                runner.deactivate()
        report[name] = {"what": what, "images": n, "calibration": str(calib), "rows": rows}
    return report


def camvid(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edgeprune.artifacts.engine_set import load_engine_set
    from edgeprune.data import camvid as camvid_data
    from edgeprune.engines.quantize import quantize_set
    from edgeprune.exporting.engine_set import export_engine_set
    from edgeprune.families.loading import load_model
    from edgeprune.imaging.evaluation import confusion, iou_report, normalize
    from edgeprune.imaging.images import upsample_argmax
    from edgeprune.measure.seg_eval import EvalSet, camvid_frames, segmentation_input

    say("camvid: exporting the engine set (tome, budgets 1.0/0.75/0.5/0.35)")
    net, info = load_model(str(REPO / "models" / "camvid_seg"))
    export_engine_set(net, "tome", CAMVID_BUDGETS, work / "camvid", model_info=info)
    fp32_set = load_engine_set(work / "camvid")
    say("camvid: quantizing every member on 300 CamVid train frames")
    int8_set = quantize_set(fp32_set, camvid_data.default_root() / "train" / "images", work / "camvid.int8")
    spec = segmentation_input(fp32_set.members[0].artifact, EvalSet("camvid", None, "test"))
    _, h, w = (int(v) for v in spec["size"])
    images, labels = camvid_frames("test", args.limit, h, w)
    k = len(camvid_data.CLASSES)
    rows = []
    for fp32_member, int8_member in zip(fp32_set.members, int8_set.members):
        say(f"camvid {fp32_member.path}: {len(images)} test frames through four engines")
        run = runners(fp32_member.artifact, int8_member.artifact, work, args.threads)
        conf = {e: np.zeros((k, k), np.int64) for e in ("ort-fp32", "openvino-int8", "ort-int8")}
        agree: dict[str, list[float]] = {"openvino-int8": [], "ort-int8": []}
        for image, label in zip(images, labels):
            x = normalize(image[None], spec["mean"], spec["std"])
            pred = {e: upsample_argmax(run[e].infer({"pixel_values": x})["logits"][0], *label.shape) for e in conf}
            for e in conf:
                conf[e] += confusion(label, pred[e], k)
            for e in agree:
                agree[e].append(float(np.mean(pred[e] == pred["ort-fp32"])))
        rows.append({"member": fp32_member.path, "budget": fp32_member.budget, "macs_ratio": fp32_member.macs_ratio,
                     "pixel_agreement": {e: {"min": min(v), "mean": float(np.mean(v))} for e, v in agree.items()},
                     "miou": {e: iou_report(c, camvid_data.CLASSES)["miou"] for e, c in conf.items()},
                     "int8_layers_openvino": run["_int8_layers"], "runners": run,
                     "feed": normalize(images[:1], spec["mean"], spec["std"])})
    say(f"camvid: timing {len(rows) * len(ENGINES)} sessions interleaved, {args.seg_rounds} rounds")
    timing_args = argparse.Namespace(**{**vars(args), "rounds": args.seg_rounds})
    for row, medians in zip(rows, time_sessions(rows, [r.pop("feed") for r in rows], timing_args)):
        row["p50_ms"] = medians
        for runner in (v for key, v in row.pop("runners").items() if not key.startswith("_")):
            runner.deactivate()
    return {"what": "models/camvid_seg engine set (tome), CamVid test split, labels at 180x240",
            "frames": len(images), "rows": rows}


def print_report(report: dict[str, Any]) -> None:
    print(f"\nint8 (NNCF QDQ, overflow fix on every layer) vs fp32, batch 1, {report['threads']} threads, "
          f"{report['rounds']} interleaved rounds; CPU: {report['cpu']}")
    head = "".join(f"{e:>15s}" for e in ENGINES)
    for name, model in report.get("classifiers", {}).items():
        print(f"\n{model['what']} ({model['images']} images)")
        extra = "  top-1 outside calibration (fp32/ov-int8)" if "top1_outside_calibration" in model["rows"][0] else ""
        print(f"{'plan':<11}{'MACs':>6} {'fp32':>7} {'ov-int8':>8} {'ort-int8':>9} {'groups':>7}  p50 ms:{head}{extra}")
        for r in model["rows"]:
            t, p = r["top1"], r["p50_ms"]
            groups = f"{100 * r['token_groups_same']:.1f}%" if r["token_groups_same"] is not None else "-"
            outside = r.get("top1_outside_calibration")
            tail = f"  {outside['ort-fp32']:.4f}/{outside['openvino-int8']:.4f}" if outside else ""
            print(f"{r['plan']:<11}{r['macs_ratio']:>6.3f} {t['ort-fp32']:>7.4f} {t['openvino-int8']:>8.4f} {t['ort-int8']:>9.4f} "
                  f"{groups:>7}        " + "".join(f"{p[e]:>15.3f}" for e in ENGINES) + tail)
    seg = report.get("camvid")
    if seg:
        print(f"\n{seg['what']}: {seg['frames']} frames")
        print(f"{'budget':<7}{'MACs':>6}  {'agree ov-int8 min/mean':>23} {'agree ort-int8 min/mean':>24}  "
              f"{'mIoU fp32':>9} {'ov-int8':>8} {'ort-int8':>9}  p50 ms:{head}")
        for r in seg["rows"]:
            a, m, p = r["pixel_agreement"], r["miou"], r["p50_ms"]
            print(f"{r['budget']:<7g}{r['macs_ratio']:>6.3f}  {100 * a['openvino-int8']['min']:>10.2f}/{100 * a['openvino-int8']['mean']:.2f}% "
                  f"{100 * a['ort-int8']['min']:>11.2f}/{100 * a['ort-int8']['mean']:.2f}%  {m['ort-fp32']:>9.4f} "
                  f"{m['openvino-int8']:>8.4f} {m['ort-int8']:>9.4f}        " + "".join(f"{p[e]:>15.3f}" for e in ENGINES))


def main() -> int:
    from edgeprune.backends.openvino import device_name
    from edgeprune.core.files import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mit,fashion", help="classifiers: mit, fashion (empty: none)")
    ap.add_argument("--no-camvid", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N images / frames only (debugging)")
    ap.add_argument("--rounds", type=int, default=100, help="interleaved timing rounds, classifiers")
    ap.add_argument("--seg-rounds", type=int, default=30, help="interleaved timing rounds, segmenter")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.05)
    ap.add_argument("--settle", type=float, default=0.05)
    ap.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "quantize.json")
    args = ap.parse_args()
    started = time.perf_counter()
    report: dict[str, Any] = {"command": "python scripts/quantize_accuracy.py " + " ".join(sys.argv[1:]),
                              "cpu": device_name("CPU"), "threads": args.threads, "rounds": args.rounds,
                              "seg_rounds": args.seg_rounds, "limit": args.limit}
    with tempfile.TemporaryDirectory(prefix="edgeprune-quantize-") as tmp:
        if args.models:
            report["classifiers"] = classifiers(args, Path(tmp))
        if not args.no_camvid:
            report["camvid"] = camvid(args, Path(tmp))
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_report(report)
    write_json_atomic(args.json, report, indent=1, mkdir=True)
    say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
