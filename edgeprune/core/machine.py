"""What measurements depend on: this machine and the libraries installed."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def library_versions() -> dict[str, str]:
    import importlib.metadata as md  # stdlib; imported here as only manifests need it

    versions = {"python": platform.python_version()}
    for dist in ("edgeprune", "torch", "timm", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return versions


def _version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return ""


def machine_fingerprint() -> dict[str, Any]:
    """What a latency calibration depends on: another CPU, core count, OS or ORT makes it stale."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "platform": platform.platform(), "onnxruntime": _version("onnxruntime")}
