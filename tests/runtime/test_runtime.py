"""Runtime over a real (tiny) calibrated engine set: engines run in ONNX Runtime, policies choose."""

import json
import threading
import warnings

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError
from tests.conftest import export_tiny_set


@pytest.fixture(scope="module")
def engine_set(tmp_path_factory):
    return export_tiny_set(tmp_path_factory.mktemp("set") / "SET", [1.0, 0.75], 4, [0.5] * 3, [0.25] * 3)


def frames(n, seed=0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def test_infer_returns_labels_budget_and_timing(engine_set):
    from edgeprune.runtime import Runtime

    with Runtime(engine_set, target_ms=1000.0) as rt:
        assert rt.budgets == [1.0, 0.75]
        for i, frame in enumerate(frames(4)):
            r = rt.infer(frame)
            assert r.frame == i and r.budget in rt.budgets
            assert r.labels.shape == (32, 32) and r.labels.dtype == np.uint8 and r.labels.max() < 4
            assert 0 < r.engine_ms <= r.total_ms and r.deadline_met
            assert 0 <= r.scheduler_ms < r.total_ms
        assert r.budget == 1.0  # a generous deadline affords the biggest engine


def test_fixed_policy_and_missed_deadline(engine_set):
    from edgeprune.runtime import Runtime

    with pytest.warns(RuntimeWarning, match="below the fastest engine"), \
            Runtime(engine_set, target_ms=1e-6, policy="fixed", policy_args={"index": 1}) as rt:
        r = rt.infer(frames(1)[0])
        assert r.engine == "b0.75" and not r.deadline_met


def test_uncalibrated_and_foreign_sets(engine_set, tmp_path):
    import shutil

    from edgeprune.runtime import Runtime

    copy = tmp_path / "SET"
    shutil.copytree(engine_set, copy)
    manifest = json.loads((copy / "set.json").read_text())
    manifest["calibration"]["machine"]["cpu"] = "some other cpu"
    (copy / "set.json").write_text(json.dumps(manifest))
    with pytest.warns(RuntimeWarning, match="another machine"):
        Runtime(copy, target_ms=50).close()
    with pytest.raises(EdgepruneError, match="another machine"):
        Runtime(copy, target_ms=50, strict_machine=True)
    manifest["calibration"] = None
    (copy / "set.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgepruneError, match="edgeprune calibrate"):
        Runtime(copy, target_ms=50)


def test_bad_frames_are_one_line_errors(engine_set):
    from edgeprune.runtime import Runtime

    with warnings.catch_warnings(), Runtime(engine_set, target_ms=50) as rt:
        with pytest.raises(EdgepruneError, match="RGB uint8"):
            rt.infer(np.zeros((8, 8), np.uint8))
        with pytest.raises(EdgepruneError, match="RGB uint8"):
            rt.infer(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(EdgepruneError, match="closed"):
        rt.infer(frames(1)[0])


def test_threads_share_one_runtime(engine_set):
    """Four camera threads at once: every frame gets a unique index, nothing raises, each stream's
    content signal is computed against its own previous frame."""
    from edgeprune.runtime import Runtime

    results, errors = [], []
    with Runtime(engine_set, target_ms=1000.0, policy="combined") as rt:
        def camera(stream):
            try:
                for frame in frames(15, seed=stream):
                    results.append(rt.infer(frame, stream=stream))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=camera, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert sorted(r.frame for r in results) == list(range(60))
    assert {r.stream for r in results} == {0, 1, 2, 3}


def test_pool_gives_the_changing_camera_more(engine_set):
    from edgeprune.runtime import Runtime

    still, busy = frames(1, seed=1)[0], frames(4, seed=2)
    with Runtime(engine_set, target_ms=1000.0) as rt:
        first = rt.infer_pool({"still": still, "busy": busy[0]}, pool=1.75)
        assert sum(r.budget for r in first.values()) <= 1.75 + 1e-9
        for frame in busy[1:]:
            tick = rt.infer_pool({"still": still, "busy": frame}, pool=1.75, minimum=0.75, signal="change")
            assert tick["busy"].budget == 1.0 and tick["still"].budget == 0.75
            assert tick["busy"].decision.reason.startswith("pool")
            assert tick["busy"].labels.shape == (32, 32) and tick["busy"].stream == "busy"
        with pytest.raises(EdgepruneError, match="minimums"):
            rt.infer_pool({"a": still, "b": still, "c": still}, pool=1.0, minimum=0.75)
        with pytest.raises(EdgepruneError, match="no frames"):
            rt.infer_pool({}, pool=1.0)
        with pytest.raises(EdgepruneError, match="RGB uint8"):
            rt.infer_pool({"a": still.astype(np.float32)}, pool=1.0)


def test_pool_signals(engine_set):
    from edgeprune.runtime import Runtime

    flat = np.full((40, 48, 3), 128, np.uint8)
    busy = frames(1, seed=3)[0]
    with Runtime(engine_set, target_ms=1000.0) as rt:
        tick = rt.infer_pool({"flat": flat, "busy": busy}, pool=1.75, minimum=0.75)  # complexity
        assert tick["busy"].budget == 1.0 and tick["flat"].budget == 0.75
        for first, second in (("flat", "busy"), ("busy", "flat")):
            tick = rt.infer_pool({first: flat if first == "flat" else busy, second: busy if second == "busy" else flat},
                                 pool=1.75, minimum=0.75, signal="equal")
            assert tick[first].budget == 1.0 and tick[second].budget == 0.75  # equal weights: order decides
        with pytest.raises(EdgepruneError, match="signal must be one of"):
            rt.infer_pool({"flat": flat}, pool=1.0, signal="loud")


def test_runtime_runs_built_engines(engine_set, tmp_path):
    from edgeprune.measure.calibrate import calibrate_engine_set
    from edgeprune.artifacts.engine_set import load_engine_set
    from edgeprune.runtime import Runtime
    from edgeprune.engines.build import build_set
    from edgeprune.backends.trt import BuilderSettings

    build_set(load_engine_set(engine_set), "ort-cpu", BuilderSettings(), tmp_path / "built")
    frame = np.random.default_rng(3).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    with pytest.warns(RuntimeWarning, match="not calibrated"):
        uncalibrated = Runtime(engine_set, target_ms=1000.0, engines=tmp_path / "built")
    uncalibrated.close()
    calibration = calibrate_engine_set(load_engine_set(engine_set), rounds=3, warmup=1, engines=tmp_path / "built")
    assert calibration["engines"]["backend"] == "ort-cpu"
    assert json.loads((tmp_path / "built" / "engines.json").read_text())["calibration"]["members"].keys() == {"b1.00", "b0.75"}
    with Runtime(engine_set, target_ms=1000.0) as plain, Runtime(engine_set, target_ms=1000.0, engines=tmp_path / "built") as built:
        assert [p.p50_ms for p in built.profiles] == [calibration["members"][p.name]["p50_ms"] for p in built.profiles]
        a, b = plain.infer(frame), built.infer(frame)
        assert a.budget == b.budget
        for name in a.outputs:
            np.testing.assert_allclose(b.outputs[name], a.outputs[name], rtol=1e-4, atol=1e-4)
    other = tmp_path / "other"
    build_set(load_engine_set(engine_set), "ort-cpu", BuilderSettings(), other)
    (other / "engines.json").write_text((other / "engines.json").read_text().replace('"b0.75"', '"b1.00"', 1))
    with pytest.raises(EdgepruneError), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # not calibrated either; the mismatch is the point
        Runtime(engine_set, target_ms=1000.0, engines=other)
