import json
import shutil

import pytest

import edgeprune
from edgeprune import EdgepruneError
from edgeprune.artifacts.artifact import load_artifact
from edgeprune.exporting.onnx_export import export
from tests.conftest import make_tiny


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    model = make_tiny("cls")
    path = tmp_path_factory.mktemp("art") / "a"
    export(model, edgeprune.build_plan(model, "gsp", keep=0.5), path)
    return path


def copy(artifact_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(artifact_dir, dst)
    return dst


def test_loads(artifact_dir):
    a = load_artifact(artifact_dir)
    assert a.method == "gsp" and a.plan.final_tokens == 8


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda d: (d / "manifest.json").write_text("{not json"), "corrupt manifest"),
        (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{}"), "lacks required keys"),
        (lambda d: (d / "model.onnx").unlink(), "missing"),
        (lambda d: (d / "model.onnx").write_bytes(b"garbage"), "sha256"),
    ],
)
def test_damaged_artifacts_are_named(artifact_dir, tmp_path, damage, match):
    d = copy(artifact_dir, tmp_path)
    damage(d)
    with pytest.raises(EdgepruneError, match=match):
        load_artifact(d)


def test_bad_plan_in_manifest(artifact_dir, tmp_path):
    d = copy(artifact_dir, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["plan"]["keep"] = [1000] * 4
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgepruneError, match="grows"):
        load_artifact(d)


def test_not_a_directory(tmp_path):
    with pytest.raises(EdgepruneError, match="not an artifact"):
        load_artifact(tmp_path / "nope")
