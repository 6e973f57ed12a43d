"""mIoU of segmentation artifacts and eager models on the held-out procedural scenes.

The CLI (``edgeprune bench --eval``) and the benchmark scripts score ONNX artifacts and eager
PyTorch modules on the same seeds with the same confusion-matrix metric, so their numbers can be
compared directly (an eager-vs-ONNX gap means an export problem, not a data difference).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np

from edgeprune.artifact import Artifact
from edgeprune.errors import EdgepruneError

SEG_FAMILY = "timm-vit-seg"
DEFAULT_SCENES = 200
DYNAMIC_EVAL_BATCH = 25
Progress = Optional[Callable[[int, int], None]]


def parse_eval_spec(spec: str) -> int:
    """``scenes`` or ``scenes:N`` -> the number of held-out scenes; anything else is a user error."""
    from edgeprune.data import HELDOUT_SEEDS

    name, sep, count = spec.strip().partition(":")
    if name != "scenes":
        raise EdgepruneError(f"--eval {spec!r}: unknown evaluation (use 'scenes' or 'scenes:N')")
    if not sep:
        return DEFAULT_SCENES
    try:
        n = int(count)
    except ValueError:
        n = 0
    if not 1 <= n <= len(HELDOUT_SEEDS):
        raise EdgepruneError(f"--eval {spec!r}: N must be an integer in 1..{len(HELDOUT_SEEDS)}")
    return n


def seeds_label(n: int) -> str:
    from edgeprune.data import HELDOUT_SEEDS

    seeds = HELDOUT_SEEDS[:n]
    return f"HELDOUT_SEEDS[:{n}] = range({seeds.start}, {seeds.stop})"


@functools.lru_cache(maxsize=2)
def heldout_scenes(n: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, H, W, 3] and labels [n, H, W]; cached because every artifact of a run sees the same scenes."""
    from edgeprune.data import HELDOUT_SEEDS, SceneConfig, scene_batch

    try:
        config = SceneConfig(height=height, width=width)
    except ValueError as exc:
        raise EdgepruneError(f"cannot render scenes at {height}x{width}: {exc}") from None
    images, labels = scene_batch(HELDOUT_SEEDS[:n], config)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def segmentation_input(artifact: Artifact) -> dict[str, Any]:
    """The artifact's ``model.input`` (size, mean, std), after checking it is a scenes segmenter."""
    from edgeprune.data import CLASSES

    model = artifact.manifest.get("model", {})
    family = model.get("family")
    if family != SEG_FAMILY:
        raise EdgepruneError(
            f"{artifact.name}: --eval scenes needs a segmentation artifact (model family '{SEG_FAMILY}'), "
            f"this one is '{family}'")
    info = model.get("input")
    if not isinstance(info, Mapping) or not all(k in info for k in ("size", "mean", "std")):
        raise EdgepruneError(f"{artifact.name}: the manifest lacks model.input (size, mean, std) needed to feed scenes")
    classes = model.get("classes")
    if model.get("num_classes") != len(CLASSES) or (classes is not None and list(classes) != list(CLASSES)):
        raise EdgepruneError(
            f"{artifact.name}: its classes {classes or model.get('num_classes')} are not the scenes' {list(CLASSES)}")
    return dict(info)


def _score(conf: np.ndarray, n: int) -> dict[str, Any]:
    from edgeprune.data import CLASSES
    from edgeprune.evaluation import iou_report

    return {**iou_report(conf, CLASSES), "n": n, "seeds": seeds_label(n)}


def _batches(input_info: Mapping[str, Any], n: int, batch: int):
    """(normalised pixels [b, 3, H, W], labels [b, H, W]) chunks; the last one may be short."""
    from edgeprune.evaluation import normalize

    _, h, w = (int(v) for v in input_info["size"])
    images, labels = heldout_scenes(n, h, w)
    for i in range(0, n, batch):
        yield normalize(images[i:i + batch], input_info["mean"], input_info["std"]), labels[i:i + batch]


def evaluate_artifact(artifact: Artifact, n: int = DEFAULT_SCENES, threads: int = 2, progress: Progress = None,
                      providers: Sequence[str] = ("cpu",)) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of an ONNX segmentation artifact on ``n`` held-out scenes.

    A static batch B is fed in full batches; the last one is padded with copies whose predictions
    are dropped, so any ``n`` works with any exported batch.
    """
    from edgeprune.data import CLASSES
    from edgeprune.engines.ort import OrtRunner
    from edgeprune.evaluation import confusion

    info = segmentation_input(artifact)
    shape = artifact.manifest["inputs"][0]["shape"]
    static = isinstance(shape[0], int)
    batch = int(shape[0]) if static else DYNAMIC_EVAL_BATCH
    if [int(v) for v in info["size"]] != [int(v) for v in shape[1:]]:
        raise EdgepruneError(f"{artifact.name}: model.input size {info['size']} differs from the ONNX input {shape}")
    name = artifact.manifest["inputs"][0]["name"]
    k = len(CLASSES)
    conf = np.zeros((k, k), np.int64)
    done = 0
    with OrtRunner(artifact.onnx_path, providers, threads) as runner:
        for pixels, labels in _batches(info, n, batch):
            m = len(pixels)
            if static and m < batch:
                pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch - m, 0)])
            outputs = runner.infer({name: pixels})
            logits = outputs.get("logits", next(iter(outputs.values())))
            conf += confusion(labels, logits[:m].argmax(1), k)
            done += m
            if progress:
                progress(done, n)
    return _score(conf, n)


def evaluate_module(module: Any, n: int = DEFAULT_SCENES, input_info: Optional[Mapping[str, Any]] = None,
                    batch: int = 25, progress: Progress = None) -> dict[str, Any]:
    """The same scenes and metric as :func:`evaluate_artifact` for an eager PyTorch module (logits
    [B, K, H, W]), so eager and ONNX scores of one model can be compared. ``input_info`` defaults to
    ``module.info["input"]`` (set by ``load_segmenter``); a ReducedDense is looked through to its model."""
    import torch

    from edgeprune.data import CLASSES
    from edgeprune.evaluation import confusion

    if input_info is None:
        owner = getattr(getattr(module, "adapter", None), "model", module)
        input_info = getattr(owner, "info", {}).get("input")
        if input_info is None:
            raise EdgepruneError("evaluate_module needs input_info (size, mean, std): the module carries none")
    if batch < 1:
        raise EdgepruneError(f"batch must be >= 1, got {batch}")
    k = len(CLASSES)
    conf = np.zeros((k, k), np.int64)
    done = 0
    was_training = getattr(module, "training", False)
    module.eval()
    try:
        with torch.inference_mode():
            for pixels, labels in _batches(input_info, n, batch):
                logits = module(torch.from_numpy(pixels))
                logits = logits[0] if isinstance(logits, (tuple, list)) else logits
                conf += confusion(labels, logits.argmax(1).numpy(), k)
                done += len(pixels)
                if progress:
                    progress(done, n)
    finally:
        module.train(was_training)
    return _score(conf, n)


__all__ = ["DEFAULT_SCENES", "SEG_FAMILY", "evaluate_artifact", "evaluate_module", "heldout_scenes",
           "parse_eval_spec", "segmentation_input", "seeds_label"]
