"""The library's building blocks from Python: the scheduler alone and the pre/post-processing
kernels, so tests can hold them against :mod:`edgeprune.runtime.policies` and :mod:`edgeprune.imaging.images`."""

from __future__ import annotations

import ctypes as C
from typing import Any, Optional, Sequence

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.native import _abi
from edgeprune.native.library import _check, _frame, load_library


class NativePolicy:
    """``edgeprune_policy_*``: the same constructor arguments as :func:`edgeprune.runtime.policies.make_policy`."""

    def __init__(self, name: str, profiles: Sequence[Any], target_ms: float, **kw: Any) -> None:
        self._lib = load_library()
        n = len(profiles)
        arr = C.c_double * max(n, 1)
        budgets = arr(*[p.budget for p in profiles])
        p50, p95 = arr(*[p.p50_ms for p in profiles]), arr(*[p.p95_ms for p in profiles])
        args = ",".join(f"{k}={v}" for k, v in kw.items()).encode()
        handle = C.c_void_p()
        _check(self._lib.edgeprune_policy_create(name.encode(), n, budgets, p50, p95, float(target_ms), args, C.byref(handle)))
        self._handle = handle

    def choose(self, frame: int, content: Optional[float] = None, deadline_ms: Optional[float] = None) -> tuple[int, float, float, str]:
        d = _abi.Decision()
        d.struct_size = C.sizeof(d)
        _check(self._lib.edgeprune_policy_choose(self._handle, frame, -1.0 if content is None else float(content),
                                                 0.0 if deadline_ms is None else float(deadline_ms), C.byref(d)))
        return d.index, d.budget, d.predicted_ms, d.reason.decode()

    def observe(self, index: int, latency_ms: float) -> None:
        _check(self._lib.edgeprune_policy_observe(self._handle, int(index), float(latency_ms)))

    def __del__(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.edgeprune_policy_free(self._handle)
            self._handle = None


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    f, image = _frame(image)
    out = np.empty((height, width, 3), np.uint8)
    _check(load_library().edgeprune_resize_rgb(C.byref(f), out.ctypes.data, int(width), int(height)))
    return out


def upsample_argmax(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    if logits.ndim != 3:
        raise EdgepruneError(f"logits must be [classes, h, w], got {list(logits.shape)}")
    out = np.empty((height, width), np.uint8)
    k, h, w = logits.shape
    _check(load_library().edgeprune_upsample_argmax(logits.ctypes.data, k, h, w, out.ctypes.data, int(height), int(width)))
    return out


def thumbnail(image: np.ndarray) -> np.ndarray:
    f, image = _frame(image)
    out = np.empty((32, 32), np.uint8)
    _check(load_library().edgeprune_thumbnail(C.byref(f), out.ctypes.data))
    return out


def frame_change(previous: Optional[np.ndarray], current: np.ndarray) -> float:
    prev = None if previous is None else np.ascontiguousarray(previous, np.uint8)
    cur = np.ascontiguousarray(current, np.uint8)
    return load_library().edgeprune_frame_change(None if prev is None else prev.ctypes.data, cur.ctypes.data)
