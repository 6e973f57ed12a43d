"""OpenVINO backend: a compiled-model loader and a runner, beside ONNX Runtime's (Polygraphy style).

The loader compiles an ONNX file for an OpenVINO device (``CPU``, ``GPU``, ``NPU``, ...) with the
precision given as ``INFERENCE_PRECISION_HINT`` (fp32 -> f32, bf16, fp16 -> f16), ``PERFORMANCE_HINT``
LATENCY and ``INFERENCE_NUM_THREADS``; or imports a blob written by ``CompiledModel.export_model()``
(what ``edgeprune build --backend openvino`` stores), which skips compilation. A blob is tied to the
OpenVINO version that wrote it: ``edgeprune.engines.build`` refuses one from another version.

Low precision keeps token decisions exact: before an ONNX graph is compiled at bf16 or fp16, the
nodes that the shared rule of :mod:`edgeprune.backends.precision` keeps in fp32 for ONNX Runtime
and TensorRT (decisions, what they read, the residual stream, norms and softmax) get OpenVINO's
``disable_fp16_compression`` runtime attribute, which the CPU and GPU plugins honour for both bf16 and
f16 inference; the matmuls of attention and MLP still run at the lower precision. On a Xeon,
bf16 without it agrees with fp32 on 96.1 % of a ToMe segmenter's label pixels (NOTES.md).

openvino is imported only inside functions: it is a heavy optional library (the ``openvino`` extra),
deferred on purpose so that importing edgeprune, and every command that does not run OpenVINO,
neither needs it nor pays for loading it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.backends.base import Runner
from edgeprune.core.errors import EdgepruneError, first_line

OPENVINO_INSTALL_HINT = 'pip install "edgeprune[openvino]"'
DEFAULT_DEVICE = "CPU"
DEFAULT_THREADS = 2
# edgeprune precision -> OpenVINO's INFERENCE_PRECISION_HINT. The hint lowers an fp32 graph; a device
# without the unit (no bf16/fp16 on this CPU) runs f32 instead, which ``effective_precision`` reports.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# OpenVINO element type name -> ONNX Runtime style type string (what OrtRunner.input_metadata reports)
ORT_TYPE_NAMES = {"f32": "float", "f16": "float16", "bf16": "bfloat16", "i8": "int8", "u8": "uint8",
                  "i32": "int32", "i64": "int64", "boolean": "bool"}


def openvino_version() -> Optional[str]:
    """OpenVINO's full build string (the version a compiled blob is tied to), or None when not installed."""
    try:
        import openvino

        return str(openvino.get_version())
    except Exception:  # a broken install raises more than ImportError
        return None


def require_openvino():
    """The openvino module, or a one-line EdgepruneError naming the package to install."""
    try:
        import openvino

        return openvino
    except Exception as exc:
        raise EdgepruneError(f"OpenVINO is not available ({first_line(exc)}); install the openvino package: "
                             f"{OPENVINO_INSTALL_HINT}") from None


