"""Latency-calibrated planning: measure this machine's per-block cost once, then plan against it.

MACs say little about batch-1 latency on a CPU: small matmuls run far below peak and every
reduction point has a fixed cost. So :func:`calibrate` exports the model's first blocks as two small
ONNX graphs with a symbolic token axis (attention sub-layers; MLP sub-layers) plus the method's
reducer at a few static sizes, times them in ONNX Runtime at a grid of token counts, and caches the
curves as JSON keyed by the model's block dimensions, the method and the machine/runtime.
:class:`LatencyModel` interpolates those curves to predict a plan's latency ratio, and
:func:`search_plan` picks the reduction schedule that retains the most information within a target.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import random
import tempfile
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.plan import TokenPlan, build_plan, min_tokens
from edgeprune.reducers import METHODS, REDUCERS, ReductionContext
from edgeprune.reducers.common import round_sizes
from edgeprune.spec import ViTSpec

CALIBRATION_FORMAT = 1
BLOCK_DIMS = ("embed_dim", "num_heads", "head_dim", "mlp_hidden", "num_prefix", "num_patches")


def _interp(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Piecewise-linear through the points, extended linearly past both ends, never negative."""
    if len(xs) == 1:
        return float(ys[0])
    if xs[0] <= x <= xs[-1]:
        return float(np.interp(x, xs, ys))
    i = 0 if x < xs[0] else -2
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return max(0.0, float(ys[i] + slope * (x - xs[i])))


def _curve(ms: Sequence[float]) -> np.ndarray:
    """Measured medians made non-decreasing, so planning never relies on timing noise that makes
    more tokens look cheaper (the raw points stay in the model and its JSON)."""
    return np.maximum.accumulate(np.asarray(ms, dtype=float))


