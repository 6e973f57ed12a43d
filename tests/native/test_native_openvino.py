"""libedgeprune's OpenVINO backend against the Python OpenVINO runtime: the scene segmenter of models/
exported as a set, built with `edgeprune build SET --backend openvino`, run by NativeRuntime (C++,
OpenVINO's C API) and by edgeprune.runtime.Runtime (Python, OpenVINO's Python API) on the same 200
video frames: the same engine per frame, identical labels. Then the refusals, each one status line:
a blob of another OpenVINO build, a device OpenVINO does not report, a missing or foreign library, a
damaged blob."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError
from tests.conftest import run_in_threads
from tests.native.conftest import moving_clip, video_dir, video_frames

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")

ROOT = Path(__file__).resolve().parents[2]
CONTENT = {"low": 0.02, "high": 0.2}  # a scene cut runs b1.00, a quiet frame b0.50


def cli(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeprune.cli.main", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def scene(native_lib, tmp_path_factory):
    """models/scene_seg as a calibrated set (budgets 1.0, 0.5) and its OpenVINO fp32 engines."""
    cache = (native_lib.parent / "CMakeCache.txt").read_text()
    assert "EDGEPRUNE_OPENVINO:INTERNAL=ON" in cache, "native/build.sh found the openvino wheel but built without its backend"
    root = tmp_path_factory.mktemp("native_ov")
    cli("export", ROOT / "models" / "scene_seg", "--budgets", "1.0,0.5", "--out", root / "SET")
    cli("calibrate", root / "SET", "--rounds", "5")
    cli("build", root / "SET", "--backend", "openvino", "--precision", "fp32", "--device", "CPU", "--out", root / "BUILT")
    return root / "SET", root / "BUILT"


def clip200() -> list[np.ndarray]:
    """200 frames: a pool clip with a cut to a gym clip every 10th frame (the change signal jumps),
    or, without the shared clips, moving squares with the same cuts."""
    pool, gym = video_dir() / "outdoor_pool_340x256.mp4", video_dir() / "indoor_gym_426x240.mp4"
    a = video_frames(pool, 180) if pool.is_file() else []
    b = video_frames(gym, 20) if gym.is_file() else []
    if len(a) < 180 or len(b) < 20:
        a, b = moving_clip(180, 96, 120, seed=1), [255 - f for f in moving_clip(20, 96, 120, seed=2)]
    return [b[i // 10] if i % 10 == 9 else a[i - i // 10] for i in range(200)]


def python_runtime(scene, policy: str = "content", **args):
    from edgeprune.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # calibrated on a busy machine, engines not calibrated
        return Runtime(scene[0], 1000.0, policy, policy_args=args, engines=scene[1])


def test_200_frames_match_the_python_openvino_runtime(scene):
    from edgeprune.imaging.images import upsample_argmax
    from edgeprune.native import NativeRuntime

    used = []
    with python_runtime(scene, **CONTENT) as py, \
            NativeRuntime(scene[0], 1000.0, "content", policy_args=CONTENT, engines=scene[1]) as nat:
        assert nat.backend == "openvino" and nat.provider == py.provider_name == "OpenVINO CPU f32"
        assert nat.engines == ["b1.00", "b0.50"] and nat.classes == 7
        for i, frame in enumerate(clip200()):
            p = py.infer(frame)
            n = nat.infer(frame, labels="model" if i % 2 else "input", logits=True)
            assert (n.engine, n.budget, n.reason, n.provider) == (p.engine, p.budget, "content", "OpenVINO CPU f32")
            logits = p.outputs["logits"]
            assert float(np.abs(n.logits - logits).max()) <= 1e-6 * float(np.abs(logits).max())
            expected = p.labels if i % 2 else upsample_argmax(logits[0], *frame.shape[:2])
            np.testing.assert_array_equal(n.labels, expected, err_msg=f"frame {i} ({n.engine})")
            used.append(n.engine)
    assert min(used.count(e) for e in ("b1.00", "b0.50")) >= 20  # both engines ran, switching per frame


def test_threads_share_one_runtime(scene):
    """Infer requests are pooled: 4 threads at once get the labels one thread gets."""
    from edgeprune.native import NativeRuntime

    frames = clip200()[:8]
    with NativeRuntime(scene[0], 1000.0, "fixed", policy_args={"index": 1}, engines=scene[1]) as nat:
        solo = [nat.infer(f, labels="model").labels for f in frames]
        results = {}

        def worker(t: int) -> None:
            results[t] = [nat.infer(f, stream=t, labels="model").labels for f in frames]

        errors = run_in_threads(worker, 4)
    assert not errors and len(results) == 4
    for labels in results.values():
        for got, want in zip(labels, solo):
            np.testing.assert_array_equal(got, want)


def edited_copy(scene, tmp_path, edit) -> Path:
    """The engines folder copied, with edit(manifest) applied to b1.00's engine.json."""
    built = tmp_path / "BUILT"
    shutil.copytree(scene[1], built)
    path = built / "b1.00" / "engine.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return built


