"""``export --budgets``, ``calibrate`` and ``inspect SET`` as users run them."""

import json
import shutil

import pytest

from edgeprune.cli.main import main
from edgeprune.artifacts.engine_set import calibration_matches, load_engine_set
from tests.cli.test_cli import error_line, run

SMALL = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
SMALL_ARGS = [arg for k, v in SMALL.items() for arg in ("--model-arg", f"{k}={v}")]
EXPORT = ["export", "vit_tiny_patch16_224", *SMALL_ARGS, "--method", "tome"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    assert main([*EXPORT, "--budgets", "0.75,1.0", "--out", str(root / "SET")]) == 0
    return root / "SET"


@pytest.fixture
def copy(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "SET")
    return tmp_path / "SET"


def test_export_budgets_writes_a_set(exported, tmp_path, capsys):
    data = json.loads((exported / "set.json").read_text())
    assert [m["path"] for m in data["members"]] == ["b1.00", "b0.75"] and data["calibration"] is None
    assert load_engine_set(exported).members[1].artifact.method == "tome"
    code, out, err = run(["inspect", exported], capsys)
    assert code == 0, err
    assert "b0.75" in out and "MACs ratio" in out and "not calibrated" in out
    code, out, _ = run(["inspect", exported, "--json"], capsys)
    assert code == 0 and json.loads(out)["kind"] == "edgeprune-engine-set"
    code, out, _ = run(["inspect", exported / "b0.75"], capsys)  # members are plain artifacts
    assert code == 0 and "plan per block" in out


def test_calibrate(copy, capsys):
    code, out, err = run(["calibrate", copy, "--rounds", 6, "--warmup", 1], capsys)
    assert code == 0, err
    assert "p99 ms" in out and "on this machine" in out and "warning" not in err
    cal = json.loads((copy / "set.json").read_text())["calibration"]
    assert cal["rounds"] == 6 and cal["threads"] == 2 and cal["provider"] == "cpu" and cal["batch"] == 1
    assert cal["machine"]["cores"] and "onnxruntime" in cal["versions"] and cal["measured_at"].endswith("+00:00")
    assert set(cal["members"]) == {"b1.00", "b0.75"}
    for stats in cal["members"].values():
        assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert len(stats["samples_ms"]) == 6 and stats["std_ms"] >= 0
    engine_set = load_engine_set(copy)  # still verifies
    assert calibration_matches(engine_set) == (True, "")
    assert not list(copy.glob(".*"))  # no temp file left


def test_calibration_from_another_machine(copy, capsys):
    assert main(["calibrate", str(copy), "--rounds", "2", "--warmup", "0"]) == 0
    data = json.loads((copy / "set.json").read_text())
    data["calibration"]["machine"]["cpu"] = "Imaginary CPU 9000"
    (copy / "set.json").write_text(json.dumps(data))
    assert calibration_matches(load_engine_set(copy))[0] is False
    capsys.readouterr()
    code, out, _ = run(["inspect", copy], capsys)
    assert code == 0 and "another machine" in out
    code, _, err = run(["calibrate", copy, "--rounds", 2, "--warmup", 0], capsys)
    assert code == 0 and "another machine" in error_line(err) and "Imaginary" in err
    assert calibration_matches(load_engine_set(copy)) == (True, "")


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--budgets", "1.0,0.5", "--flops", "0.5"], "drop --flops"),
        (["--budgets", "1.0,0"], "(0, 1]"),
        (["--budgets", "1.5"], "(0, 1]"),
        (["--budgets", "1.0,x"], "comma-separated"),
        (["--budgets", "1.0,0.01"], "cannot reach"),
    ],
)
def test_bad_budgets_exit_2_and_write_nothing(argv, match, tmp_path, capsys):
    code, _, err = run([*EXPORT, *argv, "--out", tmp_path / "SET"], capsys)
    assert code == 2 and match in error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_existing_set_needs_force(exported, capsys):
    code, _, err = run([*EXPORT, "--budgets", "1.0", "--out", exported], capsys)
    assert code == 2 and "--force" in error_line(err)


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda p: (p / "set.json").write_text("{"), "corrupt set.json"),
        (lambda p: (p / "b0.75" / "model.onnx").write_bytes(b"x"), "sha256"),
        (lambda p: shutil.rmtree(p / "b1.00"), "member b1.00 is missing"),
        (lambda p: (p / "set.json").write_text('{"kind": "other"}'), "not an edgeprune engine set"),
    ],
)
def test_damaged_set_exit_2(copy, damage, match, capsys):
    damage(copy)
    before = (copy / "set.json").read_bytes() if (copy / "set.json").exists() else None
    for command in ("calibrate", "inspect"):
        code, _, err = run([command, copy], capsys)
        assert code == 2 and match in error_line(err)
    assert before is None or (copy / "set.json").read_bytes() == before


