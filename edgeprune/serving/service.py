"""What one served model instance does with a batch of requests, free of any server API.

Triton's dynamic batcher hands an instance several requests at once. :class:`Service` checks each
request on its own (a bad one gets its own error message, the others still run), turns images into
the engine's input exactly as :class:`edgeprune.runtime.Runtime` does, packs the rows of all good
requests into batches of the exported sizes, lets this instance's deadline policy pick a budget per
batch (one :class:`DeadlinePolicy` per batch size, fed that size's calibrated latencies; the tightest
``deadline_ms`` of the batch overrides the target, less the time requests recently spent in Triton's
queue), runs it, and splits the outputs back.

The Triton model (:mod:`edgeprune.serving.triton_model`) is a thin adapter around this class, so the
same code is tested here without a server and runs unchanged inside one.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json
from edgeprune.runtime.policies import DeadlinePolicy, EngineProfile, FrameContext

PARAMETERS = ("deadline_ms", "budget")
SERVICE_FILE = "service.json"
MAX_DEADLINE_MS = 600_000.0
OUTPUTS = ("labels", "logits", "budget", "engine", "timings_ms", "batch_size")


class RequestError(ValueError):
    """A request the service refuses; the message goes back to the client as the error response."""


@dataclass
class ServiceConfig:
    """What ``edgeprune serve`` hands every instance (written to ``service.json`` in the repository)."""

    members: list[dict[str, Any]]  # name, budget, batch, engine, p50_ms, p95_ms
    target_ms: float
    input_size: tuple[int, int, int]  # C, h, w
    mean: Optional[list[float]]
    std: Optional[list[float]]
    dense: bool  # a segmenter (logits [K, h, w]) rather than a classifier (logits [K])
    num_classes: int
    max_batch: int
    max_side: int = 8192
    threads: int = 1
    classes: Optional[list[str]] = None
    # Triton's statistics of this model (``/v2/models/NAME/stats``): the instances read how long
    # requests recently waited in Triton's queue, which a model is otherwise never told.
    stats_url: Optional[str] = None
    # What runs the members' ONNX: EngineChoice fields (provider, precision, device); None: ONNX Runtime's CPU
    engine: Optional[dict[str, Any]] = None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ServiceConfig":
        data = dict(data)
        data["input_size"] = tuple(data["input_size"])
        return cls(**data)

    @classmethod
    def read(cls, path: str | Path) -> "ServiceConfig":
        return cls.from_json(read_json(path))

    @property
    def budgets(self) -> list[float]:
        return sorted({float(m["budget"]) for m in self.members}, reverse=True)

    @property
    def sizes(self) -> list[int]:
        return sorted({int(m["batch"]) for m in self.members})


@dataclass
class Job:
    """One checked request: its input rows and what it asked for."""

    pixels: np.ndarray  # [n, C, h, w] float32
    deadline_ms: Optional[float] = None
    budget_index: Optional[int] = None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class JobResult:
    labels: np.ndarray  # [n, h, w] uint8 (segmenters) or [n, 1] int32 (classifiers)
    logits: np.ndarray
    budget: float
    engine: str
    engine_ms: float  # the batch's engine run
    service_ms: float  # from the start of this request's handling to its outputs
    batch_size: int  # rows run together (before padding to an exported size)

    def tensors(self) -> dict[str, np.ndarray]:
        n = self.labels.shape[0]
        return {"labels": self.labels, "logits": self.logits,
                "budget": np.full((n, 1), self.budget, np.float32),
                "engine": np.full((n, 1), self.engine.encode(), dtype=object),
                "timings_ms": np.tile(np.array([[self.engine_ms, self.service_ms]], np.float32), (n, 1)),
                "batch_size": np.full((n, 1), self.batch_size, np.int32)}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"parameter {name} must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"parameter {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RequestError(f"parameter {name} must be finite, got {value!r}")
    return number


def queue_totals(stats: dict[str, Any]) -> tuple[int, int]:
    """(requests queued, total queue nanoseconds) from Triton's ``/v2/models/NAME/stats`` answer."""
    queue = stats["model_stats"][0]["inference_stats"]["queue"]
    return int(queue["count"]), int(queue["ns"])


def engine_runner(onnx: str, threads: int, engine: Optional[dict[str, Any]] = None) -> Callable[[np.ndarray], np.ndarray]:
    """The default engine: the ONNX file on ``engine`` (a :class:`ServiceConfig` ``engine``; default ONNX Runtime's
    CPU provider), without spinning, as the calibration ran."""
    from edgeprune.backends.runners import EngineChoice, make_runner

    runner = make_runner(onnx, EngineChoice(**(engine or {"provider": "cpu"})), threads, spinning=False)
    runner.activate()
    output = runner.output_names[0]
    return lambda pixels: runner.infer({"pixel_values": pixels})[output]


