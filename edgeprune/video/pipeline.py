"""The threaded video path: decode → infer → draw/encode, three stages in three threads.

Decoding, the engine and drawing/encoding each take milliseconds, and OpenCV, NumPy and ONNX
Runtime release the GIL while they work, so running them in separate threads overlaps them: the
throughput is set by the slowest stage instead of their sum. Stages hand frames over through
bounded queues, so a slow stage holds the others back instead of piling frames up in memory.

* A **file** source keeps every frame: the decoder waits while the queue is full.
* A **live** source (camera, stream) never waits: its decoder keeps only the newest frame, and a
  frame replaced before the engine took it counts as dropped (reported in the metrics), so the
  engine always works on the freshest picture instead of an ever older backlog.

An exception in any stage stops all three and is re-raised in the caller's thread; so is Ctrl-C.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from edgeprune.video.sources import Source

_END = object()
_POLL_S = 0.05


@dataclass
class Decoded:
    """A frame as the decoder hands it on."""

    index: int  # the decoder's count (a live source's dropped frames have numbers too)
    source: int  # which source (video) it came from
    frame: np.ndarray
    decode_ms: float  # read + colour conversion + scaling to the output size
    captured: float = field(default_factory=time.perf_counter)


@dataclass
class PipelineStats:
    frames: int
    dropped: int  # live sources only: frames replaced by newer ones before the engine took them
    wall_s: float


class _Latest:
    """A one-item mailbox: ``put`` replaces an unread item (and counts it dropped), ``get`` waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = _END
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: Any, stop: threading.Event) -> bool:
        with self._cond:
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()
        return not stop.is_set()

    def close(self, stop: threading.Event) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, stop: threading.Event) -> Any:
        with self._cond:
            while not self._full and not self._closed and not stop.is_set():
                self._cond.wait(_POLL_S)
            if not self._full:
                return _END
            item, self._item, self._full = self._item, _END, False
            return item


class _Bounded:
    """A bounded FIFO whose blocking calls give up when the pipeline stops."""

    def __init__(self, size: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, size))
        self.dropped = 0  # a file's frames are never dropped; the attribute matches _Latest's

    def put(self, item: Any, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def close(self, stop: threading.Event) -> None:
        # Queued frames go first: the end marker waits for room unless the pipeline is stopping.
        self.put(_END, stop)

    def get(self, stop: threading.Event) -> Any:
        while not stop.is_set():
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _END


class _Failure:
    def __init__(self) -> None:
        self.error: Optional[BaseException] = None
        self._lock = threading.Lock()

    def record(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc


def run_pipeline(sources: Sequence[Source], prepare: Callable[[np.ndarray], np.ndarray],
                 infer: Callable[[Decoded], Any], finish: Callable[[Decoded, Any], None], *,
                 max_frames: Optional[int] = None, queue_size: int = 4,
                 on_new_source: Callable[[int], None] = lambda i: None) -> PipelineStats:
    """Run ``sources`` one after another through ``prepare`` (decoder thread), ``infer`` (this thread)
    and ``finish`` (output thread); returns how many frames went through and how many were dropped.

    ``on_new_source(i)`` runs in this thread before the first frame of source ``i`` is inferred
    (temporal caches must not leak from one video into the next).
    """
    stop = threading.Event()
    failure = _Failure()
    inbox: Any = _Latest() if any(s.live for s in sources) else _Bounded(queue_size)
    outbox = _Bounded(queue_size)

    def decode() -> None:
        try:
            index = 0
            for k, source in enumerate(sources):
                frames = iter(source.frames)
                while not stop.is_set():
                    t0 = time.perf_counter()
                    frame = next(frames, None)
                    if frame is None:
                        break
                    frame = prepare(frame)
                    item = Decoded(index, k, frame, (time.perf_counter() - t0) * 1e3)
                    index += 1
                    if not inbox.put(item, stop):
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failure.record(exc)
            stop.set()
        finally:
            inbox.close(stop)

    def output() -> None:
        try:
            while True:
                item = outbox.get(stop)
                if item is _END:
                    return
                finish(*item)
        except BaseException as exc:  # noqa: BLE001
            failure.record(exc)
            stop.set()

    started = time.perf_counter()
    decoder = threading.Thread(target=decode, name="edgeprune-decode", daemon=True)
    writer = threading.Thread(target=output, name="edgeprune-encode", daemon=True)
    decoder.start()
    writer.start()
    done, current = 0, -1
    try:
        while max_frames is None or done < max_frames:
            item = inbox.get(stop)
            if item is _END:
                break
            if item.source != current:
                current = item.source
                on_new_source(current)
            result = infer(item)
            if not outbox.put((item, result), stop):
                break
            done += 1
    except BaseException as exc:
        failure.record(exc)
    finally:
        # Draw and encode everything inferred (files keep every frame), then stop the decoder.
        if failure.error is not None:
            stop.set()
        outbox.close(stop)
        writer.join()
        stop.set()
        decoder.join()
    if failure.error is not None:
        raise failure.error
    return PipelineStats(done, int(inbox.dropped), time.perf_counter() - started)


__all__ = ["Decoded", "PipelineStats", "run_pipeline"]