@dataclass
class LatencyModel:
    """Measured ms per sub-layer vs token count (prefix tokens included; a timed call's median
    divided by the sub-layers it holds) for one block shape, one reduction method and one machine.
    Patch embedding and head are not modelled: they cost the same in every plan, so ratios are
    ratios of the blocks' time and slightly understate the end-to-end ratio."""

    method: str
    dims: dict[str, int]  # BLOCK_DIMS of the spec the curves belong to
    tokens: list[int]  # grid of the attention and MLP curves
    attention_ms: list[float]
    mlp_ms: list[float]
    reducer_tokens: list[int]  # tokens entering one reduction round
    reducer_ms: list[float]
    info: dict[str, Any] = field(default_factory=dict)  # machine, libraries, cache key, timing
    # Attention sub-layer for the prefix queries only (the last block under prefix_only_last), on
    # the same token grid; empty when the model's head reads every token.
    prefix_attention_ms: list[float] = field(default_factory=list)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "head_dim" not in self.dims and {"embed_dim", "num_heads"} <= set(self.dims):
            # Curves measured before head widths were recorded: those models all split evenly.
            self.dims = dict(self.dims, head_dim=self.dims["embed_dim"] // self.dims["num_heads"])
        n = len(self.tokens)
        ok = n > 0 and len(self.attention_ms) == len(self.mlp_ms) == n and len(self.reducer_tokens) == len(self.reducer_ms)
        ok = ok and (self.method == "none" or len(self.reducer_ms) > 0) and len(self.prefix_attention_ms) in (0, n)
        ok = ok and bool(np.all(np.diff(self.tokens) > 0) and np.all(np.diff(self.reducer_tokens) > 0))
        timings = [*self.attention_ms, *self.mlp_ms, *self.reducer_ms, *self.prefix_attention_ms]
        if not (ok and all(np.isfinite(v) and v > 0 for v in timings)):
            raise EdgepruneError("malformed latency model: curve lengths, token grids or timings")
        self._xs, self._rx = np.asarray(self.tokens, float), np.asarray(self.reducer_tokens, float)
        self._att, self._mlp, self._red = _curve(self.attention_ms), _curve(self.mlp_ms), _curve(self.reducer_ms)
        self._pre = _curve(self.prefix_attention_ms) if self.prefix_attention_ms else None

    def attention(self, n: float) -> float:
        return _interp(n, self._xs, self._att)

    def mlp(self, n: float) -> float:
        return _interp(n, self._xs, self._mlp)

    def reducer(self, n_in: float) -> float:
        """One reduction round (about half the patch tokens go) entering with ``n_in`` tokens."""
        return _interp(n_in, self._rx, self._red) if len(self._rx) else 0.0

    def reduction_ms(self, n_in: int, n_out: int) -> float:
        """A reduction point; ToMe and gsp take several halving rounds for big steps, as they run."""
        p = self.dims["num_prefix"]
        if n_out >= n_in:
            return 0.0
        if self.method in ("evit", "prune-merge"):  # one ranking, whatever the step
            return self.reducer(n_in)
        total, n = 0.0, n_in - p
        for r in round_sizes(n, n_out - p):
            total += self.reducer(p + n)
            n -= r
        return total

    def block_ms(self, n_in_total: int, n_out_total: int) -> float:
        """Attention at ``n_in_total`` tokens, the reducer if tokens drop, MLP at ``n_out_total``."""
        key = (n_in_total, n_out_total)
        if key not in self._memo:
            self._memo[key] = self.attention(n_in_total) + self.reduction_ms(n_in_total, n_out_total) + self.mlp(n_out_total)
        return self._memo[key]

    def plan_ms(self, plan: TokenPlan) -> float:
        """Predicted ms of the plan's blocks (embedding and head excluded, see the class)."""
        if {k: getattr(plan.spec, k) for k in BLOCK_DIMS} != self.dims:
            raise EdgepruneError("the latency model was calibrated for a different model configuration")
        if plan.method != self.method and plan.reduction_points:
            raise EdgepruneError(f"the latency model was calibrated for '{self.method}', the plan uses '{plan.method}'")
        p = plan.spec.num_prefix
        blocks = [self.block_ms(p + plan.tokens_in(i), p + k) for i, k in enumerate(plan.keep)]
        if plan.prefix_only_last:
            if self._pre is None:
                raise EdgepruneError("the latency model has no prefix-only attention curve; calibrate again (refresh)")
            blocks[-1] = _interp(p + plan.tokens_in(plan.spec.depth - 1), self._xs, self._pre) + self.mlp(p)
        return sum(blocks)

    def ratio(self, plan: TokenPlan) -> float:
        """Predicted latency of ``plan`` over the unreduced model's: ``build_plan``'s latency_model."""
        n = plan.spec.num_tokens
        return self.plan_ms(plan) / (plan.spec.depth * self.block_ms(n, n))

    __call__ = ratio

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyModel":
        if d.get("format") != CALIBRATION_FORMAT:
            raise EdgepruneError(f"unsupported latency model format {d.get('format')!r}")
        lists = {k: [(int if k.endswith("tokens") else float)(v) for v in d.get(k, [])]
                 for k in ("tokens", "attention_ms", "mlp_ms", "reducer_tokens", "reducer_ms", "prefix_attention_ms")}
        return cls(method=str(d["method"]), dims={k: int(v) for k, v in d["dims"].items() if k in BLOCK_DIMS},
                   info=dict(d.get("info", {})), **lists)


def machine_info(threads: int, providers: Sequence[str]) -> dict[str, Any]:
    """What the timings depend on besides the model: CPU, runtime versions, threads, providers."""
    import onnxruntime as ort

    cpu = platform.processor()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "machine": platform.machine(), "system": platform.system(), "onnxruntime": ort.__version__,
            "torch": torch.__version__.split("+")[0], "providers": [p.lower() for p in providers], "threads": threads}


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
        self.fn, self.scale, self.num_prefix, self.keep = REDUCERS[method], scale, num_prefix, keep

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs: list[torch.Tensor] = []
        for x, size, q, k in zip(args[::4], args[1::4], args[2::4], args[3::4]):
            outs += self.fn(x, size, ReductionContext(q, k, self.scale, self.num_prefix, None, {}), self.keep)[:2]
        return tuple(outs)


def _export(module: nn.Module, args: tuple, path: Path, dynamic: bool = False) -> None:
    from edgeprune.exporters.onnx_export import trace_to_onnx

    shapes = ({1: torch.export.Dim("tokens", min=2, max=max(4096, args[0].shape[1]))},) if dynamic else None
    trace_to_onnx(module, args, path, input_names=[f"in{i}" for i in range(len(args))], dynamic_shapes=shapes)


