"""Bad input gives a status with one clear line, never a crash or partial state: one test per case."""

from __future__ import annotations

import ctypes as C
import json
import shutil

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError


def status_of(lib, status):
    code, message = lib.edgeprune_status_code(status), lib.edgeprune_status_message(status).decode()
    lib.edgeprune_status_free(status)
    assert "\n" not in message
    return code, message


@pytest.fixture
def runtime(native_lib, tiny_set):
    from edgeprune.native import NativeRuntime

    with NativeRuntime(tiny_set, 1000.0) as rt:
        yield rt


def blank_request(lib):
    """A default request and an empty result, initialised by the library (struct_size set)."""
    from edgeprune.native import _abi

    q, r = _abi.Request(), _abi.Result()
    lib.edgeprune_request_init(C.byref(q))
    lib.edgeprune_result_init(C.byref(r))
    return q, r


def c_frame(lib, array, width, height, stride):
    from edgeprune.native import _abi

    f = _abi.Frame()
    lib.edgeprune_frame_init(C.byref(f))
    f.rgb = None if array is None else array.ctypes.data
    f.width, f.height, f.stride = width, height, stride
    return f


def test_null_handles_and_buffers(runtime):
    from edgeprune.native import load_library

    lib = load_library()
    frame = np.zeros((40, 48, 3), np.uint8)
    q, r = blank_request(lib)
    f = c_frame(lib, frame, 48, 40, 0)
    assert status_of(lib, lib.edgeprune_infer(None, C.byref(f), C.byref(q), C.byref(r))) == (1, "infer: runtime is NULL")
    assert status_of(lib, lib.edgeprune_infer(runtime._handle, None, C.byref(q), C.byref(r))) == (1, "infer: frame is NULL")
    assert status_of(lib, lib.edgeprune_infer(runtime._handle, C.byref(f), C.byref(q), None)) == (1, "infer: result is NULL")
    nothing = c_frame(lib, None, 48, 40, 0)
    assert status_of(lib, lib.edgeprune_infer(runtime._handle, C.byref(nothing), C.byref(q), C.byref(r))) == (1, "infer: frame->rgb is NULL")
    q.labels = 1  # labels asked, no buffer
    code, message = status_of(lib, lib.edgeprune_infer(runtime._handle, C.byref(f), C.byref(q), C.byref(r)))
    assert (code, message) == (1, "infer: labels requested but labels_out is NULL")
    assert status_of(lib, lib.edgeprune_open(None, None, None))[0] == 1
    assert runtime.infer(frame).frame == 0  # failed calls changed nothing


def test_missing_set_folder(native_lib, tmp_path):
    from edgeprune.native import NativeRuntime

    with pytest.raises(EdgepruneError, match="not an engine set directory") as info:
        NativeRuntime(tmp_path / "nope", 10)
    assert info.value.code == "not found"


def test_corrupt_set_json(native_lib, tiny_set, tmp_path):
    from edgeprune.native import NativeRuntime

    copy = shutil.copytree(tiny_set, tmp_path / "SET")
    (copy / "set.json").write_text('{"format": 1, "kind": "edgeprune-engine-set", "members": [')
    with pytest.raises(EdgepruneError, match=r"set.json: corrupt set.json \(unexpected end of text") as info:
        NativeRuntime(copy, 10)
    assert info.value.code == "corrupt"


def test_foreign_set_folder(native_lib, tmp_path):
    from edgeprune.native import NativeRuntime

    (tmp_path / "set.json").write_text(json.dumps({"kind": "something-else", "members": []}))
    with pytest.raises(EdgepruneError, match="not an edgeprune engine set"):
        NativeRuntime(tmp_path, 10)
    (tmp_path / "set.json").unlink()
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(EdgepruneError, match="no set.json"):
        NativeRuntime(tmp_path, 10)


