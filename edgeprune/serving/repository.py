"""Triton model repositories: ``config.pbtxt`` written through, and checked against, Triton's own schema.

The schema is ``model_config.proto`` as compiled into ``tritonclient.grpc.model_config_pb2`` (it ships
with ``tritonclient[grpc]``). A configuration is built as a dict, parsed into that message (unknown
fields or enum names fail there), and printed in protobuf text format; :func:`check_config` parses a
written file back and adds the checks the schema cannot express (name = folder, a backend or
platform, version folders, dims against ``max_batch_size``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import write_text_atomic

CONFIG_FILE = "config.pbtxt"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEFAULT_FILES = {"python": "model.py", "onnxruntime": "model.onnx", "onnxruntime_onnx": "model.onnx",
                 "tensorrt_plan": "model.plan", "tensorrt": "model.plan", "openvino": "model.xml"}


def _schema() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise EdgepruneError(f"checking Triton model configurations needs tritonclient[grpc] ({exc}); "
                             "pip install 'edgeprune[serve]'") from None
    return model_config_pb2


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise EdgepruneError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (Triton's model names)")
    return name


def config_text(config: dict[str, Any]) -> str:
    """``config.pbtxt`` text of a configuration dict (protobuf JSON field names), schema-checked."""
    from google.protobuf import json_format, text_format

    try:
        message = json_format.ParseDict(config, _schema().ModelConfig())
    except json_format.ParseError as exc:
        raise EdgepruneError(f"Triton model configuration does not fit the schema: {exc}") from None
    text = text_format.MessageToString(message)
    if not message.max_batch_size:  # proto3 omits a zero default; Triton reads its absence the same, but say it
        text = f"max_batch_size: 0\n{text}"
    return text


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    """Write ``folder/config.pbtxt`` (temp file + rename)."""
    return write_text_atomic(folder / CONFIG_FILE, config_text(config), mkdir=True)


def check_config(path: str | Path, *, model_files: bool = True) -> Any:
    """Parse a ``config.pbtxt`` with Triton's schema and check what the schema cannot; returns the message
    or raises one EdgepruneError line naming the file and the problem. ``model_files=False`` skips the
    model-file check, for files built later on the target (TensorRT plans)."""
    from google.protobuf import text_format

    path = Path(path)
    try:
        message = text_format.Parse(path.read_text(), _schema().ModelConfig())
    except text_format.ParseError as exc:
        raise EdgepruneError(f"{path}: not a valid Triton model configuration: {exc}") from None
    except OSError as exc:
        raise EdgepruneError(f"{path}: cannot read: {exc.strerror or exc}") from None
    folder = path.parent
    if message.name and message.name != folder.name:
        raise EdgepruneError(f"{path}: name {message.name!r} differs from its folder {folder.name!r}")
    kind = message.backend or message.platform
    if not kind:
        raise EdgepruneError(f"{path}: sets neither backend nor platform")
    if message.max_batch_size < 0:
        raise EdgepruneError(f"{path}: max_batch_size must be >= 0")
    if message.HasField("dynamic_batching") and message.max_batch_size == 0:
        raise EdgepruneError(f"{path}: dynamic_batching needs max_batch_size > 0")
    for preferred in message.dynamic_batching.preferred_batch_size:
        if not 0 < preferred <= message.max_batch_size:
            raise EdgepruneError(f"{path}: preferred batch size {preferred} outside 1..max_batch_size")
    for tensor in [*message.input, *message.output]:
        if not tensor.dims:
            raise EdgepruneError(f"{path}: tensor {tensor.name!r} has no dims")
        if any(d < -1 or d == 0 for d in tensor.dims):
            raise EdgepruneError(f"{path}: tensor {tensor.name!r} has invalid dims {list(tensor.dims)}")
    versions = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    if not versions:
        raise EdgepruneError(f"{folder}: no numeric version folder (e.g. {folder / '1'})")
    wanted = message.default_model_filename or DEFAULT_FILES.get(kind)
    ensemble = kind == "ensemble"
    if not ensemble and wanted and model_files:
        for version in versions:
            if not (version / wanted).exists():
                raise EdgepruneError(f"{version}: missing {wanted} for {kind}")
    return message


def check_repository(repository: str | Path) -> dict[str, Any]:
    """Check every model's configuration in a repository; {model name: message}."""
    root = Path(repository)
    configs = {p.parent.name: check_config(p) for p in sorted(root.glob(f"*/{CONFIG_FILE}"))}
    if not configs:
        raise EdgepruneError(f"{root}: no model folder with a {CONFIG_FILE}")
    return configs


def install_python_model(folder: Path, source: Path) -> None:
    """Copy a Python-backend model file into ``folder/1/model.py``."""
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, folder / "1" / "model.py")


__all__ = ["CONFIG_FILE", "check_config", "check_name", "check_repository", "config_text", "install_python_model",
           "write_config"]
