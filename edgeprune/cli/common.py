"""Pieces the commands share: the console, error exit, and option groups."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

# Piped output (CI logs, files) gets a wide fixed width so tables are not squeezed to 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)

# Option groups, reused by every command that runs an engine.
ThreadsOpt = typer.Option(2, "--threads", min=1, help="Intra-op threads for ONNX Runtime.")
ProviderOpt = typer.Option(
    "cpu", "--provider", help="ONNX Runtime execution provider: cpu, cuda or tensorrt."
)
BatchOpt = typer.Option(1, "--batch", min=1, help="Batch size.")


def parse_int_list(text: Optional[str], what: str) -> Optional[list[int]]:
    from edgeprune.errors import EdgepruneError

    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EdgepruneError(f"{what} expects comma-separated integers, got '{text}'") from None
