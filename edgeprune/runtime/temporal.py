"""Temporal reuse at run time: per camera stream, recompute the patches that changed and reuse the rest.

A temporal artifact (``edgeprune export MODEL --temporal 0.4``, see
:mod:`edgeprune.exporting.temporal`) holds two graphs: ``refresh`` recomputes every patch and
``update`` a fixed number M of them. For each frame of a stream :class:`TemporalRuntime`

1. measures how far every patch has moved from the pixels it was last computed on (sub-patch
   colour means, so sensor noise averages out; microseconds in NumPy, before any engine runs);
2. picks the M patches that moved most and runs ``update`` on them with the stream's caches;
3. runs ``refresh`` instead on the first frame, every ``refresh_every`` frames, and whenever the
   change left stale (mean over the patches not recomputed) passes ``drift_threshold``: a camera
   that moves, or a scene cut, makes more patches change than M can cover.

Every frame gives a full label map. Streams are independent; one runtime serves several threads
(ONNX Runtime sessions take concurrent runs, OpenVINO runners keep an infer request per thread; each
stream's state has its own lock). The graphs run on ONNX Runtime or OpenVINO (``provider``,
``precision``, ``device``: :func:`edgeprune.backends.runners.make_runner`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.artifacts.schema import check_manifest
from edgeprune.artifacts.temporal import GRAPHS, TEMPORAL_FORMAT, TEMPORAL_KIND
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json

DEFAULT_REFRESH_EVERY = 30
DEFAULT_DRIFT_THRESHOLD = 2.0  # colour levels (0..255), mean over the patches left stale


@dataclass(frozen=True)
class TemporalArtifact:
    path: Path
    manifest: dict[str, Any]

    def onnx_path(self, graph: str) -> Path:
        return self.path / self.manifest["graphs"][graph]["file"]

    @property
    def recompute(self) -> int:
        return int(self.manifest["recompute"])

    @property
    def patches(self) -> int:
        return int(self.manifest["patches"])

    @property
    def grid(self) -> tuple[int, int]:
        gh, gw = self.manifest["grid"]
        return int(gh), int(gw)

    @property
    def input_shape(self) -> list[int]:
        shape = list(self.manifest["inputs"]["pixel_values"])
        return [1 if not isinstance(shape[0], int) else shape[0], *shape[1:]]

    @property
    def cache_shapes(self) -> dict[str, list[int]]:
        batch = self.input_shape[0]
        return {n: [batch if not isinstance(d, int) else d for d in shape]
                for n, shape in self.manifest["inputs"].items() if n.startswith("cache_")}

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    def verify(self) -> None:
        from edgeprune.core.files import sha256_file

        for name, graph in self.manifest["graphs"].items():
            if sha256_file(self.onnx_path(name)) != graph["sha256"]:
                raise EdgepruneError(f"{self.onnx_path(name)}: sha256 does not match the manifest (file changed or corrupt)")


def is_temporal(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporal artifact folder (its manifest says so)."""
    from edgeprune.artifacts.artifact import MANIFEST

    try:
        return read_json(Path(path) / MANIFEST).get("kind") == TEMPORAL_KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_temporal(path: str | os.PathLike, verify: bool = True) -> TemporalArtifact:
    """Read and check a temporal artifact; any defect is one EdgepruneError line."""
    from edgeprune.artifacts.artifact import MANIFEST
    from edgeprune.core.files import read_folder_json

    root = Path(path)
    mpath = root / MANIFEST
    manifest = read_folder_json(root, MANIFEST, "artifact")
    if not isinstance(manifest, dict) or manifest.get("kind") != TEMPORAL_KIND:
        raise EdgepruneError(f"{mpath}: not a temporal artifact (kind is not '{TEMPORAL_KIND}')")
    if manifest.get("format") != TEMPORAL_FORMAT:
        raise EdgepruneError(f"{mpath}: unsupported temporal artifact format {manifest.get('format')!r}")
    check_manifest("temporal", manifest, mpath)
    try:
        artifact = TemporalArtifact(root, manifest)
        artifact.recompute, artifact.grid, artifact.input_shape, artifact.cache_shapes  # noqa: B018 (validates)
        missing = [g for g in GRAPHS if not artifact.onnx_path(g).is_file()]
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgepruneError(f"{mpath}: malformed temporal manifest ({type(exc).__name__}: {exc})") from None
    if missing:
        raise EdgepruneError(f"{root}: {', '.join(missing)} graph missing")
    if verify:
        artifact.verify()
    return artifact