def refusal(scene, engines, **kw) -> EdgepruneError:
    from edgeprune.native import NativeRuntime

    with pytest.raises(EdgepruneError) as caught:
        NativeRuntime(scene[0], 1000.0, engines=engines, **kw)
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_blob_of_another_openvino_build_is_refused(scene, tmp_path):
    import openvino

    built = edited_copy(scene, tmp_path, lambda m: m["versions"].update(openvino="2025.0.0-17942-old"))
    error = refusal(scene, built)
    assert error.code == "unsupported"
    assert (f"stale engine (blob written by OpenVINO 2025.0.0-17942-old, the OpenVINO library loaded here is "
            f"{openvino.get_version()}: rebuild it on this machine: edgeprune build {scene[0].resolve()} --backend openvino "
            f"--precision fp32 --device CPU --out {built})") in str(error)
    with pytest.raises(EdgepruneError, match="built with OpenVINO 2025.0.0-17942-old"):  # Python refuses it too
        python_runtime((scene[0], built))


def test_a_device_openvino_does_not_report_is_refused(scene, tmp_path):
    import openvino

    devices = ", ".join(openvino.Core().available_devices)
    built = edited_copy(scene, tmp_path, lambda m: m["settings"].update(device="MYRIAD"))
    error = refusal(scene, built)
    assert error.code == "unsupported"
    assert f"blob compiled for OpenVINO device MYRIAD, OpenVINO here reports {devices}" in str(error)


def test_missing_or_foreign_library_and_damaged_blob(scene, tmp_path, native_lib, tiny_set):
    from edgeprune.native import NativeRuntime

    error = refusal(scene, scene[1], openvino_library=tmp_path / "libopenvino_c.so.2641")
    assert error.code == "not found" and "no such file (install the openvino package" in str(error)
    error = refusal(scene, scene[1], openvino_library=native_lib.parent / "libfake_old_ort.so")
    assert error.code == "unsupported" and "is not OpenVINO's C library" in str(error)
    # ONNX Runtime engines never load OpenVINO: a machine without it runs them.
    with NativeRuntime(tiny_set, 1000.0, openvino_library=tmp_path / "none.so") as nat:
        assert nat.backend == "onnxruntime" and nat.infer(moving_clip(1, 32, 32)[0]).engine == "b1.00"

    built = tmp_path / "BUILT"
    shutil.copytree(scene[1], built)
    blob = built / "b1.00" / "model.blob"
    blob.write_bytes(blob.read_bytes()[:1000])
    error = refusal(scene, built)
    assert error.code == "corrupt" and "sha256 does not match" in str(error)
    error = refusal(scene, built, verify=False)  # read anyway: OpenVINO's own refusal, one line
    assert error.code == "corrupt" and "OpenVINO" in str(error) and "cannot import this blob on CPU: " in str(error)


def test_c_api_runs_and_refuses_openvino_engines(scene, native_lib, ort_library):
    """native/tests/test_c_api.c through the C ABI (plain C99): its OpenVINO part runs with these engines."""
    from edgeprune.native import default_openvino_library

    env = dict(os.environ, EDGEPRUNE_TEST_SET=str(scene[0]), EDGEPRUNE_TEST_OPENVINO_ENGINES=str(scene[1]),
               EDGEPRUNE_ORT_LIBRARY=ort_library, EDGEPRUNE_OPENVINO_LIBRARY=default_openvino_library())
    proc = subprocess.run([str(native_lib.parent / "test_c_api")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "test_c_api: ok" in proc.stdout, proc.stderr[-3000:]
