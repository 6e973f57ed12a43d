"""NativeRuntime: an engine set or temporal artifact run by libedgeprune through its C ABI."""

from __future__ import annotations

import ctypes as C
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Optional, Union

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.native import _abi

from edgeprune.native.library import _check, _frame, default_openvino_library, default_ort_library, load_library


@dataclass
class NativeResult:
    frame: int
    stream: Hashable
    engine: str
    engine_index: int
    budget: float
    provider: str  # the provider that actually ran the engine
    labels: Optional[np.ndarray]  # [H, W] at input or model size, as asked
    logits: Optional[np.ndarray]  # [1, classes, h, w] when asked
    predicted_ms: float
    content: float
    pre_ms: float
    engine_ms: float
    post_ms: float
    scheduler_ms: float
    total_ms: float
    deadline_met: bool
    reason: str
    refreshed: bool
    drift: float


class NativeRuntime:
    """An engine set, a set with built engines (``engines=``) or a temporal artifact, run by libedgeprune."""

    def __init__(self, path: Union[str, Path], target_ms: float = 0.0, policy: str = "deadline", *, threads: int = 2,
                 provider: str = "cpu", policy_args: Optional[dict[str, Any]] = None,
                 engines: Union[str, Path, None] = None, ort_library: Union[str, Path, None] = None,
                 refresh_every: int = 30, drift_threshold: float = 2.0, verify: bool = True,
                 openvino_library: Union[str, Path, None] = None) -> None:
        lib = load_library()
        self._lib = lib
        o = _abi.Options()
        lib.edgeprune_options_init(C.byref(o))
        ort = ort_library or os.environ.get("EDGEPRUNE_ORT_LIBRARY") or default_ort_library()
        # Only opened for built engines of backend openvino; None leaves the library's own default.
        ov = openvino_library or os.environ.get("EDGEPRUNE_OPENVINO_LIBRARY") or default_openvino_library()
        self._keep = [str(x).encode() if x is not None else None for x in (
            ort, provider, policy, ",".join(f"{k}={v}" for k, v in (policy_args or {}).items()), engines, ov)]
        o.ort_library, o.provider, o.policy, o.policy_args, o.engines, o.openvino_library = self._keep
        o.threads, o.target_ms = int(threads), float(target_ms)
        o.refresh_every, o.drift_threshold, o.verify = int(refresh_every), float(drift_threshold), int(bool(verify))
        handle = C.c_void_p()
        _check(lib.edgeprune_open(str(path).encode(), C.byref(o), C.byref(handle)))
        self._handle = handle
        info = _abi.Info()
        lib.edgeprune_info_init(C.byref(info))
        _check(lib.edgeprune_get_info(handle, C.byref(info)))
        self.kind = {1: "set", 2: "temporal"}[info.kind]
        self.width, self.height, self.classes = info.width, info.height, info.classes
        self.provider, self.backend = info.provider.decode(), info.backend.decode()
        self.engines, self.budgets = [], []
        name, budget = C.create_string_buffer(64), C.c_double()
        for i in range(info.engines):
            _check(lib.edgeprune_get_engine(handle, i, name, 64, C.byref(budget)))
            self.engines.append(name.value.decode())
            self.budgets.append(budget.value)
        self._streams: dict[Hashable, int] = {}
        self._streams_lock = threading.Lock()

    def _stream_id(self, stream: Hashable) -> int:
        if isinstance(stream, (int, np.integer)) and 0 <= int(stream) < 2**63:
            return int(stream)
        with self._streams_lock:  # other hashables get ids above the int range callers use
            return self._streams.setdefault(stream, 2**63 + len(self._streams))

    def infer(self, frame: np.ndarray, stream: Hashable = 0, deadline_ms: Optional[float] = None,
              labels: Optional[str] = "input", logits: bool = False) -> NativeResult:
        if self._handle is None:
            raise EdgepruneError("the runtime is closed")
        if labels not in _abi.LABELS:
            raise EdgepruneError(f"labels must be 'input', 'model' or None, got {labels!r}")
        f, frame = _frame(frame)
        q = _abi.Request()
        self._lib.edgeprune_request_init(C.byref(q))
        q.stream, q.deadline_ms, q.labels = self._stream_id(stream), float(deadline_ms or 0.0), _abi.LABELS[labels]
        out_labels = out_logits = None
        if labels == "input":
            out_labels = np.empty(frame.shape[:2], np.uint8)
        elif labels == "model":
            out_labels = np.empty((self.height, self.width), np.uint8)
        if out_labels is not None:
            q.labels_out, q.labels_capacity = out_labels.ctypes.data, out_labels.size
        if logits:
            out_logits = np.empty((1, self.classes, self.height, self.width), np.float32)
            q.logits_out, q.logits_capacity = out_logits.ctypes.data, out_logits.size
        r = _abi.Result()
        self._lib.edgeprune_result_init(C.byref(r))
        _check(self._lib.edgeprune_infer(self._handle, C.byref(f), C.byref(q), C.byref(r)))
        return NativeResult(r.frame, stream, r.engine.decode(), r.engine_index, r.budget, r.provider.decode(), out_labels,
                            out_logits, r.predicted_ms, r.content, r.pre_ms, r.engine_ms, r.post_ms, r.scheduler_ms,
                            r.total_ms, bool(r.deadline_met), r.reason.decode(), bool(r.refreshed), r.drift)

    def reset(self, stream: Hashable) -> None:
        _check(self._lib.edgeprune_reset_stream(self._handle, self._stream_id(stream)))

    def close(self) -> None:
        if self._handle is not None:
            self._lib.edgeprune_close(self._handle)
            self._handle = None

    def __enter__(self) -> "NativeRuntime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self.close()
