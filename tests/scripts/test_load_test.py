"""scripts/load_test.py as a user runs it: simulated cameras on real clips against a real server,
including the fault case: the server is killed mid-run and restarted; every frame ends answered or
reported failed, never silently dropped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.conftest import served_set, service_config  # noqa: F401  (shared fixtures)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "load_test.py"
VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "video"

pytestmark = [pytest.mark.heavy, pytest.mark.skipif(not VIDEOS.is_dir(), reason="needs ../shared/data/video"),
              pytest.mark.filterwarnings("ignore")]
pytest.importorskip("pytriton", reason="serving needs edgeprune[serve] (nvidia-pytriton)")


def run(tmp_path, served_set, *extra):
    out = tmp_path / "load.json"
    # --variants batch:4x2 = the session's cached batch-N exports (max batch 4, 1 thread per instance)
    cmd = [sys.executable, str(SCRIPT), "--set", str(served_set), "--cameras", "3", "--variants", "batch:4x2",
           "--frame-size", "96x64", "--deadline-ms", "100", "--json", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_killed_and_restarted_server_loses_no_frame(tmp_path, served_set, service_config):
    report, stdout = run(tmp_path, served_set, "--seconds", "10", "--fps", "8", "--protocols", "grpc,http",
                         "--fault-at", "3", "--restart-after", "1", "--retry-for", "30")
    assert len(report["runs"]) == 2, stdout
    for r in report["runs"]:
        assert r["fault"][0].startswith("killed at") and r["fault"][1].startswith("restarted"), r
        assert r["lost"] == 0 and r["sent"] == r["answered"] + r["failed"], r
        assert r["retried_frames"] >= 1, r  # the frames in flight at the kill came back through retries
        assert r["answered"] >= 0.8 * r["sent"], r  # answered after the restart too
        assert r["failed"] == 0, r["errors"]  # within --retry-for, every frame got its answer


def test_unreachable_frames_are_reported_failed_with_the_reason(tmp_path, served_set, service_config):
    """A restart slower than a camera's patience: the frames it gave up on are failed, with the reason."""
    report, _ = run(tmp_path, served_set, "--seconds", "6", "--fps", "5", "--protocols", "grpc",
                    "--fault-at", "2", "--restart-after", "4", "--retry-for", "0.5")
    r = report["runs"][0]
    assert r["lost"] == 0 and r["sent"] == r["answered"] + r["failed"], r
    assert r["failed"] >= 1 and all("unavailable" in e for e in r["errors"]), r
