"""TensorRT backend: an engine builder (ONNX -> serialized plan), engine loaders and a runner.

Written against the TensorRT 10 and 11 Python APIs. TensorRT 11 is strongly typed only: the
precision comes from the ONNX graph (edgeprune converts it to fp16 first, keeping the token
decisions fp32), and the weak-typing builder flags FP16/BF16 no longer exist. On TensorRT 10 the
same strongly typed build is the default; ``strongly_typed=False`` keeps the old flag-driven path.

TensorRT and torch (device memory, streams) are imported only when a build or a run starts.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgeprune.backends.base import Runner
from edgeprune.core.errors import EdgepruneError, first_line
from edgeprune.core.files import write_bytes_atomic

TRT_INSTALL_HINT = ("install it with `pip install tensorrt` (x86_64 with an NVIDIA driver and CUDA), on Jetson use "
                    "JetPack's python3-libnvinfer, or run `edgeprune build --emit-script` to build on the target")
PRECISIONS = ("fp32", "fp16", "bf16")
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
MAX_OPT_LEVEL = 5
# TensorRT DataType member name -> numpy-style name (bfloat16/float8 have no numpy dtype).
DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
               "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8"}
ORT_TYPE_NAMES = {"float32": "float", "float16": "float16", "bfloat16": "bfloat16", "int8": "int8", "uint8": "uint8",
                  "int32": "int32", "int64": "int64", "bool": "bool"}


def tensorrt_version() -> Optional[str]:
    """TensorRT's version, or None when it cannot be imported (a missing or placeholder wheel)."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # the PyPI placeholder and broken CUDA installs raise more than ImportError
        return None


def require_tensorrt():
    """The tensorrt module, or a one-line EdgepruneError saying how to get it."""
    try:
        import tensorrt

        return tensorrt
    except Exception as exc:
        raise EdgepruneError(f"TensorRT is not available: {first_line(exc)}; {TRT_INSTALL_HINT}") from None


def trt_major(version: str) -> int:
    return _version_tuple(version)[0]


def _version_tuple(version: str) -> tuple[int, int]:
    parts = str(version).strip().split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except ValueError:
        raise EdgepruneError(f"not a TensorRT version: {version!r} (expected e.g. 10.3.0)") from None


