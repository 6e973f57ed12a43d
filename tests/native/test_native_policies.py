"""Same decisions: every policy in C++ chooses exactly what the Python policy chooses on every frame
of the committed 1000-frame latency trace (real measured latencies with a CPU load step)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TRACE = Path(__file__).resolve().parents[1] / "data" / "latency_trace.json"

CONFIGS = [
    ("fixed", {}), ("fixed", {"index": 2}),
    ("deadline", {}), ("deadline", {"hysteresis_frames": 0, "window": 10}),
    ("deadline", {"alpha": 0.3, "margin_quantile": 0.8, "safety_ms": 0.5, "shift_frames": 5}),
    ("content", {}), ("content", {"low": 0.0, "high": 0.05}),
    ("combined", {}), ("combined", {"low": 0.005, "high": 0.03, "hysteresis_frames": 2}),
]


def load_trace():
    from edgeprune.runtime.policies import EngineProfile

    trace = json.loads(TRACE.read_text())
    profiles = [EngineProfile(p["name"], p["budget"], p["p50_ms"], p["p95_ms"]) for p in trace["profiles"]]
    return trace, profiles


def test_trace_has_a_load_step():
    trace, profiles = load_trace()
    frames, step = trace["frames"], trace["load_step_frame"]
    assert len(frames) == 1000 and len(profiles) == 4
    before = sorted(f["latency_ms"][0] for f in frames[:step])[step // 2]
    after = sorted(f["latency_ms"][0] for f in frames[step:])[(len(frames) - step) // 2]
    assert after > 1.3 * before  # the step is real: the largest engine slows down under load


@pytest.mark.parametrize("name,kw", CONFIGS, ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'defaults'}" for n, kw in CONFIGS])
@pytest.mark.parametrize("deadline_scale", [1.0, 0.7])
def test_decisions_equal_python_on_the_trace(native_lib, name, kw, deadline_scale):
    from edgeprune.native import NativePolicy
    from edgeprune.runtime.policies import FrameContext, make_policy

    trace, profiles = load_trace()
    target = trace["target_ms"] * deadline_scale
    py, native = make_policy(name, profiles, target, **kw), NativePolicy(name, profiles, target, **kw)
    reasons = set()
    for i, frame in enumerate(trace["frames"]):
        # every 7th frame carries its own deadline, as Runtime passes one per frame
        deadline = target * 0.8 if i % 7 == 0 else None
        d = py.choose(FrameContext(i, frame["content"], deadline))
        n = native.choose(i, frame["content"], deadline)
        assert (n[0], n[1], n[2], n[3]) == (d.index, d.budget, d.predicted_ms, d.reason), f"frame {i}"
        reasons.add(d.reason)
        latency = frame["latency_ms"][d.index]
        py.observe(d.index, latency)
        native.observe(d.index, latency)
    if name == "deadline":
        assert "down" in reasons and "up" in reasons  # the load step and its end make it switch both ways


def test_bad_policy_parameters_are_one_line_errors(native_lib):
    from edgeprune.core.errors import EdgepruneError
    from edgeprune.native import NativePolicy

    _, profiles = load_trace()
    with pytest.raises(EdgepruneError, match="unknown policy 'fastest'"):
        NativePolicy("fastest", profiles, 10)
    with pytest.raises(EdgepruneError, match="0 < alpha <= 1"):
        NativePolicy("deadline", profiles, 10, alpha=0)
    with pytest.raises(EdgepruneError, match="unexpected keyword argument 'speed'"):
        NativePolicy("combined", profiles, 10, speed=1)
    with pytest.raises(EdgepruneError, match="sorted by budget"):
        NativePolicy("deadline", profiles[::-1], 10)
