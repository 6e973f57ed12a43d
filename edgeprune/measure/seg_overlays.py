"""Overlay figures for the segmentation benchmark: an image, its ground truth when there is one, the
unreduced model's labels and each reduced plan's, with agreement figures (used by bench_segmentation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np


def find_images(root: Path) -> list[Path]:
    """Photos under cityscapes/ and voc/; their label maps (gtFine_*, *_target) are skipped (see LICENSES.md)."""
    found = []
    for sub in ("cityscapes", "voc"):
        for p in sorted((root / sub).glob("*")):
            label = "_gtFine_" in p.name or p.stem.endswith(("_target", "_label", "_labels", "_mask"))
            if p.suffix.lower() in (".png", ".jpg", ".jpeg") and not label:
                found.append(p)
    return found


def overlays(photos: dict[str, np.ndarray], shown: list[tuple[str, Any]], out_dir: Path, threads: int,
             truth: Optional[dict[str, np.ndarray]] = None, what: str = "") -> list[dict]:
    """One PNG per image: the image, its ground truth (when given), the baseline's overlay and each
    reduced plan's, with pixel agreement to the baseline (and pixel accuracy against the truth).
    ``shown``: (title, artifact) pairs, the baseline first."""
    from edgeprune.backends.runners import make_runner
    from edgeprune.imaging.evaluation import normalize
    from edgeprune.imaging.images import overlay, palette_array, resize_rgb, upsample_argmax
    from edgeprune.measure.plotting import plot_panels

    out_dir.mkdir(parents=True, exist_ok=True)
    info = shown[0][1].manifest["model"]
    palette = palette_array(info.get("palette"), info["num_classes"])
    ignore = int(info.get("ignore_index", info["num_classes"]))
    _, h, w = info["input"]["size"]
    labels: dict[str, dict[str, np.ndarray]] = {}
    for title, artifact in shown:
        with make_runner(artifact.onnx_path, threads=threads) as runner:
            for name, img in photos.items():
                x = normalize(resize_rgb(img, h, w)[None], info["input"]["mean"], info["input"]["std"])
                logits = next(iter(runner.infer({"pixel_values": x}).values()))[0]
                labels.setdefault(title, {})[name] = upsample_argmax(logits, *img.shape[:2])
    report = []
    base_title = shown[0][0]
    for name, img in photos.items():
        base = labels[base_title][name]
        agree = {t: float((labels[t][name] == base).mean()) for t, _ in shown[1:]}
        panels = [(name, img)]
        entry: dict[str, Any] = {"image": name, "agreement": agree}
        if truth is not None:
            gt = truth[name]
            valid = gt != ignore
            panels.append(("ground truth (unlabelled: black)", overlay(img, np.where(valid, gt, 0), palette) * valid[..., None]))
            entry["pixel_accuracy"] = {t: float((labels[t][name][valid] == gt[valid]).mean()) for t, _ in shown}
        panels.append((base_title, overlay(img, base, palette)))
        panels += [(f"{t}\nagrees {100 * agree[t]:.1f}%", overlay(img, labels[t][name], palette)) for t, _ in shown[1:]]
        target = out_dir / f"{Path(name).stem.replace('/', '_')}.png"
        plot_panels(panels, target, title=what,
                    legend=list(zip(info.get("classes") or map(str, range(len(palette))), palette.tolist())))
        print(f"  {name}: pixel agreement with the baseline: " + " | ".join(f"{t} {100 * a:.1f}%" for t, a in agree.items()))
        report.append({**entry, "png": str(target)})
    return report


def overlay_inputs(data: str, photos: Path, frames: int) -> tuple[dict[str, np.ndarray], Optional[dict[str, np.ndarray]], str]:
    """The images to draw: ``frames`` evenly spaced CamVid test frames with labels (``data`` "camvid"),
    or the photos under ``photos``."""
    from edgeprune.imaging.images import read_rgb

    if data == "camvid":
        from edgeprune.data import camvid

        images, labels, names = camvid.load_split("test")
        picks = np.linspace(0, len(names) - 1, frames).round().astype(int).tolist()
        return ({f"camvid/test/{names[i]}.png": images[i] for i in picks},
                {f"camvid/test/{names[i]}.png": labels[i] for i in picks},
                "CamVid test frame: ground truth, unreduced model, reduced plans")
    images = find_images(photos) if photos.is_dir() else []
    return ({f"{p.parent.name}/{p.name}": read_rgb(p) for p in images}, None,
            "scene segmenter (trained on synthetic scenes) on a real photo: reduced vs baseline")