def test_calibrate_not_a_set(tmp_path, capsys):
    code, _, err = run(["calibrate", tmp_path], capsys)
    assert code == 2 and "no set.json" in error_line(err)


def test_calibrate_built_engines(copy, tmp_path, capsys):
    assert main(["build", str(copy), "--precision", "fp16", "--out", str(tmp_path / "built"), "--no-cache"]) == 0
    capsys.readouterr()
    code, out, err = run(["calibrate", copy, "--engines", tmp_path / "built", "--rounds", 3, "--warmup", 1], capsys)
    assert code == 0, err
    assert "ort-cpu fp16 engines" in out and "b0.75 p50" in out
    stored = json.loads((tmp_path / "built" / "engines.json").read_text())["calibration"]
    assert stored["engines"]["precision"] == "fp16" and set(stored["members"]) == {"b1.00", "b0.75"}
    assert load_engine_set(copy).calibration is None  # the set's own calibration is untouched
    code, _, err = run(["calibrate", copy, "--engines", tmp_path / "built" / "b1.00"], capsys)
    assert code == 2 and "not a set build" in error_line(err)


def test_calibrate_on_openvino_beside_onnx_runtime(copy, capsys):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    code, out, err = run(["calibrate", copy, "--rounds", 3, "--warmup", 1, "--provider", "openvino", "--threads", 1], capsys)
    assert code == 0, err
    assert "on OpenVINO CPU fp32 (runs as OpenVINO CPU f32)" in " ".join(out.split()) and "b0.75 p50" in out
    data = json.loads((copy / "set.json").read_text())
    assert data["calibration"] is None  # ONNX Runtime's place stays ONNX Runtime's
    assert set(data["calibrations"]) == {"openvino:CPU:fp32"}
    assert set(data["calibrations"]["openvino:CPU:fp32"]["members"]) == {"b1.00", "b0.75"}
    load_engine_set(copy)  # still a valid set.json (schema, hashes)
    code, _, err = run(["calibrate", copy, "--rounds", 2, "--warmup", 0, "--threads", 1], capsys)
    assert code == 0, err
    data = json.loads((copy / "set.json").read_text())
    assert data["calibration"]["provider"] == "cpu" and set(data["calibrations"]) == {"openvino:CPU:fp32"}


@pytest.mark.parametrize("argv,words", [
    (["--provider", "onnx"], "--provider must be one of cpu, cuda, tensorrt, openvino, auto"),
    (["--provider", "auto"], "calibrate times one engine"),
    (["--precision", "bf16"], "--precision bf16 runs on --provider openvino"),
    (["--provider", "openvino", "--device", "NOPE"], "OpenVINO device 'NOPE' is not available here"),
    (["--provider", "openvino", "--precision", "int8"], "--precision must be one of fp32, bf16, fp16"),
])
def test_bad_engine_options_exit_2(copy, argv, words, capsys):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    before = (copy / "set.json").read_bytes()
    code, _, err = run(["calibrate", copy, *argv], capsys)
    assert code == 2 and words in error_line(err)
    assert (copy / "set.json").read_bytes() == before


def test_openvino_missing_names_the_package(copy, capsys, monkeypatch):
    import sys

    from edgeprune.backends import openvino as ov_backend

    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` does when it is not installed
    monkeypatch.setattr(ov_backend, "_CORE", None)
    code, _, err = run(["calibrate", copy, "--provider", "openvino"], capsys)
    assert code == 2 and 'pip install "edgeprune[openvino]"' in error_line(err)
