"""Scheduler policies: deadline tracking under load steps, hysteresis, errors, per-frame cost."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.runtime import (CombinedPolicy, ContentPolicy, DeadlinePolicy, EngineProfile, FixedPolicy, FrameContext,
                               downscale_gray, frame_change, make_policy, simulate, trace_from_profiles)

# Budgets 1.0 .. 0.25 (fastest last); p95 = p50 + 15 %.
PROFILES = [EngineProfile(f"b{b}", b, p, p * 1.15) for b, p in [(1.0, 10.0), (0.75, 8.0), (0.5, 6.0), (0.35, 4.8), (0.25, 4.0)]]
LOAD = [(333, 666, 1.6)]  # everything 1.6x slower for the middle third


@pytest.mark.parametrize("target", [9.0, 9.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deadline_tracks_load_step(target, seed):
    trace = trace_from_profiles(PROFILES, 1000, seed=seed, load_steps=LOAD, noise=0.05)
    assert PROFILES[-1].p50_ms < target < PROFILES[0].p50_ms
    res = simulate(DeadlinePolicy(PROFILES, target), trace, 1000, target)
    assert res.unavoidable_misses == 0  # the target is reachable, so every miss is the policy's fault
    assert res.miss_rate <= 0.02, res.miss_rate
    assert res.budget_ratio >= 0.8, res.budget_ratio
    # it really adapted: smaller budgets during the load step than before it
    mid = np.mean([d.budget for d in res.decisions[350:650]])
    assert mid < np.mean([d.budget for d in res.decisions[50:330]])


def test_fixed_policy_misses_under_load_where_deadline_does_not():
    trace = trace_from_profiles(PROFILES, 1000, seed=0, load_steps=LOAD, noise=0.05)
    fixed = simulate(FixedPolicy(PROFILES, 1), trace, 1000, 9.0)
    assert fixed.miss_rate > 0.3


def test_hysteresis_limits_switches_on_stationary_noise():
    trace = trace_from_profiles(PROFILES, 1000, seed=3, noise=0.08)
    # 8.0 * (1 + ~0.13 margin) sits right on this target: the worst case for flapping
    res = simulate(DeadlinePolicy(PROFILES, 9.0, hysteresis_frames=5), trace, 1000, 9.0)
    assert res.switches <= 40, res.switches
    loose = simulate(DeadlinePolicy(PROFILES, 9.0, hysteresis_frames=1), trace, 1000, 9.0)
    assert res.switches <= loose.switches


def test_up_switch_waits_down_switch_does_not():
    pol = DeadlinePolicy(PROFILES, 9.5, hysteresis_frames=5)
    assert pol.choose(FrameContext(0)).index == 1
    for f in range(1, 4):  # 1.6x slower: down at once after the shift is confirmed
        pol.observe(1, 8.0 * 1.6)
    d = pol.choose(FrameContext(4))
    assert d.index == 3 and d.reason == "down"
    for _ in range(3):  # load gone: a bigger engine fits again...
        pol.observe(3, 4.8)
    reasons = [pol.choose(FrameContext(5 + k)).reason for k in range(5)]
    assert reasons[:4] == ["hold"] * 4 and reasons[4] == "up"  # ...but only after 5 frames
    assert pol.current == 1


def test_unreachable_target_runs_fastest():
    trace = trace_from_profiles(PROFILES, 200, seed=0, noise=0.05)
    res = simulate(DeadlinePolicy(PROFILES, 4.1), trace, 200, 4.1)  # 4.0 * (1 + margin) > 4.1
    assert all(d.index == len(PROFILES) - 1 for d in res.decisions)
    assert all(d.reason == "unreachable" for d in res.decisions[20:])


def test_deadline_override_per_frame():
    pol = DeadlinePolicy(PROFILES, 20.0)
    assert pol.choose(FrameContext(0)).index == 0
    assert pol.choose(FrameContext(1, deadline_ms=5.0)).index == 4  # 4.0 * 1.15 prior margin fits 5 ms


@pytest.mark.parametrize("name", ["deadline", "combined", "content", "fixed"])
def test_deterministic(name):
    trace = trace_from_profiles(PROFILES, 500, seed=7, load_steps=[(100, 300, 1.8)], drift=0.2)
    content = np.random.default_rng(1).random(500).tolist()
    runs = [simulate(make_policy(name, PROFILES, 9.0), trace, 500, 9.0, content) for _ in range(2)]
    assert runs[0] == runs[1]
    pol = make_policy(name, PROFILES, 9.0)
    first = simulate(pol, trace, 500, 9.0, content)
    pol.reset()
    assert simulate(pol, trace, 500, 9.0, content) == first


def test_per_frame_overhead_under_200us():
    trace = trace_from_profiles(PROFILES, 10_000, seed=0, load_steps=[(3000, 6000, 1.6)])
    lat = trace.ms[:, :].tolist()
    ctxs = [FrameContext(i, 0.5) for i in range(10_000)]
    per_frame = []
    for _ in range(5):
        pol = make_policy("combined", PROFILES, 9.0)
        t0 = time.perf_counter()
        for i, ctx in enumerate(ctxs):
            d = pol.choose(ctx)
            pol.observe(d.index, lat[i][d.index])
        per_frame.append((time.perf_counter() - t0) / len(ctxs))
    assert statistics.median(per_frame) < 200e-6, per_frame


def test_content_policy_and_combined_cap():
    content = ContentPolicy(PROFILES, low=0.1, high=0.6)
    assert content.choose(FrameContext(0, 0.0)).budget == 0.25
    assert content.choose(FrameContext(0, 0.9)).budget == 1.0
    assert content.choose(FrameContext(0, None)).budget == 1.0
    mids = [content.choose(FrameContext(0, c)).budget for c in np.linspace(0, 1, 21)]
    assert mids == sorted(mids)  # more change -> never fewer tokens
    comb = CombinedPolicy(DeadlinePolicy(PROFILES, 9.5), ContentPolicy(PROFILES))
    assert comb.choose(FrameContext(0, 1.0)).index == 1  # deadline caps at 0.75
    assert comb.choose(FrameContext(1, 0.0)).index == 4  # easy frame: content lowers it


@pytest.mark.parametrize("args,kw", [
    (("nope", PROFILES, 9.0), {}),
    (("deadline", PROFILES, 0.0), {}),
    (("deadline", [], 9.0), {}),
    (("deadline", PROFILES[::-1], 9.0), {}),
    (("deadline", PROFILES, 9.0), {"alpha": 0.0}),
    (("deadline", PROFILES, 9.0), {"bogus": 1}),
    (("fixed", PROFILES, 9.0), {"index": 9}),
    (("content", PROFILES, 9.0), {"low": 0.7, "high": 0.6}),
])
def test_bad_inputs_are_one_line_errors(args, kw):
    with pytest.raises(EdgepruneError) as exc:
        make_policy(*args, **kw)
    assert "\n" not in str(exc.value)


def test_frame_change():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    sa = downscale_gray(a)
    assert sa.shape == (32, 32) and sa.dtype == np.uint8
    assert frame_change(sa, sa) == 0.0
    white, black = downscale_gray(np.full_like(a, 255)), downscale_gray(np.zeros_like(a))
    assert frame_change(white, black) > 0.95
    for _ in range(20):
        b = downscale_gray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8))
        assert 0.0 <= frame_change(sa, b) <= 1.0
    assert downscale_gray(np.zeros((10, 7), np.uint8)).shape == (32, 32)  # tiny / gray frames work too
    with pytest.raises(EdgepruneError):
        frame_change(sa, downscale_gray(a, size=16))


def test_downscale_is_fast():
    frame = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(200):
            downscale_gray(frame)
        times.append((time.perf_counter() - t0) / 200)
    assert statistics.median(times) < 1e-4, times
