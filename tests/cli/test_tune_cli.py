"""``edgeprune tune`` and ``edgeprune export --plan`` as users run them, on a real MNIST ViT and real
digits: the plan file round-trips into an exported artifact; bad input is one line, exit 2, nothing written."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from edgeprune.cli.main import main
from edgeprune.plan.token_plan import TokenPlan

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "mnist_vit_mit.json"
CKPT = ROOT.parent / "shared" / "models" / "mnist_vit_mit" / "vit_mnist_gpu.pt"
MNIST = ROOT.parent / "shared" / "data" / "mnist"
TIMM_DIR = ROOT / "models" / "mnist_vit"

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not (CKPT.is_file() and (MNIST / "t10k-images-idx3-ubyte.gz").is_file()),
                                 reason="the shared MNIST ViT checkpoint or digits are not present")]

SPEC_MODEL = [SPEC, "--checkpoint", CKPT]
# The budget only sizes the screening subset, capped at the calibration count: 3 minutes keeps it at all
# 100 images even on a very busy core, so a rerun finds every score cached.
FAST = ["--methods", "tome,prune-merge", "--budget-minutes", "3", "--threads", "1"]


def timm_model() -> list:
    config = json.loads((TIMM_DIR / "config.json").read_text())
    args = [a for k, v in config["model_args"].items() for a in ("--model-arg", f"{k}={v}")]
    return [config["timm_name"], *args, "--checkpoint", TIMM_DIR / "model.safetensors"]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str, alone: bool = True) -> str:
    """The one error line. ``alone=False``: checks that come after the calibration images were read may
    follow that step's informational line on stderr."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert len(lines) == 1 or not alone, err
    assert "Traceback" not in err, err
    return errors[0]




@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """tune on the spec model with 100 calibration and 100 hold-out digits, then export the plan file."""
    root = tmp_path_factory.mktemp("tune_cli")
    plan = root / "plan.json"
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in ["tune", *SPEC_MODEL, "--calib", MNIST, "--calib-count", 100, "--holdout", 100,
                                      "--flops", 0.6, "--out", plan, "--cache-dir", root / "cache", *FAST]])
    assert code == 0, err.getvalue()
    tune_out = out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in ["export", *SPEC_MODEL, "--plan", plan, "--out", root / "art", "--threads", 1]])
    assert code == 0, err.getvalue()
    return root, plan, tune_out


def test_tune_writes_a_valid_plan_with_a_report(tuned):
    root, path, stdout = tuned
    doc = json.loads(path.read_text())
    plan = TokenPlan.from_dict(doc)
    assert plan.macs_ratio <= 0.6 + 1e-9 and doc["macs_ratio"] <= 0.6
    assert plan.prefix_only_last is True and plan.method in ("tome", "prune-merge")
    assert plan.spec.num_patches == 49 and plan.spec.depth == 6  # 28x28 digits, 4x4 patches
    assert plan.target["planner"] == "tune" and plan.target["flops"] == 0.6
    report = doc["tune"]
    assert report["target"] == {"flops": 0.6}
    assert report["normalisation"]["mean"] == [0.1307] and report["normalisation"]["std"] == [0.3081]
    assert report["chosen"]["keep"] == doc["keep"]
    assert report["constant_r"] is not None and report["constant_r"]["macs_ratio"] <= 0.6
    assert report["chosen"]["scores"]["full"]["kl"] <= report["constant_r"]["scores"]["full"]["kl"]
    hold = report["holdout"]
    for part in ("baseline", "tuned", "constant_r"):
        assert hold[part]["n"] == 100 and 0 <= hold[part]["top1"] <= 1
    assert hold["baseline"]["kl"] == pytest.approx(0.0, abs=1e-6) and hold["baseline"]["top1"] > 0.9
    assert hold["tuned"]["top1"] >= hold["baseline"]["top1"] - 0.05
    assert report["info"]["calibration_images"] == 100
    assert all(c["cost"] <= 0.6 for c in report["candidates"])
    assert "hold-out top1 on 100 images" in stdout and f"wrote {path}" in stdout
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_export_bakes_the_plan_file_in(tuned):
    root, path, _ = tuned
    doc = json.loads(path.read_text())
    manifest = json.loads((root / "art" / "manifest.json").read_text())
    assert manifest["plan"]["keep"] == doc["keep"]
    assert manifest["plan"]["prefix_only_last"] == doc["prefix_only_last"] is True
    assert manifest["plan"]["method"] == doc["method"] and manifest["plan"]["options"] == doc["options"]
    assert manifest["plan"]["prop_attn"] == doc["prop_attn"]
    assert manifest["flops"]["macs_ratio"] == pytest.approx(doc["macs_ratio"], abs=1e-4)
    assert manifest["parity"]["max"] <= 1e-4
    assert (root / "art" / manifest["onnx"]["file"]).is_file()


