"""mIoU of segmentation artifacts and eager models on held-out data: procedural scenes or CamVid.

The CLI (``edgeprune bench --eval``) and the benchmark scripts score ONNX artifacts and eager
PyTorch modules on the same images with the same confusion-matrix metric, so their numbers can be
compared directly (an eager-vs-ONNX gap means an export problem, not a data difference).

An evaluation set is ``scenes[:N]`` (the generated held-out scenes, for the scenes model) or
``camvid[:SPLIT][:N]`` (real driving frames, for the CamVid model; the unlabelled class is ignored).
A plain int ``n`` still means the first ``n`` held-out scenes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from edgeprune.artifacts.artifact import Artifact
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress as CountProgress

SEG_FAMILY = "timm-vit-seg"
DEFAULT_SCENES = 200
DYNAMIC_EVAL_BATCH = 25
Progress = Optional[CountProgress]  # told (images done, images)


@dataclass(frozen=True)
class EvalSet:
    """Which labelled images to score on: ``kind`` "scenes" (the first ``n`` held-out seeds) or
    "camvid" (the first ``n`` frames of ``split``; None = all)."""

    kind: str = "scenes"
    n: Optional[int] = DEFAULT_SCENES
    split: str = "test"

    @property
    def classes(self) -> tuple[str, ...]:
        if self.kind == "camvid":
            from edgeprune.data import camvid

            return camvid.CLASSES
        from edgeprune.data import CLASSES

        return tuple(CLASSES)

    def describe(self) -> str:
        if self.kind == "camvid":
            return f"CamVid {self.split} split, {'all' if self.n is None else f'first {self.n}'} frames (unlabelled ignored)"
        return f"{self.n} held-out scenes ({seeds_label(int(self.n))})"


EvalLike = Union[int, EvalSet]


def as_eval_set(data: EvalLike) -> EvalSet:
    return data if isinstance(data, EvalSet) else EvalSet("scenes", int(data))


def parse_eval_spec(spec: str) -> EvalSet:
    """``scenes[:N]`` or ``camvid[:SPLIT][:N]`` -> an :class:`EvalSet`; anything else is a user error."""
    from edgeprune.data import HELDOUT_SEEDS, camvid

    parts = spec.strip().split(":")
    name, rest = parts[0], parts[1:]
    usage = "use 'scenes', 'scenes:N', 'camvid', 'camvid:SPLIT' or 'camvid:SPLIT:N'"
    if name == "scenes":
        if len(rest) > 1:
            raise EdgepruneError(f"--eval {spec!r}: {usage}")
        if not rest:
            return EvalSet("scenes", DEFAULT_SCENES)
        n = _count(spec, rest[0], len(HELDOUT_SEEDS))
        return EvalSet("scenes", n)
    if name == "camvid":
        if len(rest) > 2:
            raise EdgepruneError(f"--eval {spec!r}: {usage}")
        split = rest[0] if rest else "test"
        if split not in camvid.SPLITS:
            raise EdgepruneError(f"--eval {spec!r}: unknown CamVid split '{split}' (choose from {', '.join(camvid.SPLITS)})")
        n = _count(spec, rest[1], 10**6) if len(rest) == 2 else None
        return EvalSet("camvid", n, split)
    raise EdgepruneError(f"--eval {spec!r}: unknown evaluation ({usage})")


def _count(spec: str, text: str, most: int) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= most:
        raise EdgepruneError(f"--eval {spec!r}: N must be an integer in 1..{most}")
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


@functools.lru_cache(maxsize=2)
def camvid_frames(split: str, n: Optional[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """CamVid images resized to the model input [n, H, W, 3] and labels at their own size [n, 180, 240]."""
    from edgeprune.data import camvid
    from edgeprune.imaging.images import resize_rgb

    images, labels, _ = camvid.load_split(split, limit=n)
    if images.shape[1:3] != (height, width):
        images = np.stack([resize_rgb(im, height, width) for im in images])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def eval_size(data: EvalLike, height: int, width: int) -> int:
    """How many images ``data`` scores (a CamVid split's length is only known once it is read)."""
    data = as_eval_set(data)
    if data.kind == "camvid":
        return len(camvid_frames(data.split, data.n, height, width)[0])
    return int(data.n)


def segmentation_input(artifact: Artifact, data: EvalLike = DEFAULT_SCENES) -> dict[str, Any]:
    """The artifact's ``model.input`` (size, mean, std), after checking it segments ``data``'s classes."""
    data = as_eval_set(data)
    model = artifact.manifest.get("model", {})
    family = model.get("family")
    if family != SEG_FAMILY:
        raise EdgepruneError(
            f"{artifact.name}: --eval {data.kind} needs a segmentation artifact (model family '{SEG_FAMILY}'), "
            f"this one is '{family}'")
    info = model.get("input")
    if not isinstance(info, Mapping) or not all(k in info for k in ("size", "mean", "std")):
        raise EdgepruneError(f"{artifact.name}: the manifest lacks model.input (size, mean, std) needed to feed {data.kind}")
    classes = model.get("classes")
    wanted = list(data.classes)
    if model.get("num_classes") != len(wanted) or (classes is not None and list(classes) != wanted):
        raise EdgepruneError(
            f"{artifact.name}: its classes {classes or model.get('num_classes')} are not {data.kind}'s {wanted}")
    return dict(info)


def _score(conf: np.ndarray, data: EvalSet, n: int) -> dict[str, Any]:
    from edgeprune.imaging.evaluation import iou_report

    extra = {"seeds": seeds_label(n)} if data.kind == "scenes" else {"data": data.describe()}
    return {**iou_report(conf, data.classes), "n": n, **extra}


def _batches(input_info: Mapping[str, Any], data: EvalSet, batch: int):
    """(normalised pixels [b, 3, H, W], labels [b, h, w]) chunks; the last one may be short. CamVid
    labels keep their own size; predictions are resized to them (:func:`_labels_of`)."""
    from edgeprune.imaging.evaluation import normalize

    _, h, w = (int(v) for v in input_info["size"])
    if data.kind == "camvid":
        images, labels = camvid_frames(data.split, data.n, h, w)
    else:
        images, labels = heldout_scenes(int(data.n), h, w)
    for i in range(0, len(images), batch):
        yield normalize(images[i:i + batch], input_info["mean"], input_info["std"]), labels[i:i + batch]


def _labels_of(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Arg-max class per pixel [b, h, w] of logits [b, K, H, W], resized to the labels' size."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.argmax(1)
    from edgeprune.imaging.images import upsample_argmax

    return np.stack([upsample_argmax(x, *size) for x in logits])


def evaluate_artifact(artifact: Artifact, data: EvalLike = DEFAULT_SCENES, threads: int = 2, progress: Progress = None,
                      provider: Any = "cpu", precision: Optional[str] = None,
                      device: Optional[str] = None) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of an ONNX segmentation artifact on ``data``, run on ``provider``
    (:func:`edgeprune.backends.runners.make_runner`: ONNX Runtime, or OpenVINO at ``precision`` on ``device``).

    A static batch B is fed in full batches; the last one is padded with copies whose predictions
    are dropped, so any ``n`` works with any exported batch.
    """
    from edgeprune.backends.runners import make_runner
    from edgeprune.imaging.evaluation import confusion

    data = as_eval_set(data)
    info = segmentation_input(artifact, data)
    shape = artifact.manifest["inputs"][0]["shape"]
    static = isinstance(shape[0], int)
    batch = int(shape[0]) if static else DYNAMIC_EVAL_BATCH
    if [int(v) for v in info["size"]] != [int(v) for v in shape[1:]]:
        raise EdgepruneError(f"{artifact.name}: model.input size {info['size']} differs from the ONNX input {shape}")
    name = artifact.manifest["inputs"][0]["name"]
    k = len(data.classes)
    conf = np.zeros((k, k), np.int64)
    done = 0
    with make_runner(artifact.onnx_path, provider, threads, precision=precision, device=device) as runner:
        for pixels, labels in _batches(info, data, batch):
            m = len(pixels)
            if static and m < batch:
                pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch - m, 0)])
            outputs = runner.infer({name: pixels})
            logits = outputs.get("logits", next(iter(outputs.values())))
            conf += confusion(labels, _labels_of(logits[:m], labels.shape[-2:]), k)
            done += m
            if progress:
                progress(done, data.n or done)
    return _score(conf, data, done)


def evaluate_module(module: Any, data: EvalLike = DEFAULT_SCENES, input_info: Optional[Mapping[str, Any]] = None,
                    batch: int = 25, progress: Progress = None) -> dict[str, Any]:
    """The same scenes and metric as :func:`evaluate_artifact` for an eager PyTorch module (logits
    [B, K, H, W]), so eager and ONNX scores of one model can be compared. ``input_info`` defaults to
    ``module.info["input"]`` (set by ``load_segmenter``); a ReducedDense is looked through to its model."""
    import torch

    from edgeprune.imaging.evaluation import confusion

    data = as_eval_set(data)
    if input_info is None:
        owner = getattr(getattr(module, "adapter", None), "model", module)
        input_info = getattr(owner, "info", {}).get("input")
        if input_info is None:
            raise EdgepruneError("evaluate_module needs input_info (size, mean, std): the module carries none")
    if batch < 1:
        raise EdgepruneError(f"batch must be >= 1, got {batch}")
    k = len(data.classes)
    conf = np.zeros((k, k), np.int64)
    done = 0
    was_training = getattr(module, "training", False)
    module.eval()
    try:
        with torch.inference_mode():
            for pixels, labels in _batches(input_info, data, batch):
                logits = module(torch.from_numpy(pixels))
                logits = logits[0] if isinstance(logits, (tuple, list)) else logits
                conf += confusion(labels, _labels_of(logits.numpy(), labels.shape[-2:]), k)
                done += len(pixels)
                if progress:
                    progress(done, data.n or done)
    finally:
        module.train(was_training)
    return _score(conf, data, done)


__all__ = ["DEFAULT_SCENES", "SEG_FAMILY", "EvalSet", "as_eval_set", "camvid_frames", "eval_size", "evaluate_artifact", "evaluate_module", "heldout_scenes",
           "parse_eval_spec", "segmentation_input", "seeds_label"]
