"""The one place an ONNX graph becomes a runner: ONNX Runtime (cpu, cuda, tensorrt providers) or OpenVINO.

Every runtime path (``Runtime``, ``TemporalRuntime``, calibration, bench, segment, serve) names the
engine it wants as an :class:`EngineChoice` (provider, precision, device) and gets its runner from
:func:`make_runner`, so a new engine is added here once. ``--provider auto`` needs calibrations to
compare, so it is resolved where they are read (:func:`edgeprune.measure.calibrate.resolve_engine`);
without any, :func:`default_engine` applies the rule documented in docs/engines.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional


from edgeprune.backends.base import Runner
from edgeprune.backends.openvino import DEFAULT_DEVICE, PRECISION_HINTS, OpenVinoRunner
from edgeprune.backends.ort import DEFAULT_THREADS, PROVIDER_NAMES, OrtRunner
from edgeprune.core.errors import EdgepruneError

ORT_PROVIDERS = tuple(PROVIDER_NAMES)  # cpu, cuda, tensorrt: ONNX Runtime's execution providers
OPENVINO = "openvino"
AUTO = "auto"
PROVIDERS = (*ORT_PROVIDERS, OPENVINO, AUTO)  # what --provider takes
PRECISIONS = tuple(PRECISION_HINTS)  # fp32, bf16, fp16: OpenVINO's inference precision hints
ORT_PRECISION = "fp32"  # ONNX Runtime runs the exported fp32 graph (reduced precision: `edgeprune build`)
BF16_CAPABILITY = "BF16"  # in OpenVINO's CPU OPTIMIZATION_CAPABILITIES where the CPU has bf16 units (AMX)


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs a set's ONNX graphs: an ONNX Runtime provider, or OpenVINO on a device at a precision."""

    provider: str  # cpu | cuda | tensorrt | openvino
    precision: str = ORT_PRECISION
    device: Optional[str] = None  # OpenVINO's device (CPU, GPU, NPU); None for ONNX Runtime

    @property
    def is_openvino(self) -> bool:
        return self.provider == OPENVINO

    @property
    def key(self) -> str:
        """What a calibration is stored under: ``onnxruntime:cpu``, ``openvino:CPU:bf16``."""
        return f"openvino:{self.device}:{self.precision}" if self.is_openvino else f"onnxruntime:{self.provider}"

    def describe(self) -> str:
        return f"OpenVINO {self.device} {self.precision}" if self.is_openvino else f"ONNX Runtime {self.provider}"

    def check(self) -> "EngineChoice":
        """Itself, or one EdgepruneError line saying why it cannot run here (package, device, provider)."""
        if self.is_openvino:
            from edgeprune.backends.openvino import check_device, require_openvino

            require_openvino()
            check_device(self.device or DEFAULT_DEVICE)
        else:
            from edgeprune.backends.ort import resolve_providers

            resolve_providers([self.provider])
        return self

    def calibration_fields(self) -> dict[str, Any]:
        """What a calibration records of its engine (``provider`` as before, so older readers still work)."""
        fields: dict[str, Any] = {"provider": self.provider, "precision": self.precision}
        if self.is_openvino:
            fields["device"] = self.device
        return fields


