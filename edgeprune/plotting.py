"""Latency vs MACs (and accuracy vs MACs) plots for benchmark results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from edgeprune.bench import BenchResult

METHOD_COLORS = {"none": "black", "tome": "tab:blue", "evit": "tab:orange", "gsp": "tab:green"}


def plot_bench(result: BenchResult, path: str | os.PathLike, accuracy: Optional[dict[str, float]] = None) -> Path:
    """Write a PNG: p50 latency vs MACs ratio per artifact; a second panel for accuracy when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = {r.name: accuracy[r.name] for r in result.rows if accuracy and r.name in accuracy}
    ncols = 2 if acc else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.5), squeeze=False)
    ax = axes[0][0]
    for row in result.rows:
        ax.scatter(row.macs_ratio, row.p50_ms, color=METHOD_COLORS.get(row.method, "gray"), label=row.method)
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
                ax2.scatter(row.macs_ratio, acc[row.name], color=METHOD_COLORS.get(row.method, "gray"))
                ax2.annotate(row.name, (row.macs_ratio, acc[row.name]), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax2.set_xlabel("MACs / unreduced")
        ax2.set_ylabel("accuracy")
        ax2.set_title("accuracy vs compute")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
