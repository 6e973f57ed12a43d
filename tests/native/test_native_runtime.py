"""Same answers: NativeRuntime (C++) against edgeprune.runtime's Runtime and TemporalRuntime (Python)
on the same frames: identical labels, logits within 1e-5 relative, the same refresh decisions."""

from __future__ import annotations

import json
import threading
import warnings

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError

from tests.native.conftest import moving_clip


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_member_matches_python(native_lib, tiny_set, index):
    from edgeprune.imaging.images import upsample_argmax
    from edgeprune.native import NativeRuntime
    from edgeprune.runtime import Runtime

    frames = moving_clip(6, 48, 40, seed=index) + moving_clip(2, 32, 32) + moving_clip(2, 20, 90)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        py = Runtime(tiny_set, 1000.0, "fixed", policy_args={"index": index})
    with py, NativeRuntime(tiny_set, 1000.0, "fixed", policy_args={"index": index}) as nat:
        assert nat.budgets == py.budgets and nat.engines == [p.name for p in py.profiles]
        for frame in frames:
            p = py.infer(frame)
            n = nat.infer(frame, labels="input", logits=True)
            assert (n.engine, n.budget, n.reason) == (p.engine, p.budget, "fixed")
            assert relative(n.logits, p.outputs["logits"]) <= 1e-5
            np.testing.assert_array_equal(n.labels, upsample_argmax(p.outputs["logits"][0], *frame.shape[:2]))
            m = nat.infer(frame, labels="model")
            np.testing.assert_array_equal(m.labels, p.labels)
            assert n.provider == "cpu" and n.deadline_met and 0 < n.engine_ms <= n.total_ms


def test_deadline_policy_adapts_and_reports_timings(native_lib, tiny_set):
    from edgeprune.native import NativeRuntime

    with NativeRuntime(tiny_set, 1000.0) as nat:
        results = [nat.infer(f, deadline_ms=1e-3 if i >= 3 else None) for i, f in enumerate(moving_clip(6, 48, 40))]
    assert [r.frame for r in results] == list(range(6))
    assert results[0].reason == "start" and results[0].budget == 1.0 and results[0].content == 1.0
    assert results[3].reason == "unreachable" and results[3].budget == 0.6 and not results[3].deadline_met
    for r in results:
        assert r.pre_ms >= 0 and r.post_ms >= 0 and r.scheduler_ms >= 0
        assert r.total_ms >= r.pre_ms + r.engine_ms + r.post_ms


def test_temporal_matches_python(native_lib, tiny_temporal):
    from edgeprune.native import NativeRuntime
    from edgeprune.runtime.temporal import TemporalRuntime

    clip = moving_clip(24, 48, 40, seed=3)
    clip[15] = 255 - clip[15]  # a scene cut: drift forces a refresh
    with TemporalRuntime(tiny_temporal, refresh_every=10) as py, \
            NativeRuntime(tiny_temporal, refresh_every=10) as nat:
        assert nat.kind == "temporal" and nat.engines == ["refresh", "update"]
        reasons = []
        for stream in (0, 7):
            for frame in clip[: 24 if stream == 0 else 5]:
                p = py.infer(frame, stream)
                n = nat.infer(frame, stream, labels="model", logits=True)
                assert (n.refreshed, n.reason, n.frame) == (p.refreshed, p.reason, p.frame)
                assert n.budget == pytest.approx(p.recomputed) and n.drift == pytest.approx(p.drift, rel=1e-6)
                assert relative(n.logits, p.logits) <= 1e-5
                np.testing.assert_array_equal(n.labels, p.labels)
                reasons.append(p.reason)
    assert "first frame" in reasons and "every 10 frames" in reasons and any(r.startswith("drift") for r in reasons)
    assert reasons.count("") >= 10  # most frames are updates


def test_threads_and_streams_on_one_runtime(native_lib, tiny_set, tiny_temporal):
    from edgeprune.native import NativeRuntime

    for path in (tiny_set, tiny_temporal):
        with NativeRuntime(path, 1000.0) as nat:
            solo = [nat.infer(f, stream=99, labels="model").labels for f in moving_clip(5, 48, 40, seed=1)]
            nat.reset(99)
            errors, results = [], {}

            def worker(t: int) -> None:
                try:
                    for s in range(4):
                        stream = t * 4 + s
                        results[stream] = [nat.infer(f, stream=stream, labels="model") for f in moving_clip(5, 48, 40, seed=1)]
                except Exception as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors and len(results) == 16
            if path == tiny_temporal:  # each stream's caches are its own: same labels as the solo run
                for stream, rs in results.items():
                    for r, ref in zip(rs, solo):
                        np.testing.assert_array_equal(r.labels, ref)


def test_built_engines_folder(native_lib, tiny_set, tmp_path):
    import subprocess
    import sys

    from edgeprune.native import NativeRuntime
    from edgeprune.runtime import Runtime

    built = tmp_path / "built"
    proc = subprocess.run([sys.executable, "-m", "edgeprune.cli.main", "build", str(tiny_set), "--backend", "ort-cpu",
                           "--out", str(built)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames = moving_clip(3, 48, 40, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # built engines not calibrated: the set's latencies stand in
        py = Runtime(tiny_set, 1000.0, "fixed", policy_args={"index": 1}, engines=built)
    with py, NativeRuntime(tiny_set, 1000.0, "fixed", policy_args={"index": 1}, engines=built) as nat:
        for frame in frames:
            p, n = py.infer(frame), nat.infer(frame, labels="model", logits=True)
            assert n.engine == p.engine == "b0.80"
            assert relative(n.logits, p.outputs["logits"]) <= 1e-5
            np.testing.assert_array_equal(n.labels, p.labels)
    engine_json = built / "b0.80" / "engine.json"
    manifest = json.loads(engine_json.read_text())
    manifest["backend"] = "trt"  # a TensorRT engine: refused with one line by this build
    engine_json.write_text(json.dumps(manifest))
    with pytest.raises(EdgepruneError, match="TensorRT engine"):
        NativeRuntime(tiny_set, 1000.0, engines=built, verify=False)
