"""The demo's outputs: an overlay video, metrics JSON and a plot that appear together or not at all."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

from edgeprune.core.errors import EdgepruneError


def vmrss_mb() -> Optional[float]:
    """Resident memory of this process in MB from /proc/self/status (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def output_paths(out_path: Path) -> tuple[Path, Path, Path]:
    return out_path, out_path.with_name(f"{out_path.stem}.metrics.json"), out_path.with_name(f"{out_path.stem}.plot.png")


def check_outputs(out_path: Path, inputs: list[Path], force: bool) -> None:
    if out_path.suffix.lower() != ".mp4":
        raise EdgepruneError(f"--out {out_path}: the output must be an .mp4 file")
    if out_path.parent.exists() and not out_path.parent.is_dir():
        raise EdgepruneError(f"cannot write --out {out_path}: {out_path.parent} is not a directory")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)  # like export's --out: a new folder is fine
    except OSError as exc:
        raise EdgepruneError(f"cannot write --out {out_path}: {exc.strerror or exc}") from None
    resolved = {p.resolve() for p in inputs}
    for p in output_paths(out_path):
        if p.resolve() in resolved:
            raise EdgepruneError(f"--out {out_path} would overwrite the input {p}")
        if p.is_dir():
            raise EdgepruneError(f"cannot write {p}: it is a directory")
        if p.exists() and not force:
            raise EdgepruneError(f"{p} exists; pass --force to overwrite it")


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def all_or_nothing(out_path: Path) -> Iterator[list[Path]]:
    """Collects the side outputs written inside; any failure removes them (the video writer
    discards its own file), so a failed run leaves nothing beside ``out_path``."""
    created: list[Path] = []
    try:
        yield created
    except OSError as exc:
        _remove(created)
        raise EdgepruneError(f"cannot write outputs beside {out_path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(created)
        raise


def write_side_outputs(created: list[Path], out_path: Path, text: str, plot: Callable[[Path], None]) -> None:
    """The metrics JSON (atomically) and the plot beside ``out_path``, recorded in ``created``."""
    from edgeprune.core.files import write_text_atomic

    _, metrics_path, plot_path = output_paths(out_path)
    created.append(metrics_path)
    write_text_atomic(metrics_path, text)
    created.append(plot_path)
    plot(plot_path)


__all__ = ["all_or_nothing", "check_outputs", "output_paths", "vmrss_mb", "write_side_outputs"]