def engine_choice(provider: str = "cpu", precision: Optional[str] = None, device: Optional[str] = None) -> EngineChoice:
    """An explicit engine from the command-line names; bad names are one line. ``auto`` is resolved elsewhere."""
    name = (provider or "").lower()
    if name == AUTO:
        raise EdgepruneError("--provider auto is resolved against an engine set's calibrations; "
                             "use edgeprune.measure.calibrate.resolve_engine")
    if name not in PROVIDERS:
        raise EdgepruneError(f"--provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    check_precision(precision)
    if name == OPENVINO:
        return EngineChoice(OPENVINO, precision or ORT_PRECISION, device or DEFAULT_DEVICE)
    if precision not in (None, ORT_PRECISION):
        raise EdgepruneError(f"--precision {precision} runs on --provider openvino; ONNX Runtime runs the fp32 graph "
                             "(fp16 engines for it: `edgeprune build --precision fp16`)")
    if device is not None:
        raise EdgepruneError(f"--device {device} is OpenVINO's device: it needs --provider openvino")
    return EngineChoice(name)


def check_precision(precision: Optional[str]) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise EdgepruneError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def check_provider_options(provider: str, precision: Optional[str], device: Optional[str]) -> None:
    """What a command checks before any slow work: the names, and for an explicit engine that it runs here
    (OpenVINO installed, the device reported, the ONNX Runtime provider present). ``auto`` takes any
    precision and device: they narrow its choice."""
    if (provider or "").lower() == AUTO:
        check_precision(precision)
        return
    engine_choice(provider, precision, device).check()


def openvino_installed() -> bool:
    from edgeprune.backends.openvino import openvino_version

    return openvino_version() is not None


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports bf16 units (AMX or AVX-512 bf16) on this CPU."""
    from edgeprune.backends.openvino import core

    try:
        return BF16_CAPABILITY in list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # no OpenVINO, or a build without the CPU plugin
        return False


def default_engine(precision: Optional[str] = None, device: Optional[str] = None) -> tuple[EngineChoice, str]:
    """``--provider auto`` with nothing calibrated to compare: OpenVINO when it is installed and the device
    is a CPU with bf16 units (there OpenVINO's bf16 is ~4x ONNX Runtime's fp32 on ViTs), else ONNX Runtime's
    CPU provider. Returns the engine and why it was picked."""
    check_precision(precision)
    wanted = device or DEFAULT_DEVICE
    only_openvino = [f"--{flag} {value}" for flag, value in (("precision", precision), ("device", device))
                     if value is not None and value != {"precision": ORT_PRECISION, "device": "CPU"}[flag]]
    if only_openvino:  # what ONNX Runtime cannot run narrows the choice to OpenVINO
        from edgeprune.backends.openvino import require_openvino

        require_openvino()
        return (EngineChoice(OPENVINO, precision or ORT_PRECISION, wanted),
                f"nothing calibrated to compare; {' and '.join(only_openvino)} only OpenVINO runs")
    if not openvino_installed():
        return EngineChoice("cpu"), "nothing calibrated to compare, and OpenVINO is not installed"
    if cpu_has_bf16():
        return (EngineChoice(OPENVINO, precision or "bf16", "CPU"),
                "nothing calibrated to compare; OpenVINO is installed and this CPU has bf16 units")
    return EngineChoice("cpu"), "nothing calibrated to compare; this CPU has no bf16 units, where OpenVINO gains little"


def make_runner(path: str | os.PathLike, provider: str | EngineChoice = "cpu", threads: Optional[int] = DEFAULT_THREADS,
                *, device: Optional[str] = None, precision: Optional[str] = None, spinning: bool = True,
                provider_options: Optional[Mapping[str, Mapping[str, str]]] = None) -> Runner:
    """A runner (not yet active) of the ONNX file ``path`` on ``provider``. ``spinning`` is ONNX Runtime's
    intra-op spin-wait (runtimes turn it off); OpenVINO has no such switch. ``provider_options`` go to ONNX
    Runtime's execution providers."""
    engine = provider if isinstance(provider, EngineChoice) else engine_choice(provider, precision, device)
    if engine.is_openvino:
        if provider_options:
            raise EdgepruneError("provider options are ONNX Runtime's; OpenVINO takes a device and a precision")
        return OpenVinoRunner(path, engine.device or DEFAULT_DEVICE, engine.precision, threads)
    return OrtRunner(path, providers=[engine.provider], threads=threads, spinning=spinning,
                     provider_options=provider_options)


def auto_line(engine: EngineChoice, reason: str) -> str:
    """What a command prints when ``--provider auto`` picked ``engine``."""
    return f"--provider auto: {engine.describe()} ({reason})"


def runner_label(runner: Any) -> str:
    """What really runs an active runner: ONNX Runtime's first provider (it falls back to the CPU when an
    accelerator's fails to load), ``OpenVINO CPU f32`` (the precision the device runs), or the backend's name."""
    session = getattr(runner, "session", None)
    if hasattr(session, "get_providers"):
        return str(session.get_providers()[0])
    if isinstance(runner, OpenVinoRunner) and runner.compiled is not None:
        from edgeprune.backends.openvino import effective_precision

        loader = runner.loader
        device = getattr(loader, "device", None) or DEFAULT_DEVICE
        runs = effective_precision(runner.compiled) or getattr(loader, "precision", "?")
        return f"OpenVINO {device} {runs}"
    return str(getattr(runner, "name", "unknown"))


__all__ = ["AUTO", "auto_line", "EngineChoice", "OPENVINO", "ORT_PROVIDERS", "PRECISIONS", "PROVIDERS",
           "check_precision", "check_provider_options", "cpu_has_bf16", "default_engine", "engine_choice",
           "make_runner", "openvino_installed", "runner_label"]
