"""``edgeprune export LLAVA_FOLDER``: the multimodal path of the CLI, and its bad inputs (one line, exit 2,
nothing written)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from edgeprune.cli.main import main  # noqa: E402
from tests.cli.test_cli import error_line, run  # noqa: E402
from tests.mllm.llava_models import make_clip_query_folder, make_llava  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llava") / "llava"
    make_llava("llava-clip").save_pretrained(folder)
    return folder


def test_export_llava_visionzip(llava_folder, tmp_path, capsys):
    code, out, err = run(["export", llava_folder, "--method", "visionzip", "--tokens", "8", "--out", tmp_path / "vz"], capsys)
    assert code == 0, err
    assert "64 patches -> 8 tokens for the LLM" in out and "indices identical" in out
    manifest = json.loads((tmp_path / "vz" / "manifest.json").read_text())
    assert manifest["kind"] == "mllm-visual" and manifest["options"] == {"dominant": 7}
    code, out, err = run(["inspect", tmp_path / "vz"], capsys)
    assert code == 0 and "64 patches -> 8 tokens for the LLM" in out, err
    code, out, err = run(["lint", tmp_path / "vz"], capsys)
    assert code == 0 and "model.onnx" in out, err
    code, _, err = run(["bench", tmp_path / "vz"], capsys)
    assert code == 2 and "is a multimodal vision artifact" in error_line(err)


def test_export_llava_script_with_query_tower(llava_folder, tmp_path, capsys):
    clip = make_clip_query_folder(tmp_path / "clip")
    out_dir = tmp_path / "script"
    code, out, err = run(["export", llava_folder, "--method", "script", "--tokens", "8", "--query-tower", clip,
                          "--option", "survivors=24", "--out", out_dir], capsys)
    assert code == 0, err
    assert (out_dir / "query" / "query.onnx").is_file() and "query tower" in out


def _refused(argv, out_dir, capsys, message):
    capsys.readouterr()  # the fixtures' own save_pretrained progress bars
    code, _, err = run([*argv, "--out", out_dir], capsys)
    assert code == 2
    assert message in error_line(err)
    assert not out_dir.exists() and not list(out_dir.parent.glob(f".{out_dir.name}.*"))


def test_not_a_llava_folder(tmp_path, capsys):
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    _refused(["export", folder, "--method", "script", "--tokens", "8"], tmp_path / "o", capsys,
             "is not a LLaVA model folder: model_type 'vit'")


def test_more_tokens_than_patches(llava_folder, tmp_path, capsys):
    _refused(["export", llava_folder, "--method", "gsp", "--tokens", "65"], tmp_path / "o", capsys,
             "--tokens 65 is not in 1..64")


def test_query_tower_of_another_width(llava_folder, tmp_path, capsys):
    clip = make_clip_query_folder(tmp_path / "clip32", vision_width=32)
    _refused(["export", llava_folder, "--method", "qcsp", "--tokens", "8", "--query-tower", clip], tmp_path / "o", capsys,
             "vision width is 32 but the LLaVA tower's is 64")


@pytest.mark.parametrize("argv,message", [
    (["--method", "qcsp", "--tokens", "8"], "pass --query-tower"),
    (["--method", "gsp"], "needs --tokens K"),
    (["--method", "gsp", "--tokens", "8", "--keep", "0.5"], "--keep do not apply to LLaVA models"),
    (["--tokens", "8"], "choose --method for a LLaVA model"),
    (["--method", "visionzip", "--tokens", "8", "--option", "survivors=3"], "option 'survivors' does not apply to visionzip"),
])
def test_flag_errors(llava_folder, tmp_path, capsys, argv, message):
    _refused(["export", llava_folder, *argv], tmp_path / "o", capsys, message)


def test_export_main_returns_zero_for_help():
    assert main(["export", "--help"]) == 0
