"""edgeprune.serving.loadgen: simulated cameras on real clips against a real server, including the fault
case: the server is killed mid-run and restarted; every frame ends answered or reported failed, never
silently dropped; and `edgeprune load-test` end to end (help and bad input: tests/cli/test_load_test_cmd.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.serving.loadgen import Frame, LoadOptions, fps_at, parse_variants, summarize


def test_parse_variants():
    assert parse_variants("batch:8x2,single:1x1") == [("batch", 8, 2), ("single", 1, 1)]
    for bad in ("batch", "batch:8", "batch:0x1", ":2x2", ""):
        with pytest.raises(EdgepruneError):
            parse_variants(bad)


def test_fps_steps_and_summary_account_for_every_frame():
    assert fps_at(0.0, [2, 5], 10) == (2, 0) and fps_at(7.0, [2, 5], 10) == (5, 1) and fps_at(99, [2, 5], 10) == (5, 1)
    records = [Frame(0, 0, 0.0, outcome="answered", latency_ms=10, budget=1.0, batch_size=2),
               Frame(0, 1, 0.1, outcome="answered", latency_ms=90, budget=0.5, batch_size=1, attempts=2),
               Frame(1, 0, 0.0, outcome="failed", error="unavailable for 1 s: down"),
               Frame(1, 1, 0.2)]
    s = summarize(records, 2.0, 60.0, Counter({1: 3}))
    assert (s["sent"], s["answered"], s["failed"], s["lost"], s["skipped_by_cameras"]) == (4, 2, 1, 1, 3)
    assert s["throughput_fps"] == 1.0 and s["deadline_hits"] == 0.5 and s["retried_frames"] == 1
    assert s["budgets"] == {"1": 1, "0.5": 1} and s["errors"] == {"unavailable for 1 s:  down": 1}


@pytest.mark.heavy
@pytest.mark.filterwarnings("ignore")
def test_killed_and_restarted_server_loses_no_frame(served_set, service_config):
    pytest.importorskip("pytriton", reason="serving needs edgeprune[serve] (nvidia-pytriton)")
    from edgeprune.cli.load_test_cmd import VIDEOS, load_frames
    from edgeprune.serving.loadgen import run_load_test

    if not VIDEOS.is_dir():
        pytest.skip("needs ../shared/data/video")
    # batch:4x2 = the session's cached batch-N exports (max batch 4, 1 thread per instance)
    opts = LoadOptions(seconds=10, fps=8, deadline_ms=100, variants=[("batch", 4, 2)], protocols=["grpc", "http"],
                       fault_at=3, restart_after=1, retry_for=30)
    report = run_load_test(opts, load_frames(3, 81, (96, 64)), served_set)
    assert len(report["runs"]) == 2, report
    for r in report["runs"]:
        assert r["fault"][0].startswith("killed at") and r["fault"][1].startswith("restarted"), r
        assert r["lost"] == 0 and r["sent"] == r["answered"] + r["failed"], r
        assert r["retried_frames"] >= 1, r  # the frames in flight at the kill came back through retries
        assert r["answered"] >= 0.8 * r["sent"], r  # answered after the restart too
        assert r["failed"] == 0, r["errors"]  # within retry_for, every frame got its answer


@pytest.mark.heavy
@pytest.mark.filterwarnings("ignore")
def test_cli_unreachable_frames_are_reported_failed_with_the_reason(tmp_path, served_set, service_config, capsys):
    pytest.importorskip("pytriton", reason="serving needs edgeprune[serve] (nvidia-pytriton)")
    from edgeprune.cli.load_test_cmd import VIDEOS
    from tests.cli.test_cli import run

    if not VIDEOS.is_dir():
        pytest.skip("needs ../shared/data/video")
    out = tmp_path / "load.json"
    code, stdout, err = run(["load-test", "--set", served_set, "--cameras", "3", "--variants", "batch:4x2",
                             "--frame-size", "96x64", "--deadline-ms", "100", "--json", out, "--seconds", "6",
                             "--fps", "5", "--protocols", "grpc", "--fault-at", "2", "--restart-after", "4",
                             "--retry-for", "0.5"], capsys)
    assert code == 0, stdout[-2000:] + err[-3000:]
    r = json.loads(out.read_text())["runs"][0]
    assert r["lost"] == 0 and r["sent"] == r["answered"] + r["failed"], r
    assert r["failed"] >= 1 and all("unavailable" in e for e in r["errors"]), r
