"""Runtime, the token pool and TemporalRuntime on OpenVINO, against ONNX Runtime on the same real (tiny) graphs:
same outputs at fp32, each engine planning with its own calibration, ``provider="auto"`` following the
calibrations, and another engine's calibration warned about (refused when strict)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from edgeprune.artifacts.engine_set import load_engine_set
from edgeprune.backends.feeds import relative_error
from edgeprune.backends.runners import EngineChoice
from edgeprune.core.errors import EdgepruneError
from edgeprune.measure.calibrate import calibrate_engine_set, calibration_for, resolve_engine, stored_calibrations
from edgeprune.runtime import FixedPolicy, Runtime
from edgeprune.runtime.temporal import TemporalRuntime
from tests.conftest import export_tiny_set, run_in_threads

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")

OPENVINO = EngineChoice("openvino", "fp32", "CPU")
# fp32 OpenVINO against ONNX Runtime: measured <= 6e-7 relative to the largest logit on these graphs (tests/
# backends/test_openvino.py holds single runs to 1e-5); the margin leaves room for a near-tie token choice.
FP32_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def engine_set(tmp_path_factory):
    """A set calibrated for ONNX Runtime only (as `edgeprune calibrate SET` leaves it)."""
    return export_tiny_set(tmp_path_factory.mktemp("ov_set") / "SET", [1.0, 0.75], 4, [0.5] * 3, [0.25] * 3)


@pytest.fixture
def both(engine_set, tmp_path):
    """A copy calibrated for ONNX Runtime and for OpenVINO fp32."""
    copy = shutil.copytree(engine_set, tmp_path / "SET")
    calibrate_engine_set(load_engine_set(copy), rounds=3, warmup=1, threads=1, provider="openvino")
    return copy


def frames(n, seed=0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def test_every_budget_gives_onnx_runtimes_outputs(both):
    loaded = load_engine_set(both)
    for index in range(len(loaded.members)):
        ort = Runtime(loaded, 1000.0, FixedPolicy(Runtime(loaded, 1000.0).profiles, index), threads=1)
        ov = Runtime(loaded, 1000.0, FixedPolicy(ort.profiles, index), threads=1, provider="openvino")
        with ort, ov:
            assert ov.engine == OPENVINO and ov.provider_name == "OpenVINO CPU f32"
            assert ort.provider_name == "CPUExecutionProvider"
            for frame in frames(6, seed=index):
                a, b = ort.infer(frame), ov.infer(frame)
                assert a.engine == b.engine
                assert relative_error(b.outputs["logits"], a.outputs["logits"]) <= FP32_TOLERANCE
                assert (a.labels == b.labels).mean() >= 0.99


def test_each_engine_plans_with_its_own_calibration(engine_set, both):
    data = json.loads((both / "set.json").read_text())
    stored = data["calibrations"]["openvino:CPU:fp32"]
    assert stored["provider"] == "openvino" and stored["precision"] == "fp32" and stored["device"] == "CPU"
    assert stored["runs_as"] == "OpenVINO CPU f32" and stored["versions"]["openvino"]
    assert data["calibration"] == json.loads((engine_set / "set.json").read_text())["calibration"]  # ORT's untouched
    with Runtime(both, 1000.0, provider="openvino") as ov, Runtime(both, 1000.0) as ort:
        assert [p.p50_ms for p in ov.profiles] == [stored["members"][p.name]["p50_ms"] for p in ov.profiles]
        assert [p.p50_ms for p in ort.profiles] == [data["calibration"]["members"][p.name]["p50_ms"] for p in ort.profiles]


def test_another_engines_calibration_warns_or_is_refused(engine_set):
    with pytest.warns(RuntimeWarning, match="calibrated for ONNX Runtime cpu, not OpenVINO CPU fp32.*--provider openvino"):
        Runtime(engine_set, 1000.0, provider="openvino", threads=1).close()
    with pytest.raises(EdgepruneError, match="not OpenVINO CPU bf16.*--provider openvino --precision bf16"):
        Runtime(engine_set, 1000.0, provider="openvino", precision="bf16", strict_machine=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own calibration: no warning
        Runtime(engine_set, 1000.0, threads=1).close()


def test_auto_picks_the_fastest_calibrated_engine(engine_set, both):
    loaded = load_engine_set(engine_set)
    engine, why = resolve_engine(loaded, "auto")
    assert engine == EngineChoice("cpu") and "the only engine calibrated here" in why
    data = json.loads((both / "set.json").read_text())
    for faster, expected in (("openvino", OPENVINO), ("onnxruntime", EngineChoice("cpu"))):
        ort, ov = data["calibration"]["members"], data["calibrations"]["openvino:CPU:fp32"]["members"]
        for name in ort:  # make one engine clearly faster, whatever this machine measured
            ort[name]["p50_ms"], ov[name]["p50_ms"] = (9.0, 1.0) if faster == "openvino" else (1.0, 9.0)
        (both / "set.json").write_text(json.dumps(data))
        engine, why = resolve_engine(load_engine_set(both), "auto")
        assert engine == expected and "fastest calibrated here: mean p50 1.00 ms vs" in why and "9.00 ms" in why
        with Runtime(both, 1000.0, provider="auto", threads=1) as rt:
            assert rt.engine == expected and rt.engine_reason == why
    engine, _ = resolve_engine(load_engine_set(both), "auto", precision="fp32", device="CPU")
    assert engine == EngineChoice("cpu")  # ORT fp32 is the faster one now and fits the filter
    data["calibrations"]["openvino:CPU:fp32"]["machine"]["cpu"] = "Imaginary CPU 9000"  # measured elsewhere
    (both / "set.json").write_text(json.dumps(data))
    assert set(stored_calibrations(load_engine_set(both))) == {"onnxruntime:cpu", "openvino:CPU:fp32"}
    engine, why = resolve_engine(load_engine_set(both), "auto", precision="fp16")
    assert engine == EngineChoice("openvino", "fp16", "CPU") and "nothing calibrated to compare" in why


def test_uncalibrated_set_names_the_command(engine_set, tmp_path):
    raw = shutil.copytree(engine_set, tmp_path / "RAW")
    data = json.loads((raw / "set.json").read_text())
    data["calibration"] = None
    (raw / "set.json").write_text(json.dumps(data))
    with pytest.raises(EdgepruneError, match=r"not calibrated; run `edgeprune calibrate .*RAW --provider openvino`"):
        calibration_for(load_engine_set(raw), OPENVINO)


def test_threads_and_the_pool_on_openvino(both):
    results = []
    with Runtime(both, 1000.0, policy="combined", provider="openvino", threads=1) as rt:
        def camera(stream):
            results.extend(rt.infer(f, stream=stream) for f in frames(6, seed=stream))

        errors = run_in_threads(camera, 3)
        assert not errors and sorted(r.frame for r in results) == list(range(18))
        flat, busy = np.full((48, 40, 3), 128, np.uint8), frames(1, seed=9)[0]
        tick = rt.infer_pool({"flat": flat, "busy": busy}, pool=1.75, minimum=0.75)
        assert tick["busy"].budget == 1.0 and tick["flat"].budget == 0.75


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    import torch

    from edgeprune.exporting.temporal import export_temporal
    from edgeprune.families.timm_seg import create_segmenter

    torch.manual_seed(0)
    model = create_segmenter("vit_tiny_patch16_224", 5, head="linear", img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2).eval()
    model.info = {"input": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    return export_temporal(model, 0.25, tmp_path_factory.mktemp("ov_temporal") / "t")


def test_temporal_reuse_on_openvino_matches_onnx_runtime(temporal):
    clip = frames(8, seed=3, size=(32, 32))
    with TemporalRuntime(temporal, threads=1, refresh_every=4) as ort, \
            TemporalRuntime(temporal, threads=1, refresh_every=4, provider="openvino") as ov:
        assert ov.provider_name == "OpenVINO CPU f32" and ov.engine == OPENVINO
        for frame in clip:
            a, b = ort.infer(frame), ov.infer(frame)
            assert (a.refreshed, a.recomputed) == (b.refreshed, b.recomputed)
            assert relative_error(b.logits, a.logits) <= FP32_TOLERANCE
    with pytest.raises(EdgepruneError, match="--device NOPE is OpenVINO's device"):
        TemporalRuntime(temporal, device="NOPE")