def test_result_table_names_the_schedule_shape(tuned):
    """Candidate labels hold brackets; the table must print them as text, not read them as markup."""
    _, path, stdout = tuned
    label = json.loads(path.read_text())["tune"]["chosen"]["label"]
    shape = label[label.index("[") + 1 : label.index("]")]
    assert shape.startswith("from ") and shape in stdout


def test_existing_out_needs_force_and_a_rerun_resumes(tuned, tmp_path, capsys):
    root, path, _ = tuned
    out_file = tmp_path / "plan.json"
    shutil.copy(path, out_file)
    before = out_file.read_bytes()
    args = ["tune", *SPEC_MODEL, "--calib", MNIST, "--calib-count", 100, "--holdout", 0, "--flops", 0.6,
            "--out", out_file, "--cache-dir", root / "cache", *FAST]
    code, _, err = run(args, capsys)
    assert code == 2 and "--force" in error_line(err)
    assert out_file.read_bytes() == before
    code, out, err = run([*args, "--force"], capsys)
    assert code == 0, err
    doc = json.loads(out_file.read_text())
    assert doc["keep"] == json.loads(before)["keep"]
    assert doc["tune"]["info"]["screen_images"] == json.loads(before)["tune"]["info"]["screen_images"] == 100
    assert doc["tune"]["info"]["resumed_scores"] > 0 and doc["tune"]["holdout"] == {}
    assert "0 scores resumed" not in out and "scores resumed" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