def ov_message(exc: BaseException) -> str:
    """One line of an OpenVINO exception: its text is a stack of 'Exception from src/...' lines
    with the reason last."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from ")]
    return (useful or lines or [type(exc).__name__])[-1]


_CORE = None


def core() -> Any:
    """One ``openvino.Core`` per process (creating one loads the device plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = require_openvino().Core()
    return _CORE


def available_devices() -> list[str]:
    return list(core().available_devices)


def check_device(device: str) -> str:
    """``device`` when OpenVINO reports it here (``GPU`` also names ``GPU.0``...), else one line naming those it does."""
    devices = available_devices()
    if device in devices or device in {d.split(".")[0] for d in devices}:
        return device
    raise EdgepruneError(f"OpenVINO device {device!r} is not available here; OpenVINO reports: {', '.join(devices) or 'none'}")


def device_name(device: str) -> Optional[str]:
    try:
        return str(core().get_property(device, "FULL_DEVICE_NAME"))
    except Exception:
        return None


def compile_config(precision: str, threads: Optional[int]) -> dict[str, Any]:
    if precision not in PRECISION_HINTS:
        raise EdgepruneError(f"OpenVINO precision must be one of {', '.join(PRECISION_HINTS)}, got {precision!r}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


# ov::DisableFP16Compression's key in a node's rt_info ("<name>_<version>" of its type info).
KEEP_FP32_KEY = "disable_fp16_compression_0"
_OV_PLUMBING = {"Parameter", "Constant", "Result"}


def fp32_tensor_names(onnx_path: str | os.PathLike) -> set[str]:
    """Output tensors of the ONNX nodes the shared precision rule keeps in fp32."""
    try:
        import onnx

        from edgeprune.backends.precision import fp32_nodes
    except ImportError:
        raise EdgepruneError("exact token decisions at bf16/fp16 read the ONNX graph with the onnx package: "
                             f"{OPENVINO_INSTALL_HINT}") from None
    graph = onnx.load(str(onnx_path), load_external_data=False)
    kept = fp32_nodes(graph)
    return {name for node in graph.graph.node if node.name in kept for name in node.output if name}


def keep_fp32(model: Any, tensor_names: set[str]) -> int:
    """Mark the OpenVINO ops that produce ``tensor_names`` (and the unnamed ops an ONNX node was
    decomposed into, when they feed marked ops only) to run in fp32; returns how many were marked."""
    ordered = list(model.get_ordered_ops())
    marked: set[int] = set()
    for index, op in enumerate(ordered):
        names = set().union(*(port.get_names() for port in op.outputs()))
        if names & tensor_names:
            marked.add(index)
    position = {op.get_friendly_name(): i for i, op in enumerate(ordered)}
    for index in reversed(range(len(ordered))):  # consumers come later in topological order
        op = ordered[index]
        if index in marked or op.get_type_name() in _OV_PLUMBING or any(port.get_names() for port in op.outputs()):
            continue
        users = [position.get(target.get_node().get_friendly_name()) for port in op.outputs()
                 for target in port.get_target_inputs()]
        if users and all(u in marked for u in users):
            marked.add(index)
    for index in marked:
        ordered[index].get_rt_info()[KEEP_FP32_KEY] = ""
    return len(marked)


def read_for_precision(path: Path, precision: str) -> Any:
    """The ONNX file as an ``openvino.Model``, its fp32 nodes marked when ``precision`` is lower."""
    model = core().read_model(str(path))
    if precision != "fp32":
        keep_fp32(model, fp32_tensor_names(path))
    return model


def compile_static(path: str | os.PathLike, shapes: dict[str, list[int]], precision: str = "fp32",
                   device: str = DEFAULT_DEVICE, threads: Optional[int] = DEFAULT_THREADS) -> Any:
    """An ONNX file with symbolic axes compiled at fixed input ``shapes`` (fp32 nodes marked as for
    any bf16/fp16 compile): how latency calibration times one token count as a static engine."""
    check_device(device)
    model = read_for_precision(Path(path), precision)
    model.reshape(shapes)
    return core().compile_model(model, device, compile_config(precision, threads))


def effective_precision(compiled: Any) -> Optional[str]:
    """The precision the device really runs (``f32`` where the hint asked bf16 of a CPU without it)."""
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    except Exception:
        return None


class CompiledFromPath:
    """Loader: an ``openvino.CompiledModel`` from an ONNX file (compiled) or an exported blob (imported)."""

    def __init__(self, path: str | os.PathLike, device: str = DEFAULT_DEVICE, precision: str = "fp32",
                 threads: Optional[int] = DEFAULT_THREADS) -> None:
        self.path = Path(path)
        self.device = device
        self.precision = precision
        self.threads = threads

    def __call__(self) -> Any:
        check_device(self.device)
        config = compile_config(self.precision, self.threads)
        try:
            if self.path.suffix == ".onnx":
                return core().compile_model(read_for_precision(self.path, self.precision), self.device, config)
            return core().import_model(self.path.read_bytes(), self.device, config)
        except OSError as exc:
            raise EdgepruneError(f"{self.path}: cannot read it ({exc.strerror or exc})") from None
        except Exception as exc:  # OpenVINO raises RuntimeError with its own multi-line text
            raise EdgepruneError(f"{self.path}: OpenVINO cannot load it on {self.device}: {ov_message(exc)}") from None


def export_blob(compiled: Any) -> bytes:
    """The compiled model as bytes (``export_model`` returns a BytesIO in recent releases, bytes in older)."""
    blob = compiled.export_model()
    return blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob)


def _output_name(output: Any) -> str:
    names = output.get_names()
    return output.get_any_name() if len(names) <= 1 else sorted(names)[0]


class OpenVinoRunner(Runner):
    """Runs a compiled model through one infer request per calling thread (created on first use and
    reused), so several threads may call one runner at once, as they call ONNX Runtime sessions
    (cameras, streams); the request made on activation serves the activating thread."""

    name = "openvino"

    def __init__(self, compiled_or_path: Any, device: str = DEFAULT_DEVICE, precision: str = "fp32",
                 threads: Optional[int] = DEFAULT_THREADS) -> None:
        super().__init__()
        if isinstance(compiled_or_path, (str, os.PathLike)):
            compiled_or_path = CompiledFromPath(compiled_or_path, device, precision, threads)
        self.loader = compiled_or_path
        self.compiled = None
        self.request = None

    def activate_impl(self) -> None:
        self.compiled = self.loader() if callable(self.loader) else self.loader
        self.request = self.compiled.create_infer_request()
        self._local = threading.local()
        self._local.request = self.request
        self.outputs = list(self.compiled.outputs)
        self.output_names = [_output_name(o) for o in self.outputs]

    def deactivate_impl(self) -> None:
        self.request = None
        self.compiled = None
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def input_metadata(self) -> dict[str, tuple[list[Any], str]]:
        meta = {}
        for port in self.compiled.inputs:
            shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
            kind = port.get_element_type().get_type_name()
            meta[port.get_any_name()] = (shape, f"tensor({ORT_TYPE_NAMES.get(kind, kind)})")
        return meta

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # outputs are copied: the request reuses its output buffers on the next call
        result = self._request().infer(feed, share_inputs=True, share_outputs=False)
        return {name: np.asarray(result[port]) for name, port in zip(self.output_names, self.outputs)}

    def run_raw(self, feed: dict[str, np.ndarray]) -> None:
        """Run without copying outputs: the timing loop's hot path."""
        self._request().infer(feed, share_inputs=True, share_outputs=True)
