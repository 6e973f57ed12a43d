#!/usr/bin/env python
"""Temporal token reuse (STA): quality on labelled frame sequences, speed and agreement on the real clips.

1. Exports the segmenter twice into --work (reused when present): the plain model (the
   per-frame baseline) and a temporal artifact per --recompute share (refresh + update graphs).
2. Labelled sequences: with ``--data scenes`` (default, the scenes model) generated static-camera
   clips (``edgeprune.data.make_clip``, --clips seeds x --frames); with ``--data camvid`` (the
   CamVid model) the CamVid test sequences, frames in time order (one labelled frame per second
   of the drive, so consecutive frames differ a lot). Every frame runs through the full model and
   through ``TemporalRuntime``; mIoU of each against the labels, their ratio, the agreement mIoU
   (temporal scored against the full model's own labels) and the share of patches recomputed
   (refreshes count as 100%).
3. Real clips (``../shared/data/video`` or --videos): per frame, the full model and the temporal
   runtime run back to back in alternating order; the median of per-frame time ratios (whole
   step: resize, normalise, change signal, engine, argmax; and the engine alone), the recomputed
   share, the frames by graph (refreshes by reason), and pixel agreement with the full model.

    python scripts/bench_temporal.py [--work out/temporal_bench] [--recompute 0.4] [--threads 2]
    python scripts/bench_temporal.py --data camvid --recompute 0.25,0.4,0.6 --work out/temporal_camvid
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = REPO.parent / "shared" / "data" / "video"


class FullModel:
    """The per-frame baseline, run the way the runtime runs engines (no intra-op spinning)."""

    def __init__(self, artifact, threads: int) -> None:
        from edgeprune.backends.ort import OrtRunner

        self.info = artifact.manifest["model"]["input"]
        self.size = artifact.input_shape()[-2:]
        self.runner = OrtRunner(artifact.onnx_path, threads=threads, spinning=False).activate()

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        from edgeprune.imaging.evaluation import normalize
        from edgeprune.imaging.images import resize_rgb
        from edgeprune.runtime.runtime import labels_of

        h, w = self.size
        small = frame if frame.shape[:2] == (h, w) else resize_rgb(frame, h, w)
        feed = {"pixel_values": normalize(small[None], self.info["mean"], self.info["std"])}
        t0 = time.perf_counter()
        logits = self.runner.infer(feed)["logits"]
        self.engine_ms = (time.perf_counter() - t0) * 1e3
        return labels_of(logits)


def artifacts(work: Path, share: float, model_dir: Path):
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.exporting.onnx_export import export
    from edgeprune.exporting.temporal import export_temporal
    from edgeprune.families.timm_seg import load_segmenter
    from edgeprune import build_plan
    from edgeprune.runtime.temporal import is_temporal, load_temporal

    model = load_segmenter(model_dir)
    full_dir, temporal_dir = work / "full", work / f"temporal_{share:g}"
    if not (full_dir / "manifest.json").is_file():
        print(f"exporting the full model to {full_dir} ...", flush=True)
        export(model, build_plan(model, "none"), full_dir, overwrite=True)
    if not is_temporal(temporal_dir):
        print(f"exporting the temporal artifact ({share:g} of the patches) to {temporal_dir} ...", flush=True)
        export_temporal(model, share, temporal_dir, overwrite=True)
    return model, load_artifact(full_dir), load_temporal(temporal_dir)


def generated_sequences(seeds: list[int], frames: int, h: int, w: int):
    """(stream name, frames, labels) of generated static-camera clips."""
    from edgeprune.data import SceneConfig, make_clip

    for seed in seeds:
        clip, labels = make_clip(seed, frames, SceneConfig(height=h, width=w))
        yield f"seed{seed}", clip, labels


def camvid_sequences():
    """(sequence name, frames, labels) of the CamVid test split, frames in time order."""
    from edgeprune.data import camvid

    images, labels, names = camvid.load_split("test")
    for seq, idx in camvid.sequences(names).items():
        yield seq, images[idx], labels[idx]


def quality(full: FullModel, runtime, model, sequences) -> dict:
    from edgeprune.imaging.evaluation import confusion, iou_report

    k = model.num_classes
    conf_full, conf_temp, conf_agree = (np.zeros((k, k), np.int64) for _ in range(3))
    shares, reasons, engine_ratio = [], Counter(), []
    names = []
    for stream, clip, labels in sequences:
        names.append(stream)
        for frame, label in zip(clip, labels):
            ref = full(frame)
            r = runtime.infer(frame, stream=stream)
            r_labels = r.labels
            conf_full += confusion(label, ref, k)
            conf_temp += confusion(label, r_labels, k)
            conf_agree += confusion(ref, r_labels, k)
            engine_ratio.append(full.engine_ms / r.engine_ms)
            shares.append(r.recomputed)
            reasons[r.reason.split(" ")[0] or "update"] += 1
    m_full, m_temp = iou_report(conf_full)["miou"], iou_report(conf_temp)["miou"]
    return {"clips": len(names), "sequences": names, "frames": len(shares), "miou_full": m_full, "miou_temporal": m_temp,
            "miou_kept": m_temp / m_full, "agreement_miou": iou_report(conf_agree)["miou"],
            "recomputed_share": float(np.mean(shares)), "frames_by_graph": dict(reasons),
            "engine_speedup": float(np.median(engine_ratio))}


def real_clip(path: Path, full: FullModel, runtime, max_frames: int) -> dict:
    from edgeprune.video import open_video

    t_full, t_temp, shares, agree, reasons, engine = [], [], [], [], Counter(), []
    with open_video(path) as video:
        for i, frame in enumerate(video):
            if i >= max_frames:
                break
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for which in order:
                t0 = time.perf_counter()
                if which == 0:
                    ref = full(frame)
                    t_full.append(time.perf_counter() - t0)
                else:
                    r = runtime.infer(frame, stream=path.name)
                    t_temp.append(time.perf_counter() - t0)
            shares.append(r.recomputed)
            engine.append(full.engine_ms / r.engine_ms)
            agree.append(float((r.labels == ref).mean()))
            reasons[r.reason.split(" ")[0] or "update"] += 1
    ratio = np.array(t_full) / np.array(t_temp)
    return {"clip": path.name, "frames": len(shares), "full_ms": 1e3 * float(np.median(t_full)),
            "temporal_ms": 1e3 * float(np.median(t_temp)), "speedup": float(np.median(ratio)),
            "speedup_iqr": [float(np.percentile(ratio, 25)), float(np.percentile(ratio, 75))],
            "engine_speedup": float(np.median(engine)),
            "recomputed_share": float(np.mean(shares)), "agreement": float(np.mean(agree)), "frames_by_graph": dict(reasons)}


def main(argv: list[str] | None = None) -> int:
    from edgeprune.runtime.temporal import DEFAULT_DRIFT_THRESHOLD, DEFAULT_REFRESH_EVERY, TemporalRuntime

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("out/temporal_bench"))
    ap.add_argument("--data", choices=("scenes", "camvid"), default="scenes",
                    help="labelled sequences: generated static-camera clips (scenes model) or the CamVid test sequences")
    ap.add_argument("--model", type=Path, help="segmenter folder (default: models/scene_seg or models/camvid_seg)")
    ap.add_argument("--recompute", default="0.4", help="share(s) of patches the update graph recomputes, comma-separated")
    ap.add_argument("--clips", type=int, default=4, help="generated static-camera clips (seeds 0..N-1)")
    ap.add_argument("--frames", type=int, default=150, help="frames per generated clip")
    ap.add_argument("--videos", type=Path, nargs="*", default=None, help=f"real clips (default: {DEFAULT_VIDEOS})")
    ap.add_argument("--video-frames", type=int, default=300)
    ap.add_argument("--refresh-every", type=int, default=DEFAULT_REFRESH_EVERY)
    ap.add_argument("--drift-threshold", default=str(DEFAULT_DRIFT_THRESHOLD),
                    help="refresh when the stale patches' mean change passes this; comma-separated values are swept")
    ap.add_argument("--speedup", type=float, default=1.3, help="engine speedup the summary looks for (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="default <work>/results_<shares>.json")
    args = ap.parse_args(argv)
    try:
        shares = [float(t) for t in args.recompute.split(",") if t.strip()]
        drifts = [float(t) for t in args.drift_threshold.split(",") if t.strip()]
    except ValueError:
        ap.error("--recompute and --drift-threshold expect comma-separated numbers")
    model_dir = args.model or REPO / "models" / ("camvid_seg" if args.data == "camvid" else "scene_seg")
    args.work.mkdir(parents=True, exist_ok=True)
    videos = args.videos if args.videos is not None else sorted(DEFAULT_VIDEOS.glob("*.mp4"))
    results, ok_all = [], True
    for share, drift in [(s_, d) for s_ in shares for d in drifts]:
        settings = dict(threads=args.threads, refresh_every=args.refresh_every, drift_threshold=drift)
        model, full_artifact, temporal = artifacts(args.work, share, model_dir)
        full = FullModel(full_artifact, args.threads)
        print(f"\n== {model_dir.name}: update graph recomputes {temporal.recompute} of {temporal.patches} patches "
              f"({share:g}); refresh every {args.refresh_every} frames or when drift > {drift:g}", flush=True)
        h, w = temporal.input_shape[-2:]
        sequences = (camvid_sequences() if args.data == "camvid"
                     else generated_sequences(list(range(args.clips)), args.frames, h, w))
        with TemporalRuntime(temporal, **settings) as runtime:
            q = quality(full, runtime, model, sequences)
        what = "CamVid test sequences" if args.data == "camvid" else f"static-camera clips ({args.frames} frames each)"
        print(f"{what} ({q['clips']} sequences, {q['frames']} frames): mIoU full {q['miou_full']:.4f}, temporal "
              f"{q['miou_temporal']:.4f} = {q['miou_kept']:.1%} kept; agreement mIoU {q['agreement_miou']:.4f}; "
              f"patches recomputed {q['recomputed_share']:.1%} on average; engine speedup {q['engine_speedup']:.2f}x "
              f"(median per frame); frames by graph {q['frames_by_graph']}")
        if args.data == "scenes":
            ok = q["recomputed_share"] <= 0.5 and q["miou_kept"] >= 0.97
            ok_all &= ok
            print(f"acceptance (recomputed <= 50%, mIoU kept >= 97%): {'PASS' if ok else 'FAIL'}")
        rows = []
        if videos:
            print(f"\n{'clip':28s} {'frames':>6s} {'full ms':>8s} {'temp ms':>8s} {'speedup':>8s} {'IQR':>10s} {'engine':>7s} "
                  f"{'recomp':>7s} {'agree':>7s}  frames by graph")
        for path in videos:
            with TemporalRuntime(temporal, **settings) as runtime:
                r = real_clip(Path(path), full, runtime, args.video_frames)
            rows.append(r)
            print(f"{r['clip']:28s} {r['frames']:6d} {r['full_ms']:8.2f} {r['temporal_ms']:8.2f} {r['speedup']:7.2f}x "
                  f"{r['speedup_iqr'][0]:4.2f}-{r['speedup_iqr'][1]:4.2f} {r['engine_speedup']:6.2f}x {r['recomputed_share']:7.1%} {r['agreement']:7.1%}  "
                  f"{r['frames_by_graph']}", flush=True)
        full.runner.deactivate()
        results.append({"share": share, "drift_threshold": drift, "recompute": temporal.recompute,
                        "patches": temporal.patches, "sequences": q, "real_clips": rows})
    print(f"\nsummary over the real clips (engine speedup >= {args.speedup}x marks the usable settings):")
    for res in results:
        rows = res["real_clips"]
        if not rows:
            continue
        eng = float(np.median([r["engine_speedup"] for r in rows]))
        agree = float(np.mean([r["agreement"] for r in rows]))
        recomp = float(np.mean([r["recomputed_share"] for r in rows]))
        whole = float(np.median([r["speedup"] for r in rows]))
        res["summary"] = {"engine_speedup_median": eng, "agreement_mean": agree, "recomputed_mean": recomp,
                          "step_speedup_median": whole, "meets_speedup": eng >= args.speedup}
        print(f"  recompute {res['share']:g}, drift {res['drift_threshold']:g}: engine {eng:.2f}x, whole step {whole:.2f}x, patches recomputed {recomp:.1%}, "
              f"pixel agreement with the full model {agree:.1%}, sequences mIoU kept {res['sequences']['miou_kept']:.1%}"
              + ("  <- meets the speedup" if eng >= args.speedup else ""))
    out = args.json or args.work / f"results_{'_'.join(f'{s:g}' for s in shares)}.json"
    out.write_text(json.dumps({"model": str(model_dir), "data": args.data,
                               "settings": {"threads": args.threads, "refresh_every": args.refresh_every,
                                            "recompute": shares, "drift_threshold": drifts},
                               "results": results}, indent=1))
    print(f"wrote {out}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
