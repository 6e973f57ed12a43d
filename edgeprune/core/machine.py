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


CPUINFO = Path("/proc/cpuinfo")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")  # Jetson and other aarch64 boards name themselves here
_ARM_IMPLEMENTERS = {"0x41": "ARM", "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple", "0x48": "HiSilicon"}
_ARM_PARTS = {"0xd08": "Cortex-A72", "0xd0b": "Cortex-A76", "0xd42": "Cortex-A78AE", "0xd41": "Cortex-A78",
              "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd4f": "Neoverse-V2", "0x004": "Carmel"}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def cpu_name() -> str:
    """This CPU's name: x86's ``model name``; on aarch64 the ``Hardware`` line, the board's device-tree
    model (``NVIDIA Jetson AGX Orin Developer Kit``) or the core's implementer and part; else what
    :mod:`platform` says."""
    fields: dict[str, str] = {}
    for line in _read(CPUINFO).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() not in fields and value.strip():
            fields[key.strip().lower()] = value.strip()
    if fields.get("model name"):
        return fields["model name"]
    if fields.get("hardware"):
        return fields["hardware"]
    board = _read(DEVICE_TREE_MODEL).replace("\x00", "").strip()
    if board:
        return board
    part = fields.get("cpu part", "").lower()
    if part:
        maker = _ARM_IMPLEMENTERS.get(fields.get("cpu implementer", "").lower(), fields.get("cpu implementer", ""))
        return " ".join(x for x in (maker, _ARM_PARTS.get(part, f"part {part}")) if x)
    return platform.processor() or platform.machine()


def machine_fingerprint() -> dict[str, Any]:
    """What a latency calibration depends on: another CPU, core count, OS or ORT makes it stale."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "onnxruntime": _version("onnxruntime")}
