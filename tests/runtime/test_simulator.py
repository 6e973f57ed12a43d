"""Simulator scoring, oracle, synthetic traces and trace files."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.runtime import (EngineProfile, FixedPolicy, Trace, load_trace, make_policy, save_trace, simulate,
                               trace_from_profiles)

PROFILES = [EngineProfile(f"b{b}", b, p, p * 1.15) for b, p in [(1.0, 10.0), (0.5, 6.0), (0.25, 4.0)]]


def test_scores_and_oracle_on_a_hand_trace():
    ms = np.array([[9.0, 5.0, 3.0], [12.0, 7.0, 3.0], [12.0, 12.0, 11.0]])
    trace = Trace(["a", "b", "c"], [1.0, 0.5, 0.25], ms)
    res = simulate(FixedPolicy(PROFILES, 0), trace, 3, 10.0)
    assert res.latencies == [9.0, 12.0, 12.0]
    assert res.misses == 2 and res.miss_rate == pytest.approx(2 / 3)
    assert res.unavoidable_misses == 1  # frame 2: nothing fits
    assert res.oracle_mean_budget == pytest.approx((1.0 + 0.5 + 0.25) / 3)
    assert res.budget_ratio == pytest.approx(1.0 / res.oracle_mean_budget)
    assert res.switches == 0 and res.indices == [0, 0, 0]


def test_trace_is_deterministic_and_shaped():
    a = trace_from_profiles(PROFILES, 300, seed=5, load_steps=[(100, 200, 2.0)], drift=0.3)
    b = trace_from_profiles(PROFILES, 300, seed=5, load_steps=[(100, 200, 2.0)], drift=0.3)
    assert np.array_equal(a.ms, b.ms) and a.ms.shape == (300, 3) and np.all(a.ms > 0)
    assert not np.array_equal(a.ms, trace_from_profiles(PROFILES, 300, seed=6).ms)
    ratio = np.median(a.ms[100:200] / a.ms[:100].mean(0) * 1.0)  # the load step shows
    assert 1.8 < ratio < 2.6
    spread = trace_from_profiles(PROFILES, 5000, seed=0, noise=None).ms
    assert np.quantile(spread[:, 0], 0.95) / np.median(spread[:, 0]) == pytest.approx(1.15, abs=0.02)
    with pytest.raises(EdgepruneError):
        trace_from_profiles(PROFILES, 10, load_steps=[(5, 2, 1.5)])


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_trace_roundtrip(tmp_path, suffix):
    trace = trace_from_profiles(PROFILES, 50, seed=1)
    path = tmp_path / f"t{suffix}"
    save_trace(path, trace)
    back = load_trace(path)
    assert back.names == trace.names and back.budgets == trace.budgets
    assert np.allclose(back.ms, trace.ms, atol=1e-5)
    r1 = simulate(make_policy("deadline", PROFILES, 8.0), trace, 50, 8.0)
    r2 = simulate(make_policy("deadline", PROFILES, 8.0), back, 50, 8.0)
    assert r1.indices == r2.indices


def test_bad_trace_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EdgepruneError) as exc:
        load_trace(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(EdgepruneError):
        load_trace(tmp_path / "missing.csv")
    with pytest.raises(EdgepruneError):
        simulate(FixedPolicy(PROFILES), trace_from_profiles(PROFILES, 5), 5, 8.0, content=[0.1])