def _measure(adapter: Any, method: str, threads: int, providers: Sequence[str], grid_points: int,
             reducer_points: int, repeat: int, runs: int, warmup: int, say: Callable[[str], None]) -> LatencyModel:
    from edgeprune.engines.ort import SessionFromOnnx

    spec, views = adapter.spec, adapter.blocks()
    views = [views[i % len(views)] for i in range(repeat)]  # the first blocks (weights do not matter)
    c, h, p, n_max = spec.embed_dim, spec.num_heads, spec.num_prefix, spec.num_tokens
    grid = sorted({int(round(v)) for v in np.linspace(min(8, n_max), n_max, max(2, grid_points))})
    sizes = sorted({max(4, round(spec.num_patches / f)) for f in np.geomspace(1, 6, max(1, reducer_points))}) if method != "none" else []
    rng = np.random.default_rng(0)
    rnd = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    jobs = []  # (curve, tokens, session, feed)
    with tempfile.TemporaryDirectory(prefix="edgeprune-latency-") as tmp:
        def session(name: str, module: nn.Module, args: tuple, dynamic: bool = False) -> Any:
            _export(module, args, Path(tmp) / f"{name}.onnx", dynamic)
            return SessionFromOnnx(Path(tmp) / f"{name}.onnx", providers, threads)()

        parts = ("attention", "mlp", "prefix_attention") if spec.prefix_head and p > 0 else ("attention", "mlp")
        steps = len(parts) + len(sizes)
        for i, part in enumerate(parts):
            say(f"latency calibration: exporting the {part.replace('_', ' ')} sub-layer ({i + 1}/{steps})")
            sess = session(part, _Chain(views, part, p), (torch.randn(1, n_max, c),), dynamic=True)
            jobs += [(part, n, sess, {"in0": rnd(1, n, c)}) for n in grid if n > p]
        for i, n_tok in enumerate(sizes):
            say(f"latency calibration: exporting the {method} reducer at {n_tok} tokens ({i + len(parts) + 1}/{steps})")
            n, keep = p + n_tok, max(min_tokens(method), n_tok // 2)
            args = [a for _ in range(repeat) for a in (rnd(1, n, c), np.ones((1, n, 1), np.float32), rnd(1, h, n, spec.head_dim), rnd(1, h, n, spec.head_dim))]
            sess = session(f"reducer{n}", _Reduce(method, views[0].scale, p, keep), tuple(map(torch.from_numpy, args)))
            jobs.append(("reducer", n, sess, {f"in{j}": a for j, a in enumerate(args)}))
        say(f"latency calibration: timing {len(jobs)} shapes x {runs} runs")
        medians = _time(jobs, runs, warmup)
    pick = lambda curve: [m / repeat for (name, _, _, _), m in zip(jobs, medians) if name == curve]  # noqa: E731
    return LatencyModel(method, {k: getattr(spec, k) for k in BLOCK_DIMS}, [n for n in grid if n > p], pick("attention"),
                        pick("mlp"), [p + s for s in sizes], pick("reducer"), prefix_attention_ms=pick("prefix_attention"))


def _time(jobs: list, runs: int, warmup: int, per_visit: int = 5, settle_s: float = 0.1) -> list[float]:
    """Median ms per job. Every session has its own thread pool, and right after another session ran,
    its first calls are slow (ViT-B at 2 threads: up to 1.7x for ~0.1 s) while a deployed model's
    one session stays hot. So sessions take turns in shuffled visits, each visit runs untimed for
    ``settle_s`` first, then times each of its jobs ``per_visit`` times, shuffled: drift between
    visits and along the token grid hits all points alike."""
    sessions: dict[int, list[int]] = {}
    for i, (_, _, session, _) in enumerate(jobs):
        sessions.setdefault(id(session), []).append(i)
    runs, times = max(1, runs), [[] for _ in jobs]
    shuffler, visits = random.Random(0), list(sessions.values())
    for visit in range(-(-runs // per_visit)):
        shuffler.shuffle(visits)
        for group in visits:
            session, calls, start = jobs[group[0]][2], 0, time.perf_counter()
            while calls < max(warmup * len(group) if visit == 0 else 0, 3) or time.perf_counter() - start < settle_s:
                session.run(None, jobs[group[calls % len(group)]][3])
                calls += 1
            for _ in range(min(per_visit, runs - visit * per_visit)):
                for i in shuffler.sample(group, len(group)):
                    start = time.perf_counter()
                    session.run(None, jobs[i][3])
                    times[i].append((time.perf_counter() - start) * 1e3)
    return [float(np.median(t)) for t in times]


def calibrate(model: nn.Module, method: str, *, threads: int = 2, providers: Sequence[str] = ("cpu",),
              cache_dir: Optional[Path] = None, refresh: bool = False, progress: Optional[Callable[[str], None]] = None,
              grid_points: int = 8, reducer_points: int = 3, repeat: int = 3, runs: int = 20, warmup: int = 3) -> LatencyModel:
    """This machine's latency model for ``model``'s blocks under ``method``: measured once (about
    30 s for ViT-B on 2 cores), then read from the cache. A cache file that cannot be read is
    re-measured with a warning through ``progress``; ``refresh`` forces a re-measure."""
    from edgeprune.exporters import adapter_for

    say = progress or (lambda _msg: None)
    method = method.lower()
    if method not in METHODS:
        raise EdgepruneError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    adapter = adapter_for(model)
    info = machine_info(threads, providers)
    material = dict(info, format=CALIBRATION_FORMAT, family=adapter.family, method=method, grid_points=grid_points,
                    reducer_points=reducer_points, repeat=repeat, dims={k: getattr(adapter.spec, k) for k in BLOCK_DIMS})
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    root = Path(os.environ.get("EDGEPRUNE_CACHE_DIR") or Path.home() / ".cache" / "edgeprune").expanduser() / "latency"
    path = Path(cache_dir or root) / f"{adapter.family}-{method}-{key[:16]}.json"
    if path.exists() and not refresh:
        try:
            cached = LatencyModel.from_dict(json.loads(path.read_text()))
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
    lm = _measure(adapter, method, threads, providers, grid_points, reducer_points, max(1, repeat), runs, warmup, say)
    lm.info = dict(info, key=key, family=adapter.family, runs=runs, repeat=repeat, load_average=round(load, 2), calibration_seconds=round(time.perf_counter() - started, 1),
                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(lm.to_dict(), f, indent=1)
        os.replace(tmp, path)
        say(f"latency calibration: {lm.info['calibration_seconds']} s, cached at {path}")
    except OSError as exc:
        say(f"warning: could not cache the latency model at {path}: {exc}")
    return lm


def with_prediction(plan: TokenPlan, latency_model: LatencyModel, **extra: Any) -> TokenPlan:
    """``plan`` with its predicted latency ratio recorded in ``target`` (for the manifest)."""
    target = dict(plan.target, predicted_latency_ratio=round(latency_model.ratio(plan), 4),
                  latency_model=latency_model.info.get("key", "")[:16], **extra)
    return dataclasses.replace(plan, target=target)


def retained_information(plan: TokenPlan) -> float:
    """Sum over blocks of log(tokens the block's MLP sees): the planner's accuracy proxy.

    MACs alone rank one late cut to a handful of tokens above a moderate early one (they process
    about as many token-blocks), yet a block that sees 6 tokens has lost most of the image; the log
    makes each halving cost the same wherever it happens and punishes near-empty blocks."""
    p = plan.spec.num_prefix
    return float(sum(np.log(p + k) for k in plan.keep))


def search_plan(model_or_spec: Union[nn.Module, ViTSpec], method: str, latency: float, latency_model: LatencyModel, *,
                max_points: int = 3, prop_attn: Optional[bool] = None, options: Optional[dict[str, Any]] = None,
                prefix_only_last: bool = False) -> TokenPlan:
    """The plan within ``latency`` (predicted ratio) that retains the most information (see
    :func:`retained_information`; fewer reduction points on ties), over every set of 1..``max_points`` reduction points among
    blocks 0..depth-2 plus ToMe's constant schedule. Each point costs a fixed reducer time on a
    batch-1 engine, so the best schedule depends on the machine, which is why it is searched."""
    from edgeprune.exporters import adapter_for

    spec = model_or_spec if isinstance(model_or_spec, ViTSpec) else adapter_for(model_or_spec).spec
    method = method.lower()
    if method == "none" or method != latency_model.method:
        raise EdgepruneError(f"cannot plan '{method}' with a latency model calibrated for '{latency_model.method}'")
    if not 0 < latency <= 1:
        raise EdgepruneError(f"the latency target must be in (0, 1], got {latency}")
    blocks = range(max(1, spec.depth - 2 if prefix_only_last else spec.depth - 1))
    schedules = [("points", list(c)) for k in range(1, max_points + 1) for c in combinations(blocks, k)]
    schedules.append(("constant", None))
    common = dict(prop_attn=prop_attn, options=options, latency_model=latency_model.ratio, prefix_only_last=prefix_only_last)

    def attempt(schedule: str, pts: Optional[list[int]], **budget: Any) -> Optional[TokenPlan]:
        try:
            return build_plan(spec, method, points=pts, schedule=schedule, **common, **budget)
        except EdgepruneError:  # infeasible for this schedule
            return None

    feasible = [plan for schedule, pts in schedules if (plan := attempt(schedule, pts, latency=latency)) is not None]
    if not feasible:
        floor = [latency_model.ratio(p) for schedule, pts in schedules if (p := attempt(schedule, pts, tokens=min_tokens(method))) is not None]
        raise EdgepruneError(f"no reduction schedule reaches a latency ratio of {latency} with '{method}' on this machine "
                             f"(the smallest achievable is {min(floor, default=1.0):.3f})")
    best = max(feasible, key=lambda p: (retained_information(p), -len(p.reduction_points)))
    return with_prediction(best, latency_model, planner="latency-search", schedules_searched=len(schedules))
