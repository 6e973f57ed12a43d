"""How long ``edgeprune tune`` takes on a 12-block ViT-S/16 @224 with 1000 calibration images, that
an interrupted search resumes from its cache, and how close the tuned plan's measured speedup
(interleaved, ONNX Runtime CPU, batch 1) comes to the latency target it was tuned for.

The calibration folder is real images: the 701 CamVid frames plus frames sampled evenly from the
shared video clips, written once to ``--work``. ViT-S weights are random (no pretrained weights are
reachable here); the time does not depend on them, the search's choices do.

    python scripts/bench_tune_vits.py --work /tmp/tunebench                 # one full run, timed
    python scripts/bench_tune_vits.py --work /tmp/tunebench --interrupt 180 # stop after 180 s, rerun
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def calibration_folder(folder: Path, count: int) -> Path:
    """``count`` real images: CamVid first, then evenly spaced video frames."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("*.png"))
    if len(have) >= count:
        return folder
    camvid = sorted((SHARED / "camvid").glob("*/images/*.png"))[:count]
    for path in camvid:
        target = folder / f"camvid_{path.stem}.png"
        if not target.exists():
            target.symlink_to(path.resolve())
    videos = sorted((SHARED / "video").glob("*.mp4"))
    need = count - len(camvid)
    per_video = -(-need // len(videos)) if need > 0 else 0
    written = 0
    for video in videos:
        cap = cv2.VideoCapture(str(video))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 1
        for j in range(per_video):
            if written >= need:
                break
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(j * total / per_video))
            ok, frame = cap.read()
            if ok:
                cv2.imwrite(str(folder / f"{video.stem}_{j:04d}.png"), frame)
                written += 1
        cap.release()
    return folder


def weights(work: Path) -> Path:
    """Random ViT-S weights drawn once and saved: tune's cache is keyed by the weights, so a resumed
    run must load the same ones (a model created without a checkpoint is new random weights each time)."""
    import timm
    import torch
    from safetensors.torch import save_file

    path = work / "vit_small_random.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch16_224", pretrained=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def run_tune(calib: Path, out: Path, cache: Path, latency: float, budget: float, interrupt: float | None) -> tuple[float, int, str]:
    cmd = [sys.executable, "-m", "edgeprune.cli.main", "tune", "vit_small_patch16_224", "--checkpoint", str(weights(out.parent)),
           "--calib", str(calib),
           "--calib-count", "1000", "--holdout", "0", "--latency", str(latency), "--out", str(out), "--force",
           "--cache-dir", str(cache), "--budget-minutes", str(budget)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, COLUMNS="160"))
    try:
        output, _ = proc.communicate(timeout=interrupt)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        output, _ = proc.communicate()
    return time.perf_counter() - started, proc.returncode, output


def measure(work: Path, latency: float, rounds: int = 40) -> dict:
    """Export the tuned plan and the unreduced model (batch 1) and time them interleaved."""
    import timm

    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.measure.bench import benchmark
    from edgeprune.exporting.onnx_export import export
    from edgeprune.plan.token_plan import TokenPlan
    from edgeprune import build_plan

    from edgeprune.families.weights import apply_state_dict, read_state_dict

    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    apply_state_dict(model, read_state_dict(weights(work)), "random ViT-S weights")
    plan = TokenPlan.from_dict(json.loads((work / "plan.json").read_text()))
    arts = [export(model, build_plan(model, "none"), work / "none", overwrite=True),
            export(model, plan, work / "tuned", overwrite=True)]
    result = benchmark([load_artifact(a.path) for a in arts], rounds=rounds)
    tuned = result.rows[1]
    return {"asked_speedup": round(1 / latency, 4), "predicted_latency_ratio": plan.target.get("predicted_latency_ratio"),
            "measured_speedup": round(tuned.speedup, 4), "off_by": round(tuned.speedup * latency - 1, 4),
            "p50_ms": {"unreduced": round(result.rows[0].p50_ms, 3), "tuned": round(tuned.p50_ms, 3)},
            "plan": {"method": plan.method, "options": plan.options, "keep": list(plan.keep), "macs_ratio": round(plan.macs_ratio, 4),
                     "prefix_only_last": plan.prefix_only_last}, "rounds": rounds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--latency", type=float, default=0.6, help="latency ratio target of the tune")
    ap.add_argument("--budget-minutes", type=float, default=12.0)
    ap.add_argument("--interrupt", type=float, help="stop the first run after this many seconds, then rerun")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    calib = calibration_folder(args.work / "calib", 1000)
    cache = args.work / "cache"
    report = {"command": "python scripts/bench_tune_vits.py " + " ".join(sys.argv[1:]), "runs": []}
    for attempt, interrupt in enumerate([args.interrupt, None] if args.interrupt else [None]):
        seconds, rc, output = run_tune(calib, args.work / "plan.json", cache, args.latency, args.budget_minutes, interrupt)
        print(output)
        print(f"run {attempt + 1}: exit {rc}, {seconds:.1f} s{' (interrupted)' if interrupt else ''}", flush=True)
        report["runs"].append({"seconds": round(seconds, 1), "exit": rc, "interrupted_after": interrupt, "tail": output[-3000:]})
    report["speed"] = measure(args.work, args.latency)
    print(json.dumps(report["speed"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
