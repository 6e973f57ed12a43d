"""Latency vs MACs (and accuracy vs MACs) plots for benchmark results, speed/quality trade-offs, overlay sheets."""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

from edgeprune.core.files import write_atomic
from edgeprune.measure.bench import BenchResult
from edgeprune.plan import methods

if TYPE_CHECKING:
    import numpy as np



def plot_bench(result: BenchResult, path: str | os.PathLike, accuracy: Optional[dict[str, float]] = None,
               accuracy_label: str = "accuracy") -> Path:
    """Write a PNG: p50 latency vs MACs ratio per artifact; a second panel for accuracy when given."""
    from matplotlib.figure import Figure  # deferred: matplotlib is needed only for plots

    acc = {r.name: accuracy[r.name] for r in result.rows if accuracy and r.name in accuracy}
    ncols = 2 if acc else 1
    fig = Figure(figsize=(6 * ncols, 4.5))
    axes = fig.subplots(1, ncols, squeeze=False)
    ax = axes[0][0]
    for row in result.rows:
        ax.scatter(row.macs_ratio, row.p50_ms, color=methods.color(row.method), label=row.method)
        ax.annotate(f"{row.name} ({row.speedup:.2f}x)", (row.macs_ratio, row.p50_ms), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("MACs / unreduced")
    ax.set_ylabel(f"p50 latency, ms (batch {result.batch}, {result.threads} threads)")
    ax.set_title("latency vs compute")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    if acc:
        ax2 = axes[0][1]
        for row in result.rows:
            if row.name in acc:
                ax2.scatter(row.macs_ratio, acc[row.name], color=methods.color(row.method))
                ax2.annotate(row.name, (row.macs_ratio, acc[row.name]), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax2.set_xlabel("MACs / unreduced")
        ax2.set_ylabel(accuracy_label)
        ax2.set_title(f"{accuracy_label.split(' (')[0]} vs compute")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (higher is better on each), by ascending x."""
    front, best_y = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return front[::-1]


TRADEOFF_AXES = {"speedup": "speedup vs unreduced (median per-round ratio)",
                  "macs_ratio": "MACs, fraction of unreduced (axis reversed: cheaper to the right)"}


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str,
                  hlines: Sequence[float] = (98.0, 95.0), vline: Optional[float] = 1.4, zoom: Optional[float] = 90.0,
                  x: str = "speedup") -> Path:
    """Speedup (or MACs, ``x="macs_ratio"``) vs quality kept (%) per plan, one colour per method,
    budgets as labels, Pareto front drawn: the acceptance region (above the lines, beyond the
    vertical) is visible at a glance. A second panel zooms on kept >= ``zoom`` %, where the
    thresholds are. ``rows`` need method, kept_pct, label and the ``x`` key."""
    from matplotlib.figure import Figure  # deferred: matplotlib is needed only for plots

    markers = dict(zip(methods.TOKEN_METHODS, "*osD^vP"))
    panels = 2 if zoom is not None else 1
    fig = Figure(figsize=(7.5 * panels, 5))
    axes = fig.subplots(1, panels, squeeze=False)
    if x not in TRADEOFF_AXES:
        raise ValueError(f"x must be one of {', '.join(TRADEOFF_AXES)}, got {x!r}")
    sign = -1.0 if x == "macs_ratio" else 1.0  # fewer MACs is better: the front runs the other way
    front = [(sign * a, b) for a, b in pareto_front([(sign * r[x], r["kept_pct"]) for r in rows])]
    for k, ax in enumerate(axes[0]):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            ax.scatter([r[x] for r in mine], [r["kept_pct"] for r in mine], label=method, s=60 if method == "none" else 30,
                       color=methods.color(method), marker=markers.get(method, "x"), zorder=3)
            for r in mine:
                if k == 0 or r["kept_pct"] >= zoom:
                    ax.annotate(r["label"], (r[x], r["kept_pct"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if len(front) > 1:
            ax.step(*zip(*front), where="pre", color="gray", linewidth=1, linestyle="--", label="Pareto front", zorder=2)
        for y in hlines:
            ax.axhline(y, color="tab:red" if y == max(hlines) else "tab:orange", linewidth=0.8, linestyle=":")
            ax.annotate(f"{y:g}%", (1.0, y), xycoords=("axes fraction", "data"), fontsize=7, xytext=(-24, 2), textcoords="offset points")
        if vline:
            ax.axvline(vline, color="tab:red", linewidth=0.8, linestyle=":")
        ax.set_xlabel(TRADEOFF_AXES[x])
        ax.set_ylabel("mIoU kept, % of unreduced")
        ax.grid(alpha=0.3)
        if k == 1:
            top = max(r["kept_pct"] for r in rows)
            ax.set_ylim(zoom, max(top, 100.0) + 0.3)
            xs = [r[x] for r in rows if r["kept_pct"] >= zoom] + ([vline] if vline else [])
            ax.set_xlim(min(xs) - 0.05, max(xs) + 0.1)
        if x == "macs_ratio":
            ax.invert_xaxis()
            ax.set_title(f"zoom: kept >= {zoom:g}%", fontsize=10)
    axes[0][0].set_title(title, fontsize=10)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def plot_panels(panels: Sequence[tuple[str, "np.ndarray"]], path: str | os.PathLike, *, title: str = "",
                legend: Optional[Sequence[tuple[str, Sequence[int]]]] = None) -> Path:
    """One row of titled RGB images (an input and overlays of several models) with a class legend."""
    from matplotlib.figure import Figure  # deferred: matplotlib is needed only for plots
    from matplotlib.patches import Patch

    h, w = panels[0][1].shape[:2]
    width = 3.0 * w / max(h, w) + 0.2
    fig = Figure(figsize=(width * len(panels), 3.0 * h / max(h, w) + 0.9))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, image) in zip(axes[0], panels):
        ax.imshow(image)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if legend:
        handles = [Patch(color=[c / 255 for c in rgb], label=n) for n, rgb in legend]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if legend else 0, 1, 0.9 if title else 1))
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    """A PNG of ``fig`` (a bare :class:`matplotlib.figure.Figure`: no pyplot state to close), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".tmp.png")


def plot_timeline(path: str | os.PathLike, x: Sequence[int], budgets: Mapping[str, Sequence[float]],
                  latencies: Mapping[str, Sequence[float]], target_ms: float | Sequence[float], *, title: str,
                  budget_label: str = "budget (MACs ratio)", x_label: str = "frame") -> None:
    """Two stacked panels over time: budget per series (steps) and latency per series, with the target
    (one value, or one per frame)."""
    from matplotlib.figure import Figure  # deferred: matplotlib is needed only for plots

    fig = Figure(figsize=(9, 5.5))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for label, values in budgets.items():
        ax1.step(x, values, where="post", lw=1, label=label)
    ax1.set_ylabel(budget_label)
    ax1.set_ylim(0, 1.05)
    ax1.grid(alpha=0.3)
    if len(budgets) > 1:
        ax1.legend(fontsize=7, loc="lower right")
    for (label, values), colour in zip(latencies.items(), ("tab:orange", "tab:green", "tab:purple")):
        ax2.plot(x, values, lw=0.8, color=colour, label=label)
    if isinstance(target_ms, (int, float)):
        ax2.axhline(target_ms, color="red", ls="--", lw=1, label=f"target {target_ms:.1f} ms")
    else:  # a target that changes during the run (the demo's load step)
        ax2.step(x, target_ms, where="post", color="red", ls="--", lw=1, label="target")
    ax2.set_xlabel(x_label)
    ax2.set_ylabel("latency, ms")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