@pytest.fixture(scope="module")
def timm_plan(tmp_path_factory):
    """tune on the timm MNIST ViT (32x32 input: digits padded, normalisation given on the command line)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("tune_timm")
    path = root / "timm_plan.json"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in ["tune", *timm_model(), "--calib", MNIST, "--calib-count", 60, "--holdout", 0,
                                      "--fit", "pad", "--mean", "0.1307", "--std", "0.3081", "--flops", 0.7,
                                      "--methods", "tome", "--budget-minutes", 1, "--threads", 1,
                                      "--out", path, "--cache-dir", root / "cache"]])
    assert code == 0, err.getvalue()
    return path


def test_tune_a_timm_model_with_pad_and_given_normalisation(timm_plan):
    doc = json.loads(timm_plan.read_text())
    plan = TokenPlan.from_dict(doc)
    assert plan.spec.num_patches == 64 and plan.macs_ratio <= 0.7 + 1e-9 and plan.method == "tome"
    assert doc["tune"]["normalisation"] == {"mean": [0.1307], "std": [0.3081], "source": "--mean/--std"}
    assert doc["tune"]["info"]["calibration_images"] == 60 and doc["tune"]["holdout"] == {}
    assert doc["tune"]["chosen"]["scores"]["full"]["top1"] > 0.85  # padded, normalised digits: the model sees them right


def no_normalisation_spec(tmp_path) -> Path:
    data = json.loads(SPEC.read_text())
    del data["image"]["mean"], data["image"]["std"]
    path = tmp_path / "spec_without_norm.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case", ["missing_calib", "calib_is_file", "empty_calib", "text_only_calib", "both_targets",
                                  "no_target", "no_normalisation", "mean_count", "mean_without_std", "mean_not_numbers",
                                  "bad_fit", "bad_method", "out_folder_missing", "zero_target"])
def test_tune_bad_input(case, tmp_path, capsys):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    out_file = out_dir / "plan.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "text_only").mkdir()
    (tmp_path / "text_only" / "a.txt").write_text("x")
    (tmp_path / "file.png").write_bytes(b"x")
    model, calib, target, extra = list(SPEC_MODEL), MNIST, ["--flops", "0.6"], []
    expect = {
        "missing_calib": "not a folder", "calib_is_file": "not a folder", "empty_calib": "no images",
        "text_only_calib": "no images", "both_targets": "exactly one", "no_target": "exactly one",
        "no_normalisation": "--mean", "mean_count": "--mean", "mean_without_std": "together",
        "mean_not_numbers": "--mean", "bad_fit": "fit", "bad_method": "magic", "out_folder_missing": "does not exist",
        "zero_target": "0",
    }[case]
    if case == "missing_calib":
        calib = tmp_path / "nowhere"
    elif case == "calib_is_file":
        calib = tmp_path / "file.png"
    elif case == "empty_calib":
        calib = empty
    elif case == "text_only_calib":
        calib = tmp_path / "text_only"
    elif case == "both_targets":
        target = ["--flops", "0.6", "--latency", "0.6"]
    elif case == "no_target":
        target = []
    elif case == "no_normalisation":
        model = [no_normalisation_spec(tmp_path), "--checkpoint", CKPT]
    elif case == "mean_count":
        extra = ["--mean", "0.1,0.2", "--std", "0.3"]
    elif case == "mean_without_std":
        extra = ["--mean", "0.1"]
    elif case == "mean_not_numbers":
        extra = ["--mean", "zero", "--std", "0.3"]
    elif case == "bad_fit":
        extra = ["--fit", "stretch"]
    elif case == "bad_method":
        extra = ["--methods", "tome,magic"]
    elif case == "out_folder_missing":
        out_file = out_dir / "sub" / "plan.json"
    elif case == "zero_target":
        target = ["--flops", "0"]
    code, _, err = run(["tune", *model, "--calib", calib, *target, "--out", out_file, "--calib-count", 20,
                        "--holdout", 0, "--budget-minutes", 1, "--threads", 1, "--cache-dir", tmp_path / "cache", *extra],
                       capsys)
    assert code == 2
    assert expect in error_line(err, alone=case not in ("bad_method", "zero_target"))
    assert list(out_dir.iterdir()) == []


def test_tune_no_normalisation_works_with_mean_and_std(tmp_path, capsys):
    """The model without normalisation info is accepted once --mean/--std are given (the refusal above is about them)."""
    out_file = tmp_path / "p.json"
    code, _, err = run(["tune", no_normalisation_spec(tmp_path), "--checkpoint", CKPT, "--calib", MNIST,
                        "--calib-count", 30, "--holdout", 0, "--flops", 0.7, "--methods", "tome", "--mean", 0.1307,
                        "--std", 0.3081, "--out", out_file, "--budget-minutes", 1, "--threads", 1,
                        "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 0, err
    assert json.loads(out_file.read_text())["tune"]["normalisation"]["source"] == "--mean/--std"


@pytest.mark.parametrize("case", ["missing", "not_json", "not_object", "wrong_format", "other_model", "with_flops",
                                  "with_method", "with_budgets"])
def test_export_plan_bad_input(case, tuned, timm_plan, tmp_path, capsys):
    _, good, _ = tuned
    plan, extra = tmp_path / "plan.json", []
    expect = {"missing": "does not exist", "not_json": "cannot read", "not_object": "not a plan",
              "wrong_format": "format", "other_model": "another model", "with_flops": "--flops",
              "with_method": "--method", "with_budgets": "--budgets"}[case]
    if case == "not_json":
        plan.write_text("{ this is not json")
    elif case == "not_object":
        plan.write_text("[1, 2, 3]")
    elif case == "wrong_format":
        doc = json.loads(good.read_text())
        doc["format"] = 999
        plan.write_text(json.dumps(doc))
    elif case == "other_model":
        plan = timm_plan  # made for the 32x32 timm model, not the 28x28 spec model
    elif case == "missing":
        pass
    else:
        plan = good
        extra = {"with_flops": ["--flops", "0.5"], "with_method": ["--method", "evit"],
                 "with_budgets": ["--budgets", "1.0,0.5"]}[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["export", *SPEC_MODEL, "--plan", plan, "--out", tmp_path / "art", "--threads", 1, *extra], capsys)
    assert code == 2
    assert expect in error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp folder left