def test_uncalibrated_set(native_lib, tiny_set, tmp_path):
    from edgeprune.native import NativeRuntime

    copy = shutil.copytree(tiny_set, tmp_path / "SET")
    manifest = json.loads((copy / "set.json").read_text())
    manifest["calibration"] = None
    (copy / "set.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgepruneError, match="not calibrated; run `edgeprune calibrate"):
        NativeRuntime(copy, 10)


def test_truncated_onnx(native_lib, tiny_set, tmp_path):
    from edgeprune.native import NativeRuntime

    copy = shutil.copytree(tiny_set, tmp_path / "SET")
    onnx = copy / "b0.80" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    with pytest.raises(EdgepruneError, match="model.onnx: sha256 does not match the manifest") as info:
        NativeRuntime(copy, 10)
    assert info.value.code == "corrupt"
    with pytest.raises(EdgepruneError, match="ONNX Runtime cannot load it") as info:  # unverified: ORT refuses it
        NativeRuntime(copy, 10, verify=False)
    assert info.value.code == "corrupt"


def test_wrong_frame_size(runtime):
    with pytest.raises(EdgepruneError, match=r"frame size 48x0 is not in 1..65536"):
        runtime.infer(np.zeros((0, 48, 3), np.uint8))
    with pytest.raises(EdgepruneError, match="RGB uint8"):
        runtime.infer(np.zeros((40, 48, 4), np.uint8))
    assert runtime.infer(np.zeros((40, 48, 3), np.uint8)).frame == 0


def test_wrong_stride(runtime):
    from edgeprune.native import load_library

    lib = load_library()
    frame = np.zeros((40, 48, 3), np.uint8)
    q, r = blank_request(lib)
    f = c_frame(lib, frame, 48, 40, 100)
    code, message = status_of(lib, lib.edgeprune_infer(runtime._handle, C.byref(f), C.byref(q), C.byref(r)))
    assert (code, message) == (1, "infer: frame stride 100 is smaller than 3 * width = 144")


def test_wrong_ort_path(native_lib, tiny_set, tmp_path):
    from edgeprune.native import NativeRuntime

    with pytest.raises(EdgepruneError, match="libonnxruntime.so.9: no such file") as info:
        NativeRuntime(tiny_set, 10, ort_library=tmp_path / "libonnxruntime.so.9")
    assert info.value.code == "not found"
    not_ort = shutil.which("ls")  # an existing file that is no shared library
    with pytest.raises(EdgepruneError, match="cannot load ONNX Runtime library"):
        NativeRuntime(tiny_set, 10, ort_library=not_ort)


def test_ort_older_than_required(native_lib, tiny_set):
    from edgeprune.native import NativeRuntime

    fake = native_lib.parent / "libfake_old_ort.so"  # reports ONNX Runtime 1.10.0, like an old library
    assert fake.is_file()
    with pytest.raises(EdgepruneError, match=r"ONNX Runtime 1.10.0 at .* is older than required \(1.14 or newer\)") as info:
        NativeRuntime(tiny_set, 10, ort_library=fake)
    assert info.value.code == "unsupported"


def test_unavailable_provider(native_lib, tiny_set):
    from edgeprune.native import NativeRuntime

    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(EdgepruneError, match="provider 'cuda' is not available here"):
        NativeRuntime(tiny_set, 10, provider="cuda")
    with NativeRuntime(tiny_set, 10, provider="auto") as rt:  # auto falls back and says so
        assert rt.infer(np.zeros((32, 32, 3), np.uint8)).provider == "cpu"


def _tensorrt_skip_reason(native_lib) -> str | None:
    """Why the TensorRT test cannot run here, or None. The backend (native/src/trt.cpp) is compiled only
    where NvInfer.h (TensorRT >= 10) and the CUDA runtime are found, runs only with a GPU, and the
    test engine is built with the Python tensorrt package."""
    cache = native_lib.parent / "CMakeCache.txt"
    text = cache.read_text(errors="replace") if cache.is_file() else ""
    if "EDGEPRUNE_TENSORRT:INTERNAL=ON" not in text:
        return ("libedgeprune was compiled without its TensorRT backend (it is compiled only where NvInfer.h of "
                "TensorRT >= 10 and the CUDA runtime are found, see native/build/configure.log; it needs a GPU to run): "
                "an engine for another GPU cannot be refused by it here; see docs/native.md")
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return f"the tensorrt Python package, which builds the test engine, cannot be imported: {(str(exc).splitlines() or [type(exc).__name__])[0]}"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU visible to torch: a TensorRT engine can be neither built nor run here"
    except Exception as exc:
        return f"torch cannot be imported to look for a GPU: {(str(exc).splitlines() or [type(exc).__name__])[0]}"
    return None


def test_tensorrt_engine_for_another_gpu(native_lib, tiny_set, tmp_path):
    why = _tensorrt_skip_reason(native_lib)
    if why:
        pytest.skip(why)
    import subprocess
    import sys

    from edgeprune.native import NativeRuntime

    built = tmp_path / "built"
    proc = subprocess.run([sys.executable, "-m", "edgeprune.cli.main", "build", str(tiny_set), "--backend", "trt",
                           "--out", str(built)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frame = np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    with NativeRuntime(tiny_set, 1000.0, "fixed", policy_args={"index": 1}, engines=built) as rt:  # the real engines run
        assert rt.backend == "tensorrt"
        r = rt.infer(frame, labels="model", logits=True)
        assert r.provider == "tensorrt" and r.engine == "b0.80" and np.isfinite(r.logits).all()

    engine_json = built / "b0.80" / "engine.json"
    original = json.loads(engine_json.read_text())
    here = original["device"]["compute_capability"]
    assert here, "edgeprune build records the GPU's compute capability"
    other = "5.2" if here != "5.2" else "6.1"
    manifest = json.loads(json.dumps(original))
    manifest["device"]["compute_capability"] = other
    engine_json.write_text(json.dumps(manifest))
    with pytest.raises(EdgepruneError, match=rf"engine built for compute capability {other}, this GPU .*is {here}: "
                                             r"rebuild it with `edgeprune build") as info:
        NativeRuntime(tiny_set, 1000.0, engines=built)
    assert info.value.code == "unsupported"

    manifest["settings"]["hardware_compatibility"] = "ampere+"  # declared portable: not refused before deserializing
    engine_json.write_text(json.dumps(manifest))
    with NativeRuntime(tiny_set, 1000.0, "fixed", policy_args={"index": 1}, engines=built) as rt:
        assert rt.infer(frame).engine == "b0.80"

    manifest = json.loads(json.dumps(original))
    manifest["versions"]["tensorrt"] = "9.9.9"
    engine_json.write_text(json.dumps(manifest))
    with pytest.raises(EdgepruneError, match=r"engine built with TensorRT 9\.9\.9, this machine has TensorRT \d+\.\d+\.\d+") as info:
        NativeRuntime(tiny_set, 1000.0, engines=built)
    assert info.value.code == "unsupported"