class Service:
    """Request checking, batching and per-batch budget choice over batch-N engines (module docstring).

    ``make_runner(engine, threads)`` builds one engine from a member's ``engine`` entry (default: its
    ONNX file run by :func:`engine_runner` on the config's engine); the production scheduler model passes
    one that forwards the batch to the Triton model of that name instead.
    """

    def __init__(self, config: ServiceConfig,
                 make_runner: Optional[Callable[[str, int], Callable[[np.ndarray], np.ndarray]]] = None) -> None:
        if make_runner is None:
            def make_runner(onnx: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
                return engine_runner(onnx, threads, config.engine)
        self.config = config
        budgets = config.budgets
        self.sizes = config.sizes
        self._engines: dict[tuple[int, int], Callable[[np.ndarray], np.ndarray]] = {}
        self._names: dict[int, str] = {}
        profiles: dict[int, list[EngineProfile]] = {n: [] for n in self.sizes}
        for m in sorted(config.members, key=lambda m: (-float(m["budget"]), int(m["batch"]))):
            index, n = budgets.index(float(m["budget"])), int(m["batch"])
            self._engines[index, n] = make_runner(str(m["engine"]), config.threads)
            self._names[index] = str(m["name"])
            profiles[n].append(EngineProfile(str(m["name"]), float(m["budget"]), float(m["p50_ms"]),
                                             max(float(m["p95_ms"]), float(m["p50_ms"]))))
        missing = [(budgets[i], n) for i in range(len(budgets)) for n in self.sizes if (i, n) not in self._engines]
        if missing:
            raise EdgepruneError(f"service: no engine for budget/batch {missing}")
        self.policies = {n: DeadlinePolicy(profiles[n], config.target_ms) for n in self.sizes}
        self._overhead_ms = 0.0
        self._batches = 0
        self.queue_ms = 0.0  # recent mean wait in Triton's queue, when config.stats_url is set
        if config.stats_url:
            threading.Thread(target=self._watch_queue, args=(config.stats_url,), daemon=True).start()

    def _watch_queue(self, url: str, period_s: float = 0.25) -> None:
        """Every ``period_s``: the mean queue wait of the requests Triton queued since the last look (0 when
        none came), from its cumulative statistics. A request's deadline counts from when it was sent, so
        time spent queued is time the engine no longer has."""
        import urllib.request

        last: Optional[tuple[int, int]] = None
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    now = queue_totals(json.loads(response.read()))
            except (OSError, ValueError):  # the server is starting or stopping: try again later
                now = None
            if now is not None and last is not None:
                count, ns = now[0] - last[0], now[1] - last[1]
                self.queue_ms = ns / count / 1e6 if count > 0 else 0.0
            last = now if now is not None else last
            time.sleep(period_s)

    # -- checking ---------------------------------------------------------------------------------
    def parse(self, image: Optional[np.ndarray], pixels: Optional[np.ndarray],
              parameters: Optional[dict[str, Any]]) -> Job:
        """A :class:`Job` for one request, or :class:`RequestError` naming what is wrong with it."""
        started = time.perf_counter()
        parameters = dict(parameters or {})
        unknown = sorted(set(parameters) - set(PARAMETERS))
        if unknown:
            raise RequestError(f"unknown parameter {', '.join(map(repr, unknown))}: this model takes "
                               f"{' and '.join(PARAMETERS)}")
        deadline = budget_index = None
        if "deadline_ms" in parameters and "budget" in parameters:
            raise RequestError("give deadline_ms or budget, not both")
        if "deadline_ms" in parameters:
            deadline = _number("deadline_ms", parameters["deadline_ms"])
            if not 0 < deadline <= MAX_DEADLINE_MS:
                raise RequestError(f"deadline_ms must be > 0 and <= {MAX_DEADLINE_MS:g}, got {parameters['deadline_ms']!r}")
        if "budget" in parameters:
            budget = _number("budget", parameters["budget"])
            matches = [i for i, b in enumerate(self.config.budgets) if abs(b - budget) < 1e-6]
            if not matches:
                raise RequestError(f"budget {budget:g} is not served; budgets: "
                                   f"{', '.join(f'{b:g}' for b in self.config.budgets)}")
            budget_index = matches[0]
        if (image is None) == (pixels is None):
            raise RequestError("send exactly one input: image (uint8 [H, W, 3]) or pixels (float32 "
                               f"[{', '.join(map(str, self.config.input_size))}])")
        rows = self._image_rows(image) if image is not None else self._pixel_rows(pixels)
        if rows.shape[0] > self.config.max_batch:
            raise RequestError(f"{rows.shape[0]} images in one request; this model takes at most {self.config.max_batch}")
        return Job(rows, deadline, budget_index, started)

    def _image_rows(self, image: np.ndarray) -> np.ndarray:
        from edgeprune.imaging.evaluation import normalize
        from edgeprune.imaging.images import resize_rgb

        if image.dtype != np.uint8:
            raise RequestError(f"image must be uint8, got {image.dtype}")
        if image.ndim != 4 or image.shape[-1] != 3:
            raise RequestError(f"image must be [H, W, 3] (batched [N, H, W, 3]), got {list(image.shape)}")
        n, h, w, _ = image.shape
        if n == 0 or h == 0 or w == 0:
            raise RequestError(f"image is empty: shape {list(image.shape)}")
        if max(h, w) > self.config.max_side:
            raise RequestError(f"image {w}x{h} is larger than this server's limit of {self.config.max_side} pixels "
                               "per side; downscale it first")
        if self.config.mean is None or self.config.std is None:
            raise RequestError("this model records no input normalisation: send preprocessed pixels instead of image")
        _, mh, mw = self.config.input_size
        frames = [f if f.shape[:2] == (mh, mw) else resize_rgb(np.ascontiguousarray(f), mh, mw) for f in image]
        return normalize(np.stack(frames), self.config.mean, self.config.std)

    def _pixel_rows(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype != np.float32:
            raise RequestError(f"pixels must be float32, got {pixels.dtype}")
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != tuple(self.config.input_size):
            raise RequestError(f"pixels must be [N, {', '.join(map(str, self.config.input_size))}], got {list(pixels.shape)}")
        if pixels.shape[0] == 0:
            raise RequestError("pixels is empty: batch of 0")
        if not np.isfinite(pixels).all():
            raise RequestError("pixels contain NaN or infinity")
        return np.ascontiguousarray(pixels)

    # -- running ----------------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Run checked jobs: those with a budget at that budget, the rest in policy-chosen batches."""
        results: list[Optional[JobResult]] = [None] * len(jobs)
        groups: dict[Optional[int], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.budget_index, []).append(i)
        for forced, members in groups.items():
            for chunk in self._chunks([jobs[i] for i in members], members):
                self._run_chunk([jobs[i] for i in chunk], chunk, forced, results)
        return [r for r in results if r is not None]

    def _chunks(self, jobs: Sequence[Job], indices: Sequence[int]) -> list[list[int]]:
        chunks: list[list[int]] = []
        rows = 0
        for job, index in zip(jobs, indices):
            n = job.pixels.shape[0]
            if not chunks or rows + n > self.config.max_batch:
                chunks.append([])
                rows = 0
            chunks[-1].append(index)
            rows += n
        return chunks

    def _run_chunk(self, jobs: Sequence[Job], indices: Sequence[int], forced: Optional[int],
                   results: list[Optional[JobResult]]) -> None:
        pixels = np.concatenate([j.pixels for j in jobs]) if len(jobs) > 1 else jobs[0].pixels
        rows = pixels.shape[0]
        size = next(n for n in self.sizes if n >= rows)
        if size > rows:  # pad to the exported size with copies of the first row (rows never mix)
            pixels = np.concatenate([pixels, np.repeat(pixels[:1], size - rows, axis=0)])
        policy = self.policies[size]
        if forced is None:
            deadlines = [j.deadline_ms for j in jobs if j.deadline_ms is not None]
            deadline = min(deadlines) if deadlines else self.config.target_ms
            budget_ms = deadline - self._overhead_ms - self.queue_ms
            decision = policy.choose(FrameContext(self._batches, None, max(budget_ms, 1e-3)))
            index = decision.index
        else:
            index = forced
        self._batches += 1
        t0 = time.perf_counter()
        logits = np.asarray(self._engines[index, size](pixels))[:rows]
        engine_ms = (time.perf_counter() - t0) * 1e3
        if forced is None:
            policy.observe(index, engine_ms)
        labels = logits.argmax(1).astype(np.uint8) if self.config.dense else logits.argmax(1).astype(np.int32)[:, None]
        name, budget = self._names[index], self.config.budgets[index]
        start = 0
        done = time.perf_counter()
        for job, i in zip(jobs, indices):
            n = job.pixels.shape[0]
            service_ms = (done - job.started) * 1e3
            results[i] = JobResult(labels[start:start + n], logits[start:start + n], budget, name, engine_ms,
                                   service_ms, rows)
            start += n
        # What a batch costs besides its engine (preprocessing, packing, argmax): the policy plans the
        # engine against the deadline minus this.
        overhead = max(max(r.service_ms for r in (results[i] for i in indices) if r is not None) - engine_ms, 0.0)
        self._overhead_ms += 0.1 * (overhead - self._overhead_ms)


__all__ = ["OUTPUTS", "PARAMETERS", "SERVICE_FILE", "Job", "JobResult", "RequestError", "Service", "ServiceConfig",
           "engine_runner", "queue_totals"]