@dataclass(frozen=True)
class BuilderSettings:
    precision: str = "fp32"
    workspace_mb: Optional[int] = None  # None: TensorRT's default (the device memory)
    optimization_level: int = 3
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    strongly_typed: bool = True
    device: Optional[str] = None  # --backend openvino only: the OpenVINO device (CPU, GPU, NPU, ...)

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgepruneError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mb is not None and (not isinstance(self.workspace_mb, int) or isinstance(self.workspace_mb, bool)
                                              or self.workspace_mb <= 0):
            raise EdgepruneError(f"--workspace must be a positive number of MiB, got {self.workspace_mb!r}")
        level = self.optimization_level
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= MAX_OPT_LEVEL:
            raise EdgepruneError(f"--opt-level must be an integer from 0 to {MAX_OPT_LEVEL}, got {level!r}")
        if self.hardware_compatibility not in HARDWARE_COMPAT:
            raise EdgepruneError(f"--hardware-compat must be one of {', '.join(HARDWARE_COMPAT)}, "
                                 f"got {self.hardware_compatibility!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)  # field order is fixed, so the manifest and cache keys are stable
        if data["device"] is None:  # only OpenVINO engines name one: other engines keep their keys
            del data["device"]
        return data

    def check_version(self, version: str) -> None:
        """Refuse what the given TensorRT version cannot build, before any work is done."""
        major, minor = _version_tuple(version)
        if not self.strongly_typed and self.precision != "fp32" and major >= 11:
            raise EdgepruneError(
                f"--precision {self.precision} without strong typing needs the FP16/BF16 builder flags, which "
                f"TensorRT {version} removed; build strongly typed from an {self.precision} ONNX graph instead")
        # A bare "10" names no minor version: trust it (the same-cc enum arrived in 10.9).
        if self.hardware_compatibility == "same-cc" and "." in str(version) and (major, minor) < (10, 9):
            raise EdgepruneError(f"--hardware-compat same-cc needs TensorRT >= 10.9, this is {version}")


def device_info() -> dict[str, Any]:
    """The GPU this process would build for; {"gpu": None, ...} without CUDA. Never raises."""
    info: dict[str, Any] = {"gpu": None, "compute_capability": None, "cuda": None, "driver": None}
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = "{}.{}".format(*torch.cuda.get_device_capability(0))
    except Exception:
        pass
    try:  # the kernel module's banner names the driver version; torch does not expose it
        text = Path("/proc/driver/nvidia/version").read_text()
        words = text.split("Kernel Module", 1)[1].split() if "Kernel Module" in text else []
        info["driver"] = next((w for w in words if w[:1].isdigit()), None)
    except Exception:
        pass
    return info


def _make_logger(trt, log: Optional[Callable[[str], None]] = None):
    """A trt.ILogger that keeps errors (TensorRT reports failures there, the API only returns None)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # called from C++: must never raise
            try:
                if severity in (trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR):
                    self.errors.append(str(msg))
                if log is not None and severity in (trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR, trt.Logger.WARNING):
                    log(f"TensorRT: {msg}")
            except Exception:
                pass

        def last_error(self) -> str:
            return first_line(RuntimeError(self.errors[-1])) if self.errors else "no error was logged"

    return Logger()


def _parser_error(parser) -> str:
    err = parser.get_error(0)
    node = ""
    for attr in ("node_name", "node_operator"):  # since TensorRT 8.6
        try:
            value = getattr(err, attr)()
        except Exception:
            value = ""
        if value:
            node += f" {value}"
    if not node:
        try:
            node = f" #{err.node()}" if err.node() >= 0 else ""
        except Exception:
            node = ""
    return (f"node{node}: " if node else "") + first_line(RuntimeError(err.desc()))


def _set_timing_cache(config, timing_cache: Optional[Path], say: Callable[[str], None]) -> None:
    data = b""
    if timing_cache is not None and timing_cache.is_file():
        data = timing_cache.read_bytes()
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version: its timings would be wrong here.
        say(f"timing cache {timing_cache} is from another device or TensorRT version; starting a fresh one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config, timing_cache: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    data = bytes(memoryview(cache.serialize()))
    write_bytes_atomic(timing_cache, data, mkdir=True)  # concurrent builds never see half a cache


def build_serialized_engine(onnx_path: Path, settings: BuilderSettings, timing_cache: Optional[Path] = None,
                            log: Optional[Callable[[str], None]] = None) -> bytes:
    """Parse ``onnx_path`` and build a serialized TensorRT engine for this GPU under ``settings``."""
    settings.validate()
    trt = require_tensorrt()
    settings.check_version(trt.__version__)
    say = log or (lambda _msg: None)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EdgepruneError(f"{onnx_path}: no such ONNX file")
    logger = _make_logger(trt, log)
    builder = trt.Builder(logger)
    flags = 0
    if settings.strongly_typed:  # ignored (always on) by TensorRT 11, required for typed fp16 graphs on 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file, not parse(bytes): the parser then finds external weight files next to the model.
    if not parser.parse_from_file(str(onnx_path)) or parser.num_errors:
        detail = _parser_error(parser) if parser.num_errors else logger.last_error()
        raise EdgepruneError(f"{onnx_path}: TensorRT's ONNX parser rejected it: {detail}")

    config = builder.create_builder_config()
    if settings.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.optimization_level
    if hasattr(trt.BuilderFlag, "TF32"):
        # fp32 in the graph (all of an fp32 build, the norms and token decisions of an fp16 one) means
        # IEEE fp32: TF32's 10-bit mantissa would flip near-tie token choices like fp16 does.
        config.clear_flag(trt.BuilderFlag.TF32)
    if not settings.strongly_typed and settings.precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if settings.precision == "fp16" else trt.BuilderFlag.BF16)
    if settings.hardware_compatibility != "none":
        level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPAT[settings.hardware_compatibility], None)
        if level is None:
            raise EdgepruneError(f"--hardware-compat {settings.hardware_compatibility} is not supported by "
                                 f"TensorRT {trt.__version__}")
        config.hardware_compatibility_level = level
    if settings.version_compatible:
        # The lean runtime stays embedded (no EXCLUDE_LEAN_RUNTIME): the plan then loads on any later
        # TensorRT of the same major version without shipping a runtime library next to it.
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    _set_timing_cache(config, timing_cache, say)

    say(f"building TensorRT {trt.__version__} engine ({settings.precision}, opt level {settings.optimization_level})")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgepruneError(f"{onnx_path}: TensorRT could not build an engine: {logger.last_error()}")
    if timing_cache is not None:
        _save_timing_cache(config, Path(timing_cache))
    return bytes(memoryview(plan))


def _dtype_name(trt_dtype) -> str:
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    return DTYPE_NAMES.get(name, name.lower())


def _io_tensors(trt, engine) -> list[dict[str, Any]]:
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        tensors.append({"name": name, "mode": "input" if mode == trt.TensorIOMode.INPUT else "output",
                        "shape": [int(d) for d in engine.get_tensor_shape(name)],
                        "dtype": _dtype_name(engine.get_tensor_dtype(name))})
    return tensors


class EngineFromBytes:
    """Loader: deserializes an ICudaEngine when called.

    ``allow_host_code`` must be set for version-compatible plans (they embed the lean runtime,
    executable code TensorRT only runs when told the plan is trusted).
    """

    def __init__(self, serialized: bytes, allow_host_code: bool = False) -> None:
        self.serialized = serialized
        self.allow_host_code = allow_host_code
        self.source = "the TensorRT engine"

    def _bytes(self) -> bytes:
        return self.serialized

    def __call__(self):
        trt = require_tensorrt()
        logger = _make_logger(trt)
        runtime = trt.Runtime(logger)
        if self.allow_host_code:
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(self._bytes())
        if engine is None:
            raise EdgepruneError(
                f"cannot deserialize {self.source}: built by another TensorRT version or for another GPU? "
                f"(TensorRT {trt.__version__}: {logger.last_error()})")
        return engine  # the binding keeps the runtime (and its logger) alive as long as the engine


class EngineFromPath(EngineFromBytes):
    def __init__(self, path: str | os.PathLike, allow_host_code: bool = False) -> None:
        super().__init__(b"", allow_host_code)
        self.path = Path(path)
        self.source = str(self.path)

    def _bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise EdgepruneError(f"{self.path}: cannot read the engine: {first_line(exc)}") from None


def engine_io(serialized: bytes, allow_host_code: bool = False) -> list[dict[str, Any]]:
    """The engine's I/O tensors: [{"name", "mode", "shape", "dtype"}], in the engine's order."""
    trt = require_tensorrt()
    return _io_tensors(trt, EngineFromBytes(serialized, allow_host_code)())


class TrtRunner(Runner):
    """Runs a static-shape engine: device buffers are allocated once, at activation."""

    name = "tensorrt"

    def __init__(self, engine_or_loader: Any) -> None:
        super().__init__()
        self.loader = engine_or_loader
        self.engine = None

    def activate_impl(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise EdgepruneError("the TensorRT runner needs a CUDA GPU, and torch sees none here "
                                 "(install a CUDA build of torch on a machine with an NVIDIA driver)")
        trt = require_tensorrt()
        self.engine = self.loader() if callable(self.loader) else self.loader
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EdgepruneError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = torch.cuda.Stream()
        self.io = _io_tensors(trt, self.engine)
        self.buffers: dict[str, Any] = {}
        for t in self.io:
            if any(d < 0 for d in t["shape"]):
                raise EdgepruneError(f"engine tensor {t['name']!r} has a dynamic shape {t['shape']}; "
                                     "edgeprune runs static-shape engines only")
            if t["mode"] == "input":
                self.context.set_input_shape(t["name"], t["shape"])
            buf = torch.empty(t["shape"], dtype=_torch_dtype(torch, t["dtype"]), device="cuda")
            self.buffers[t["name"]] = buf
            self.context.set_tensor_address(t["name"], buf.data_ptr())
        self.inputs = [t for t in self.io if t["mode"] == "input"]
        self.outputs = [t["name"] for t in self.io if t["mode"] == "output"]

    def deactivate_impl(self) -> None:
        self.buffers = {}
        self.context = None
        self.engine = None
        self.stream = None

    def input_metadata(self) -> dict[str, tuple[list[Any], str]]:
        return {t["name"]: (list(t["shape"]), f"tensor({ORT_TYPE_NAMES.get(t['dtype'], t['dtype'])})")
                for t in self.inputs}

    def _run(self, feed: dict[str, np.ndarray]) -> None:
        import torch

        missing = [t["name"] for t in self.inputs if t["name"] not in feed]
        extra = sorted(set(feed) - {t["name"] for t in self.inputs})
        if missing or extra:
            raise EdgepruneError(f"TensorRT engine inputs are {[t['name'] for t in self.inputs]}; "
                                 f"missing {missing}, unexpected {extra}")
        with torch.cuda.stream(self.stream):
            for t in self.inputs:
                array = np.asarray(feed[t["name"]])
                if array.dtype.name != t["dtype"]:
                    raise EdgepruneError(f"input {t['name']!r}: dtype {array.dtype.name}, the engine expects {t['dtype']}")
                if list(array.shape) != t["shape"]:
                    raise EdgepruneError(f"input {t['name']!r}: shape {list(array.shape)}, "
                                         f"the engine was built for {t['shape']}")
                self.buffers[t["name"]].copy_(torch.from_numpy(np.ascontiguousarray(array)), non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EdgepruneError("TensorRT failed to enqueue the engine (see its log above)")
        self.stream.synchronize()

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._run(feed)
        return {name: self.buffers[name].cpu().numpy() for name in self.outputs}

    def run_raw(self, feed: dict[str, np.ndarray]) -> None:
        """Run without copying outputs back: the timing loop's hot path."""
        self._run(feed)


def _torch_dtype(torch, name: str):
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
                "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}[name]
    except KeyError:
        raise EdgepruneError(f"engine I/O dtype {name} is not supported by the TensorRT runner") from None


def trtexec_command(onnx: str, engine: str, settings: BuilderSettings, trt_version: str = "10",
                    timing_cache: Optional[str] = None) -> list[str]:
    """The trtexec command that builds the same engine on the target (Jetson builds happen there)."""
    settings.validate()
    settings.check_version(trt_version)
    major = trt_major(trt_version)
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    if settings.strongly_typed:
        if major < 11:  # TensorRT 11's trtexec is always strongly typed and needs no flag
            cmd.append("--stronglyTyped")
    elif settings.precision != "fp32":
        cmd.append(f"--{settings.precision}")
    if major < 11:  # same reason as the builder's TF32 choice; the flag is documented for trtexec 10
        cmd.append("--noTF32")
    if settings.workspace_mb is not None:
        cmd.append(f"--memPoolSize=workspace:{settings.workspace_mb}M")
    cmd.append(f"--builderOptimizationLevel={settings.optimization_level}")
    if settings.hardware_compatibility == "ampere+":
        cmd.append("--hardwareCompatibilityLevel=ampere+")
    elif settings.hardware_compatibility == "same-cc":
        cmd.append("--hardwareCompatibilityLevel=sameComputeCapability")
    if settings.version_compatible:
        cmd.append("--versionCompatible")
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd
