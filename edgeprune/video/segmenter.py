"""A segmenter to run frame by frame or image by image: an exported artifact (ONNX Runtime or OpenVINO,
:func:`edgeprune.backends.runners.make_runner`) or a segmenter folder (PyTorch), behind one batch -> logits
function with its classes and palette."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgeprune.artifacts.artifact import load_artifact
from edgeprune.core.console import console
from edgeprune.core.errors import EdgepruneError
from edgeprune.imaging.evaluation import normalize
from edgeprune.imaging.images import palette_array, resize_rgb

FAMILY = "timm-vit-seg"


@dataclass
class Segmenter:
    """What the command needs from either kind of model: metadata and a batch -> logits function."""

    kind: str  # "pytorch", "onnxruntime" or "openvino"
    classes: list[str]
    palette: np.ndarray
    mean: list[float]
    std: list[float]
    size: tuple[int, int]  # model input (H, W)
    batch: Optional[int]  # static batch of the graph; None when any batch works
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    close: Callable[[], None] = field(repr=False, default=lambda: None)
    provider: str = "pytorch"  # what runs it: ONNX Runtime's provider, "OpenVINO CPU f32", or pytorch
    engine: Any = None  # the EngineChoice of an artifact
    engine_reason: str = ""  # why --provider auto picked it


def prepare_batch(originals: list[np.ndarray], net: Segmenter) -> np.ndarray:
    batch = np.stack([resize_rgb(im, *net.size) for im in originals])
    if net.batch and len(batch) < net.batch:  # a static graph takes exactly its batch: repeat the last image
        batch = np.concatenate([batch, np.repeat(batch[-1:], net.batch - len(batch), 0)])
    return np.ascontiguousarray(normalize(batch, net.mean, net.std))


def load_segmenter_model(folder: Path, threads: int, provider: str, precision: Optional[str] = None,
                         device: Optional[str] = None) -> Segmenter:
    if not folder.is_dir():
        raise EdgepruneError(f"--model {folder}: no such directory")
    if (folder / "manifest.json").is_file():
        return load_artifact_segmenter(folder, threads, provider, precision, device)
    if (folder / "config.json").is_file():
        if precision is not None or device is not None:
            raise EdgepruneError("--precision and --device apply to exported artifacts run by OpenVINO; a segmenter "
                                 "folder runs in PyTorch on the CPU")
        return load_eager(folder, threads, provider)
    raise EdgepruneError(
        f"--model {folder} has neither config.json (a segmenter folder) nor manifest.json (an exported artifact)")


def _metadata(source: str, info: dict[str, Any], num_classes: int) -> dict[str, Any]:
    spec = info.get("input") or {}
    if not (isinstance(spec, dict) and len(spec.get("mean") or []) == 3 and len(spec.get("std") or []) == 3):
        raise EdgepruneError(f"{source} does not record the input mean/std (input.mean, input.std) needed to normalise images")
    classes = info.get("classes")
    if not isinstance(classes, list) or len(classes) != num_classes:
        classes = [str(k) for k in range(num_classes)]
    return dict(classes=[str(c) for c in classes], palette=palette_array(info.get("palette"), num_classes),
                mean=[float(v) for v in spec["mean"]], std=[float(v) for v in spec["std"]])


def _check_channels(source: str, channels: Any) -> None:
    if channels != 3:
        raise EdgepruneError(f"{source} expects {channels}-channel input; segment handles 3-channel RGB models only")


def load_eager(folder: Path, threads: int, provider: str) -> Segmenter:
    # A segmenter folder runs eagerly in PyTorch: deferred on purpose, as only this path needs the export extra.
    from edgeprune.core.extras import require_extra

    require_extra("export", "running a segmenter folder (config.json) in PyTorch")
    import torch

    from edgeprune.families.timm_seg import load_segmenter, read_segmenter_config

    read_segmenter_config(folder)  # a folder of another family fails here, naming its family
    if provider.lower() not in ("cpu", "auto"):  # auto: PyTorch is the only engine of a segmenter folder
        raise EdgepruneError("--provider applies to exported artifacts; a segmenter folder runs in PyTorch on the CPU")
    with console.status("loading model"):
        net = load_segmenter(folder)
    meta = _metadata(f"{folder}/config.json", net.info, net.num_classes)
    c, h, w = (net.info.get("input") or {}).get("size") or (3, *net.backbone.patch_embed.img_size)
    _check_channels(str(folder), c)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(pixels)).numpy()

    return Segmenter("pytorch", size=(int(h), int(w)), batch=None, run=run,
                     close=lambda: torch.set_num_threads(previous), **meta)


def load_artifact_segmenter(folder: Path, threads: int, provider: str, precision: Optional[str] = None,
                            device: Optional[str] = None) -> Segmenter:
    from edgeprune.backends.runners import make_runner, runner_label
    from edgeprune.measure.calibrate import resolve_engine

    engine, reason = resolve_engine(None, provider, precision, device)  # bad names fail before the model loads
    artifact = load_artifact(folder)
    info = artifact.manifest["model"] if isinstance(artifact.manifest["model"], dict) else {}
    family = info.get("family")
    if family != FAMILY:
        raise EdgepruneError(f"--model {folder} is an artifact of a {family or 'unknown'} model, not a {FAMILY} segmenter")
    meta = _metadata(f"{folder}/manifest.json", info, int(info.get("num_classes") or len(info.get("classes") or [])))
    spec = artifact.manifest["inputs"][0]
    shape = list(spec["shape"])
    _check_channels(str(folder), shape[1])
    static = shape[0] if isinstance(shape[0], int) else None
    runner = make_runner(artifact.onnx_path, engine, threads)
    with console.status("loading model"):
        runner.activate()
    name = spec.get("name", "pixel_values")

    def run(pixels: np.ndarray) -> np.ndarray:
        return next(iter(runner.infer({name: pixels}).values()))

    return Segmenter("openvino" if engine.is_openvino else "onnxruntime", size=(int(shape[2]), int(shape[3])),
                     batch=static, run=run, close=runner.deactivate, provider=runner_label(runner), engine=engine,
                     engine_reason=reason, **meta)
