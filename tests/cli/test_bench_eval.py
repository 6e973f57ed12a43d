"""``edgeprune bench --eval``: segmentation artifacts get mIoU next to their timings."""

import json
from pathlib import Path

import pytest

from edgeprune.cli.main import main
from tests.cli.test_cli import error_line, run

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "scene_seg"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The reference segmenter unreduced and with ToMe at 0.6 MACs, plus a tiny classifier."""
    import edgeprune
    from edgeprune.families.timm_seg import load_segmenter
    from tests.conftest import make_tiny

    root = tmp_path_factory.mktemp("seg")
    model = load_segmenter(REFERENCE)
    edgeprune.export(model, edgeprune.build_plan(model, "none"), root / "none")
    edgeprune.export(model, edgeprune.build_plan(model, "tome", flops=0.6), root / "tome")
    tiny = make_tiny()
    edgeprune.export(tiny, edgeprune.build_plan(tiny, "none"), root / "classifier")
    return root


def test_bench_eval_reports_miou(artifacts, tmp_path, capsys):
    code, out, err = run(["bench", artifacts / "none", artifacts / "tome", "--rounds", "3", "--warmup", "1",
                          "--eval", "scenes:20", "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png"], capsys)
    assert code == 0, err
    assert "mIoU" in out and "mIoU kept" in out and "100.0%" in out
    data = json.loads((tmp_path / "b.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert rows["none"]["miou"] > 0.3 and rows["tome"]["miou"] > 0.3
    assert rows["none"]["miou_kept"] == 1.0
    assert rows["tome"]["miou_kept"] == pytest.approx(rows["tome"]["miou"] / rows["none"]["miou"])
    assert data["eval"]["images"] == 20 and [r["n"] for r in data["eval"]["results"]] == [20, 20]
    assert data["eval"]["data"].startswith("20 held-out scenes")
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_onnx_and_eager_scores_agree(artifacts):
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.families.timm_seg import load_segmenter
    from edgeprune.measure.seg_eval import evaluate_artifact, evaluate_module

    artifact = load_artifact(artifacts / "none")
    onnx_score = evaluate_artifact(artifact, 20)
    eager = evaluate_module(load_segmenter(REFERENCE), 20, artifact.manifest["model"]["input"])
    assert abs(onnx_score["miou"] - eager["miou"]) < 0.01


@pytest.mark.parametrize("spec, match", [("imagenet", "unknown evaluation"), ("scenes:0", "N must be"),
                                         ("scenes:lots", "N must be"), ("classifier", "segmentation artifact")])
def test_bad_eval_is_one_line_exit_2(artifacts, spec, match, capsys):
    targets = [artifacts / "none"]
    if spec == "classifier":
        spec, targets = "scenes:5", [artifacts / "none", artifacts / "classifier"]
    code, _, err = run(["bench", *targets, "--rounds", "1", "--eval", spec], capsys)
    line = error_line(err)
    assert code == 2 and line.startswith("error:") and match in line


def test_help_documents_eval(capsys):
    assert main(["bench", "--help"]) == 0
    assert "--eval" in capsys.readouterr().out


def test_bench_and_eval_on_openvino(artifacts, tmp_path, capsys):
    """The same artifacts timed and scored on OpenVINO: the same mIoU as ONNX Runtime (fp32), and the JSON
    says what ran them."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")
    scores = {}
    for provider in ("cpu", "openvino"):
        code, out, err = run(["bench", artifacts / "none", artifacts / "tome", "--rounds", "2", "--warmup", "1",
                              "--threads", "1", "--provider", provider, "--eval", "scenes:8",
                              "--json", tmp_path / f"{provider}.json"], capsys)
        assert code == 0, err
        data = json.loads((tmp_path / f"{provider}.json").read_text())
        expected = "OpenVINO CPU f32" if provider == "openvino" else "CPUExecutionProvider"
        assert data["providers"] == [expected] and data["engines"] == [expected, expected]
        scores[provider] = {r["name"]: r["miou"] for r in data["rows"]}
    for name, miou in scores["cpu"].items():
        assert scores["openvino"][name] == pytest.approx(miou, abs=2e-3)
    code, _, err = run(["bench", artifacts / "none", "--provider", "openvino", "--precision", "int8"], capsys)
    assert code == 2 and "--precision must be one of fp32, bf16, fp16" in error_line(err)
