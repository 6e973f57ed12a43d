"""Measure this machine's latency curves for a model's blocks (the data of
:class:`edgeprune.plan.latency.LatencyModel`).

:func:`calibrate` exports the model's first blocks as two small ONNX graphs with a symbolic token
axis (attention sub-layers; MLP sub-layers) plus the method's reducer at a few static sizes, times
them at a grid of token counts on the engine the plan is for (ONNX Runtime fp32 by default, or
OpenVINO at a precision, each count compiled as a static engine), and caches the curves as JSON keyed
by the model's block dimensions, the method, the engine and the machine/runtime.

On an engine with a token tile (:mod:`edgeprune.plan.tiles`) the grid holds every tile boundary and
the count just past it, so the piecewise-linear model reproduces the steps: flat within a tile, a
jump after its last token.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.backends.ort import SessionFromOnnx
from edgeprune.core.cache import cache_dir as core_cache_dir
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json, write_json_atomic
from edgeprune.core.machine import cpu_name
from edgeprune.core.progress import Progress
from edgeprune.core.progress import say as say_progress
from edgeprune.core.timing import interleaved_times
from edgeprune.exporting.onnx_export import trace_to_onnx
from edgeprune.families import adapter_for
from edgeprune.plan import methods
from edgeprune.plan.latency import BLOCK_DIMS, CALIBRATION_FORMAT, LatencyModel
from edgeprune.plan.tiles import default_tile, parse_engine
from edgeprune.plan.token_plan import min_tokens
from edgeprune.reducers import ReductionContext


DEFAULT_ENGINE = "onnxruntime-fp32"


def machine_info(threads: int, providers: Sequence[str], engine: str = DEFAULT_ENGINE) -> dict[str, Any]:
    """What the timings depend on besides the model: CPU, runtime versions, threads, providers, and
    the engine (recorded only when it is not ONNX Runtime fp32, so older caches stay valid)."""
    import onnxruntime as ort

    info = {"cpu": cpu_name(), "machine": platform.machine(), "system": platform.system(), "onnxruntime": ort.__version__,
            "torch": torch.__version__.split("+")[0], "providers": [p.lower() for p in providers], "threads": threads}
    if engine != DEFAULT_ENGINE:
        from edgeprune.backends.openvino import openvino_version

        info.update(engine=engine, openvino=openvino_version())
    return info


def token_grid(n_min: int, n_max: int, points: int, tile: int) -> list[int]:
    """Token counts to time: ``points`` evenly spread, or on a tiled engine every tile boundary and
    the count after it (where the time steps up), plus the ends."""
    if tile <= 1:
        return sorted({int(round(v)) for v in np.linspace(n_min, n_max, max(2, points))})
    edges = [k * tile + d for k in range(1, n_max // tile + 1) for d in (0, 1)]
    return sorted({n_min, n_max, *(n for n in edges if n_min <= n <= n_max)})


class _StaticOpenVino:
    """One token count of a sub-layer graph as a static OpenVINO engine, with ONNX Runtime's
    ``run(outputs, feed)`` call so the timing loop treats both engines alike."""

    def __init__(self, path: Path, feed: dict[str, np.ndarray], precision: str, threads: int) -> None:
        from edgeprune.backends.openvino import compile_static

        compiled = compile_static(path, {k: list(v.shape) for k, v in feed.items()}, precision, threads=threads)
        self.request = compiled.create_infer_request()

    def run(self, _outputs: Any, feed: dict[str, np.ndarray]) -> None:
        self.request.infer(feed, share_inputs=True, share_outputs=True)


class _Chain(nn.Module):
    """``attention`` (norm1, qkv, SDPA, proj, ls1, residual) or ``mlp`` sub-layers of the first
    blocks in a row, so that one timed call holds several and ONNX Runtime's per-call costs, which a
    whole model pays once, are shared out as they are in the real graph."""

    def __init__(self, views: list[Any], part: str, num_prefix: int = 0) -> None:
        super().__init__()
        self.views, self.part, self.num_prefix = views, part, num_prefix
        self.parts = nn.ModuleList(m for v in views for m in vars(v).values() if isinstance(m, nn.Module))  # export sees weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.part == "prefix_attention":  # each sub-layer reads every token and writes the prefix only
            p = self.num_prefix
            outs = [x[:, :p] + v.ls1(v.attn_out(F.scaled_dot_product_attention(*v.prefix_query_qkv(v.norm1(x), p), scale=v.scale)))
                    for v in self.views]
            return torch.stack(outs).sum(dim=0)
        for v in self.views:
            if self.part == "mlp":
                x = x + v.ls2(v.mlp(v.norm2(x)))
            else:
                x = x + v.ls1(v.attn_out(F.scaled_dot_product_attention(*v.qkv(v.norm1(x)), scale=v.scale)))
        return x


class _Reduce(nn.Module):
    """The reducer alone, ``repeat`` times on separate random inputs (x, size, q, k each), so that
    no copy is merged away; the cost does not depend on the values."""

    def __init__(self, method: str, scale: float, num_prefix: int, keep: int) -> None:
        super().__init__()
        self.fn, self.scale, self.num_prefix, self.keep = methods.get(method).load(), scale, num_prefix, keep

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs: list[torch.Tensor] = []
        for x, size, q, k in zip(args[::4], args[1::4], args[2::4], args[3::4]):
            outs += self.fn(x, size, ReductionContext(q, k, self.scale, self.num_prefix, None, {}), self.keep)[:2]
        return tuple(outs)


def _export(module: nn.Module, args: tuple, path: Path, dynamic: bool = False) -> None:
    shapes = ({1: torch.export.Dim("tokens", min=2, max=max(4096, args[0].shape[1]))},) if dynamic else None
    trace_to_onnx(module, args, path, input_names=[f"in{i}" for i in range(len(args))], dynamic_shapes=shapes)


def _measure(adapter: Any, method: str, threads: int, providers: Sequence[str], grid_points: int,
             reducer_points: int, repeat: int, runs: int, warmup: int, progress: Optional[Progress] = None,
             engine: str = DEFAULT_ENGINE) -> LatencyModel:
    spec, views = adapter.spec, adapter.blocks()
    views = [views[i % len(views)] for i in range(repeat)]  # the first blocks (weights do not matter)
    c, h, p, n_max = spec.embed_dim, spec.num_heads, spec.num_prefix, spec.num_tokens
    backend, precision = parse_engine(engine)
    grid = token_grid(min(8, n_max), n_max, grid_points, default_tile(backend, precision))
    sizes = sorted({max(4, round(spec.num_patches / f)) for f in np.geomspace(1, 6, max(1, reducer_points))}) if method != "none" else []
    rng = np.random.default_rng(0)
    rnd = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    jobs = []  # (curve, tokens, session, feed)
    with tempfile.TemporaryDirectory(prefix="edgeprune-latency-") as tmp:
        def session(name: str, module: nn.Module, args: tuple, dynamic: bool = False) -> Any:
            _export(module, args, Path(tmp) / f"{name}.onnx", dynamic)
            return SessionFromOnnx(Path(tmp) / f"{name}.onnx", providers, threads)() if backend == "onnxruntime" else None

        def at_count(path: Path, shared: Any, feed: dict[str, np.ndarray]) -> Any:
            """ONNX Runtime runs every count in the one dynamic session; OpenVINO compiles each."""
            return shared if backend == "onnxruntime" else _StaticOpenVino(path, feed, precision, threads)

        parts = ("attention", "mlp", "prefix_attention") if spec.prefix_head and p > 0 else ("attention", "mlp")
        steps = len(parts) + len(sizes)
        for i, part in enumerate(parts):
            say_progress(progress, f"latency calibration: exporting the {part.replace('_', ' ')} sub-layer ({i + 1}/{steps})")
            sess = session(part, _Chain(views, part, p), (torch.randn(1, n_max, c),), dynamic=True)
            feeds = [(n, {"in0": rnd(1, n, c)}) for n in grid if n > p]
            jobs += [(part, n, at_count(Path(tmp) / f"{part}.onnx", sess, feed), feed) for n, feed in feeds]
        for i, n_tok in enumerate(sizes):
            say_progress(progress, f"latency calibration: exporting the {method} reducer at {n_tok} tokens ({i + len(parts) + 1}/{steps})")
            n, keep = p + n_tok, max(min_tokens(method), n_tok // 2)
            args = [a for _ in range(repeat) for a in (rnd(1, n, c), np.ones((1, n, 1), np.float32), rnd(1, h, n, spec.head_dim), rnd(1, h, n, spec.head_dim))]
            sess = session(f"reducer{n}", _Reduce(method, views[0].scale, p, keep), tuple(map(torch.from_numpy, args)))
            feed = {f"in{j}": a for j, a in enumerate(args)}
            jobs.append(("reducer", n, at_count(Path(tmp) / f"reducer{n}.onnx", sess, feed), feed))
        say_progress(progress, f"latency calibration: timing {len(jobs)} shapes x {runs} runs")
        medians = _time(jobs, runs, warmup)
    pick = lambda curve: [m / repeat for (name, _, _, _), m in zip(jobs, medians) if name == curve]  # noqa: E731
    return LatencyModel(method, {k: getattr(spec, k) for k in BLOCK_DIMS}, [n for n in grid if n > p], pick("attention"),
                        pick("mlp"), [p + s for s in sizes], pick("reducer"), prefix_attention_ms=pick("prefix_attention"))


def _time(jobs: list, runs: int, warmup: int, per_visit: int = 5, settle_s: float = 0.1) -> list[float]:
    """Median ms per job (``(curve, tokens, session, feed)``). Every session has its own thread pool,
    and right after another session ran, its first calls are slow (ViT-B at 2 threads: up to 1.7x for
    ~0.1 s) while a deployed model's one session stays hot: so sessions take turns in shuffled visits
    that settle for ``settle_s`` before timing ``per_visit`` runs of each of their jobs
    (:func:`edgeprune.core.timing.interleaved_times`)."""
    groups: dict[int, list[int]] = {}
    for i, (_, _, session, _) in enumerate(jobs):
        groups.setdefault(id(session), []).append(i)
    calls = [[lambda s=jobs[i][2], feed=jobs[i][3]: s.run(None, feed) for i in group] for group in groups.values()]
    times = interleaved_times(calls, runs=runs, per_visit=per_visit, warmup=warmup, settle_calls=3, settle_s=settle_s)
    medians = [0.0] * len(jobs)
    for group, samples in zip(groups.values(), times):
        for i, t in zip(group, samples):
            medians[i] = float(np.median(t))
    return medians


def calibrate(model: nn.Module, method: str, *, threads: int = 2, providers: Sequence[str] = ("cpu",),
              cache_dir: Optional[Path] = None, refresh: bool = False, progress: Optional[Progress] = None,
              grid_points: int = 8, reducer_points: int = 3, repeat: int = 3, runs: int = 20, warmup: int = 3,
              engine: str = DEFAULT_ENGINE) -> LatencyModel:
    """This machine's latency model for ``model``'s blocks under ``method`` on ``engine`` (an
    :data:`edgeprune.plan.tiles.ENGINE_TILES` name: ``onnxruntime-fp32``, the default, or
    ``openvino-fp32|bf16|fp16``): measured once (about 30 s for ViT-B on 2 cores with ONNX Runtime),
    then read from the cache. A cache file that cannot be read is re-measured with a warning through
    ``progress``; ``refresh`` forces a re-measure."""
    say = functools.partial(say_progress, progress)
    method = method.lower()
    if methods.get(method).family != "reducer":
        raise EdgepruneError(f"latency calibration covers the reducers ({', '.join(methods.REDUCER_METHODS)}), not '{method}'")
    backend, precision = parse_engine(engine)
    if backend == "openvino" and precision != "int8":
        from edgeprune.backends.openvino import require_openvino

        require_openvino()
    elif (backend, precision) != ("onnxruntime", "fp32"):
        raise EdgepruneError(f"latency calibration runs on onnxruntime-fp32 or openvino-fp32|bf16|fp16, not {engine}")
    engine = f"{backend}-{precision}"
    adapter = adapter_for(model)
    info = machine_info(threads, providers, engine)
    material = dict(info, format=CALIBRATION_FORMAT, family=adapter.family, method=method, grid_points=grid_points,
                    reducer_points=reducer_points, repeat=repeat, dims={k: getattr(adapter.spec, k) for k in BLOCK_DIMS})
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir or core_cache_dir("latency")) / f"{adapter.family}-{method}-{key[:16]}.json"
    if path.exists() and not refresh:
        try:
            cached = LatencyModel.from_dict(read_json(path))
            if cached.info.get("key") != key or cached.method != method:
                raise EdgepruneError("cache key mismatch")
            say(f"latency calibration: using cached {path}")
            return cached
        except Exception as exc:  # any unreadable cache is only a reason to measure again
            say(f"warning: ignoring unreadable latency cache {path} ({type(exc).__name__}: {exc}); re-measuring")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > (os.cpu_count() or 1):
        say(f"warning: this machine looks busy (load {load:.1f} on {os.cpu_count()} cores); the timings will include "
            "the contention: calibrate again with refresh when it is idle")
    started = time.perf_counter()
    lm = _measure(adapter, method, threads, providers, grid_points, reducer_points, max(1, repeat), runs, warmup, progress, engine)
    lm.info = dict(info, key=key, family=adapter.family, runs=runs, repeat=repeat, load_average=round(load, 2), calibration_seconds=round(time.perf_counter() - started, 1),
                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    try:
        write_json_atomic(path, lm.to_dict(), indent=1, mkdir=True)
        say(f"latency calibration: {lm.info['calibration_seconds']} s, cached at {path}")
    except EdgepruneError as exc:
        say(f"warning: could not cache the latency model at {path}: {exc}")
    return lm