def patch_features(frame: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """RGB [H, W, 3] -> [patches, F] colour means of each patch's 2 x 2 sub-blocks (F = 12), or of
    the whole patch (F = 3) when a patch side is odd. Means over 16+ pixels let sensor noise cancel
    while an edge that moves inside a patch still shifts its sub-block means."""
    gh, gw = grid
    h, w, c = frame.shape
    ph, pw = h // gh, w // gw
    f = frame[: gh * ph, : gw * pw].astype(np.float32)
    split = 2 if ph % 2 == 0 and pw % 2 == 0 else 1
    f = f.reshape(gh, split, ph // split, gw, split, pw // split, c).mean(axis=(2, 5))
    return f.transpose(0, 2, 1, 3, 4).reshape(gh * gw, -1)  # [gh, gw, sub-rows, sub-cols, c]


def choose_patches(change: np.ndarray, count: int) -> tuple[np.ndarray, float]:
    """The ``count`` most changed patches (ascending indices, int64) and the mean change of the rest."""
    if count >= change.size:
        return np.arange(change.size, dtype=np.int64), 0.0
    # A stable sort, not argpartition: equally changed patches (common on real video) are then chosen
    # by index on every machine, which the native runtime reproduces exactly.
    chosen = np.argsort(-change, kind="stable")[:count]
    stale = np.ones(change.size, bool)
    stale[chosen] = False
    return np.sort(chosen).astype(np.int64), float(change[stale].mean())


@dataclass(frozen=True)
class TemporalResult:
    frame: int  # index within its stream
    stream: Hashable
    logits: np.ndarray  # [1, classes, h, w]
    refreshed: bool
    reason: str  # why it refreshed ("first frame", "every 30 frames", "drift 3.1 > 2.0"), or ""
    recomputed: float  # share of patches recomputed
    drift: float  # mean change of the patches left stale (0 on a refresh)
    engine_ms: float
    total_ms: float

    @cached_property
    def labels(self) -> np.ndarray:
        """[h, w] uint8 class ids at the model's input size, computed on first use."""
        from edgeprune.runtime.runtime import labels_of

        return labels_of(self.logits)


@dataclass
class _Stream:
    lock: threading.Lock = field(default_factory=threading.Lock)
    reference: Optional[np.ndarray] = None  # patch features each patch was last computed on
    caches: Optional[dict[str, np.ndarray]] = None
    frames: int = 0
    since_refresh: int = 0


class TemporalRuntime:
    """Temporal token reuse over one temporal artifact, for any number of streams (see module doc)."""

    def __init__(self, artifact: str | os.PathLike | TemporalArtifact, *, threads: int = 2, provider: str = "cpu",
                 precision: Optional[str] = None, device: Optional[str] = None,
                 refresh_every: int = DEFAULT_REFRESH_EVERY, drift_threshold: float = DEFAULT_DRIFT_THRESHOLD) -> None:
        from edgeprune.backends.runners import make_runner, runner_label
        from edgeprune.measure.calibrate import resolve_engine

        self.artifact = artifact if isinstance(artifact, TemporalArtifact) else load_temporal(artifact)
        if refresh_every < 1:
            raise EdgepruneError(f"--refresh-every must be >= 1, got {refresh_every}")
        if not drift_threshold > 0:
            raise EdgepruneError(f"--drift-threshold must be > 0, got {drift_threshold}")
        self.refresh_every, self.drift_threshold = int(refresh_every), float(drift_threshold)
        if self.artifact.input_shape[0] != 1:
            raise EdgepruneError(f"{self.artifact.path}: exported for batch {self.artifact.input_shape[0]}; the temporal runtime "
                                 "runs one frame per stream: export with --batch 1 or --dynamic-batch")
        info = self.artifact.model.get("input") or {}
        if "mean" not in info:
            raise EdgepruneError(f"{self.artifact.path}: the model records no input normalisation")
        self._mean, self._std = info["mean"], info["std"]
        # A temporal artifact is not calibrated: ``auto`` follows the rule without calibrations.
        self.engine, self.engine_reason = resolve_engine(None, provider, precision, device)
        self._runners = {g: make_runner(self.artifact.onnx_path(g), self.engine, threads, spinning=False)
                         for g in ("refresh", "update")}
        for runner in self._runners.values():
            runner.activate()
        self.provider_name = runner_label(self._runners["refresh"])
        self._all = np.arange(self.artifact.patches, dtype=np.int64)[None]
        self._cache_names = list(self.artifact.cache_shapes)
        self._streams: dict[Hashable, _Stream] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def recompute_share(self) -> float:
        return self.artifact.recompute / self.artifact.patches

    def model_frame(self, frame: np.ndarray) -> np.ndarray:
        """RGB uint8 [H, W, 3] at any size -> the model's input size."""
        from edgeprune.imaging.images import resize_rgb

        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise EdgepruneError(f"frames must be RGB uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
        _, _, h, w = self.artifact.input_shape
        return frame if frame.shape[:2] == (h, w) else resize_rgb(frame, h, w)

    def reset(self, stream: Optional[Hashable] = None) -> None:
        """Forget one stream's caches (or every stream's): its next frame refreshes."""
        with self._lock:
            if stream is None:
                self._streams.clear()
            else:
                self._streams.pop(stream, None)

    def infer(self, frame: np.ndarray, stream: Hashable = 0) -> TemporalResult:
        from edgeprune.imaging.evaluation import normalize

        start = time.perf_counter()
        if self._closed:
            raise EdgepruneError("the runtime is closed")
        small = self.model_frame(frame)
        features = patch_features(small, self.artifact.grid)
        with self._lock:
            state = self._streams.setdefault(stream, _Stream())
        with state.lock:
            reason, drift = "", 0.0
            if state.reference is None:
                reason = "first frame"
            elif state.since_refresh + 1 >= self.refresh_every:
                reason = f"every {self.refresh_every} frames"
            else:
                change = np.abs(features - state.reference).mean(axis=1)
                index, drift = choose_patches(change, self.artifact.recompute)
                if drift > self.drift_threshold:
                    reason = f"drift {drift:.2f} > {self.drift_threshold:g}"
            pixels = normalize(small[None], self._mean, self._std)
            if reason:  # the refresh graph takes the pixels alone and fills every cache
                graph, index, drift, feed = "refresh", self._all, 0.0, {"pixel_values": pixels}
            else:
                graph, index = "update", index[None]
                feed = {"pixel_values": pixels, "update_index": index, **state.caches}
            t0 = time.perf_counter()
            out = self._runners[graph].infer(feed)
            engine_ms = (time.perf_counter() - t0) * 1e3
            state.caches = {name: out["next_" + name[len("cache_"):]] for name in self._cache_names}
            if reason:
                state.reference, state.since_refresh = features, 0
            else:
                state.reference[index[0]] = features[index[0]]
                state.since_refresh += 1
            frame_index = state.frames
            state.frames += 1
        return TemporalResult(frame_index, stream, out["logits"], bool(reason), reason,
                              index.shape[1] / self.artifact.patches, drift, engine_ms,
                              (time.perf_counter() - start) * 1e3)

    def close(self) -> None:
        if not self._closed:
            for runner in self._runners.values():
                runner.deactivate()
            self._closed = True

    def __enter__(self) -> "TemporalRuntime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["DEFAULT_DRIFT_THRESHOLD", "DEFAULT_REFRESH_EVERY", "TemporalArtifact", "TemporalResult", "TemporalRuntime",
           "choose_patches", "is_temporal", "load_temporal", "patch_features"]
