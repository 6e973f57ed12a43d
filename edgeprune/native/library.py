"""Find, build and load libedgeprune; turn its statuses into errors and frames into its structs."""

from __future__ import annotations

import ctypes as C
import glob
import os
import subprocess
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.native import _abi

NATIVE_DIR = Path(__file__).resolve().parents[2] / "native"
DEFAULT_LIBRARY = NATIVE_DIR / "build" / "libedgeprune.so"
CODES = {0: "ok", 1: "invalid argument", 2: "not found", 3: "corrupt", 4: "unsupported", 5: "backend",
         6: "buffer too small", 7: "internal"}

_lib: Optional[C.CDLL] = None
_lib_lock = threading.Lock()


def library_path() -> Path:
    return Path(os.environ.get("EDGEPRUNE_NATIVE_LIB") or DEFAULT_LIBRARY)


def build_native(quiet: bool = True) -> Path:
    """Build the library with ``native/build.sh`` (fast when already built); returns its path."""
    script = NATIVE_DIR / "build.sh"
    if not script.is_file():
        raise EdgepruneError(f"{script} is missing: the native sources are not in this installation")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise EdgepruneError(lines[-1] if lines else f"native/build.sh failed with code {proc.returncode}")
    if not quiet and proc.stderr:
        print(proc.stderr, end="")
    return Path(proc.stdout.strip().splitlines()[-1])


def is_available() -> bool:
    """Whether the built library can be loaded here."""
    try:
        load_library()
        return True
    except EdgepruneError:
        return False


def load_library() -> C.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            path = library_path()
            if not path.is_file():
                raise EdgepruneError(f"{path}: the native library is not built; run native/build.sh "
                                     "(or edgeprune.native.build_native())")
            try:
                lib = _abi.declare(C.CDLL(str(path)))
            except OSError as exc:
                raise EdgepruneError(f"cannot load {path}: {exc}") from None
            if lib.edgeprune_abi_version() != _abi.ABI_VERSION:
                raise EdgepruneError(f"{path}: ABI version {lib.edgeprune_abi_version()}, this binding speaks {_abi.ABI_VERSION}; rebuild it")
            _lib = lib
        return _lib


def default_ort_library() -> Optional[str]:
    """The ``onnxruntime`` wheel's ``capi/libonnxruntime.so.<version>``, if installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    found = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
    return found[-1] if found else None


def default_openvino_library() -> Optional[str]:
    """The ``openvino`` wheel's ``libs/libopenvino_c.so.<version>``, if installed (found without importing
    openvino, which would load its libraries)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("openvino")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = os.path.join(list(spec.submodule_search_locations)[0], "libs")
    found = sorted(glob.glob(os.path.join(libs, "libopenvino_c.so*")), key=lambda p: (len(p), p))
    return found[-1] if found else None


def _check(status: Optional[int]) -> None:
    if status:
        lib = load_library()
        code = lib.edgeprune_status_code(status)
        message = lib.edgeprune_status_message(status).decode("utf-8", "replace")
        lib.edgeprune_status_free(status)
        error = EdgepruneError(message)
        error.code = CODES.get(code, str(code))  # type: ignore[attr-defined]
        raise error


def _frame(image: np.ndarray) -> tuple[_abi.Frame, np.ndarray]:
    """A C frame over ``image`` (RGB uint8 [H, W, 3]); rows may be strided, pixels must be packed."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = list(getattr(image, "shape", []))
        raise EdgepruneError(f"frames must be RGB uint8 [H, W, 3], got {getattr(image, 'dtype', type(image).__name__)} {shape}")
    if image.strides[2] != 1 or image.strides[1] != 3 or image.strides[0] < 0:
        image = np.ascontiguousarray(image)
    f = _abi.Frame()
    load_library().edgeprune_frame_init(C.byref(f))
    f.rgb, f.width, f.height, f.stride = image.ctypes.data, image.shape[1], image.shape[0], image.strides[0]
    return f, image
