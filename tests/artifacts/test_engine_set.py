"""Engine sets from Python: layout of set.json, verification, atomic export, calibration bookkeeping."""

import json
import shutil

import pytest

from edgeprune.artifacts import engine_set as es
from edgeprune.exporting.engine_set import export_engine_set
from edgeprune.measure.calibrate import calibrate_engine_set, latency_stats
from edgeprune.core.errors import EdgepruneError
from tests.conftest import make_tiny


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("set")
    export_engine_set(make_tiny(depth=2), "tome", [0.75, 1.0, 0.75], root / "SET")
    return root / "SET"


@pytest.fixture
def copy(built, tmp_path):
    shutil.copytree(built, tmp_path / "SET")
    return tmp_path / "SET"


def test_set_json_and_members(built):
    data = json.loads((built / "set.json").read_text())
    assert data["format"] == 1 and data["kind"] == "edgeprune-engine-set" and data["method"] == "tome"
    assert data["calibration"] is None and data["model"]["spec"]["depth"] == 2
    assert [m["budget"] for m in data["members"]] == [1.0, 0.75]
    assert [m["path"] for m in data["members"]] == ["b1.00", "b0.75"]
    s = es.load_engine_set(built)
    full, reduced = s.members
    assert full.artifact.method == "none" and reduced.artifact.method == "tome"
    assert reduced.macs_ratio <= 0.75 and reduced.final_tokens < full.final_tokens == 16
    assert reduced.onnx_sha256 == reduced.artifact.manifest["onnx"]["sha256"]
    assert s.member(0.75) is reduced and s.member("b1.00") is full
    assert not list(built.parent.glob(".*"))  # no temp folders left beside the set


def test_parse_budgets_and_names():
    assert es.parse_budgets("0.5, 1.0,0.5,0.75") == [1.0, 0.75, 0.5]
    for bad in ("0", "1.5", "x", ",", "-0.2"):
        with pytest.raises(EdgepruneError, match="--budgets"):
            es.parse_budgets(bad)
    assert [es.member_name(b) for b in (1.0, 0.35, 0.355)] == ["b1.00", "b0.35", "b0.355"]


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda p: (p / "set.json").write_text("{not json"), "corrupt set.json"),
        (lambda p: (p / "set.json").unlink(), "no set.json"),
        (lambda p: _edit(p, kind="something-else"), "not an edgeprune engine set"),
        (lambda p: _edit(p, format=9), "unsupported engine set format"),
        (lambda p: _edit(p, members=[{"budget": 1.0}]), r"schema at \.members\[0\]: .path. is a required property"),
        (lambda p: shutil.rmtree(p / "b0.75"), "member b0.75 is missing"),
        (lambda p: (p / "b0.75" / "model.onnx").write_bytes(b"tampered"), "sha256 does not match"),
        (lambda p: _swap_member(p), "differs from set.json"),
    ],
)
def test_damaged_sets_are_one_line_errors(copy, damage, match):
    damage(copy)
    with pytest.raises(EdgepruneError, match=match) as info:
        es.load_engine_set(copy)
    assert "\n" not in str(info.value)


def _swap_member(path):
    # A consistent artifact, but not the one set.json names.
    for name in ("model.onnx", "manifest.json"):
        shutil.copy(path / "b1.00" / name, path / "b0.75" / name)


def _edit(path, **changes):
    data = json.loads((path / "set.json").read_text())
    data.update(changes)
    (path / "set.json").write_text(json.dumps(data))


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model = make_tiny(depth=2)
    with pytest.raises(EdgepruneError, match="cannot reach"):
        export_engine_set(model, "tome", [1.0, 0.01], tmp_path / "SET")
    import edgeprune.exporting.engine_set as onnx_export  # where export_engine_set looks export up

    calls = []
    real = onnx_export.export

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise EdgepruneError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "export", fail_second)
    with pytest.raises(EdgepruneError, match="boom"):
        export_engine_set(model, "tome", [1.0, 0.75], tmp_path / "SET")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_calibration_matches(copy):
    s = es.load_engine_set(copy)
    assert es.calibration_matches(s) == (False, "the set is not calibrated")
    cal = calibrate_engine_set(s, rounds=3, warmup=0)
    assert set(cal["members"]) == {"b1.00", "b0.75"}
    again = es.load_engine_set(copy)
    assert es.calibration_matches(again) == (True, "")
    again.manifest["calibration"]["machine"]["cpu"] = "Imaginary CPU 9000"
    ok, why = es.calibration_matches(again)
    assert not ok and "cpu" in why and "Imaginary" in why


def test_latency_stats():
    stats = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0001])
    assert stats["min_ms"] == 1.0 and stats["max_ms"] == 100.0001 and stats["p50_ms"] == 3.0
    assert stats["p50_ms"] <= stats["p90_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["samples_ms"][-1] == 100.0 and len(stats["samples_ms"]) == 5
