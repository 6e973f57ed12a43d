"""The command line as users run it: exit codes, one-line errors, nothing half-written."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from edgeprune.cli.main import main
from tests.conftest import TINY

TINY_ARGS = [arg for k, v in TINY.items() for arg in ("--model-arg", f"{k}={v}")]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for method, budget in (("none", []), ("tome", ["--flops", "0.6"]), ("evit", ["--keep", "0.4", "--points", "1"])):
        code = main(["export", "vit_tiny_patch16_224", *TINY_ARGS, "--method", method, *budget, "--out", str(root / method)])
        assert code == 0
    return root


def test_export_inspect_bench(exported, tmp_path, capsys):
    code, out, _ = run(["inspect", exported / "tome"], capsys)
    assert code == 0 and "plan per block" in out and "TopK" in out
    code, out, _ = run(["inspect", exported / "tome", "--json"], capsys)
    assert code == 0 and json.loads(out)["method"] == "tome"
    (tmp_path / "acc.json").write_text(json.dumps({"tome": 0.9, "none": 0.95}))
    code, out, err = run(
        ["bench", exported / "none", exported / "tome", exported / "evit", "--rounds", 5, "--warmup", 1,
         "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png", "--accuracy", tmp_path / "acc.json"],
        capsys,
    )
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert result["baseline"] == "none" and rows["none"]["speedup"] == 1.0
    assert rows["tome"]["predicted_speedup"] > 1 and rows["tome"]["p50_ms"] > 0
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "0.9" in out


def test_checkpoint_roundtrip_and_mismatch(tmp_path, capsys):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    for ckpt in ("w.safetensors", "w.pth"):
        code, _, err = run(["export", "vit_tiny_patch16_224", *TINY_ARGS, "--checkpoint", tmp_path / ckpt,
                            "--method", "gsp", "--keep", "0.5", "--out", tmp_path / f"out_{ckpt}"], capsys)
        assert code == 0, err
        manifest = json.loads((tmp_path / f"out_{ckpt}" / "manifest.json").read_text())
        assert manifest["model"]["checkpoint_sha256"]
    other = [a if a != "embed_dim=32" else "embed_dim=48" for a in TINY_ARGS]
    code, _, err = run(["export", "vit_tiny_patch16_224", *other, "--checkpoint", tmp_path / "w.safetensors",
                        "--out", tmp_path / "mismatch", "--flops", "0.5"], capsys)
    assert code == 2 and "does not fit" in error_line(err)
    assert not (tmp_path / "mismatch").exists()


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "argv,match",
    [
        (["export", "vit_nonexistent_model", "--out", "{tmp}/x"], "unknown model"),
        (["export", "vit_tiny_patch16_224", *TINY_ARGS, "--keep", "1.5", "--out", "{tmp}/x"], "--keep"),
        (["export", "vit_tiny_patch16_224", *TINY_ARGS, "--flops", "0.001", "--out", "{tmp}/x"], "cannot reach"),
        (["export", "vit_tiny_patch16_224", *TINY_ARGS, "--out", "{tmp}/x"], "exactly one"),
        (["export", "vit_tiny_patch16_224", *TINY_ARGS, "--flops", "0.5", "--checkpoint", "{tmp}/missing.pth", "--out", "{tmp}/x"], "does not exist"),
        (["export", "vit_tiny_patch16_224", *TINY_ARGS, "--flops", "0.5", "--checkpoint", "{tmp}/evil.pth", "--out", "{tmp}/x"], "plain weights"),
        (["export", "vit_tiny_patch16_224", *TINY_ARGS, "--flops", "0.5", "--checkpoint", "{tmp}/junk.safetensors", "--out", "{tmp}/x"], "safetensors"),
        (["export", "vit_tiny_patch16_224", "--model-arg", "depth", "--out", "{tmp}/x"], "KEY=VALUE"),
        (["export", "vit_tiny_patch16_224", *TINY_ARGS, "--flops", "0.5", "--points", "1,x", "--out", "{tmp}/x"], "comma-separated"),
        (["export", "resnet18", "--flops", "0.5", "--out", "{tmp}/x"], "not a supported ViT family"),
        (["export", "vit_tiny_patch16_224", *TINY_ARGS, "--flops", "0.5", "--tile", "fast", "--out", "{tmp}/x"], "--tile must be"),
        (["export", "vit_tiny_patch16_224", *TINY_ARGS, "--flops", "0.5", "--engine", "openvino-int4", "--out", "{tmp}/x"], "known engines"),
        (["inspect", "{tmp}"], "no manifest.json"),
        (["bench", "{tmp}/nothing"], "not an artifact"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, match, tmp_path, capsys):
    torch.save(Evil(), tmp_path / "evil.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    code, out, err = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    assert match in error_line(err)
    assert "unpickled!" not in out
    assert not (tmp_path / "x").exists()


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(["export", "vit_tiny_patch16_224", *TINY_ARGS, "--flops", "0.5", "--out", blocker / "sub"], capsys)
    assert code == 2 and "cannot write" in error_line(err)


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgeprune.cli.main", "export", "vit_tiny_patch16_224", "--tokens", "0", "--out", str(tmp_path / "x")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--tokens" in proc.stderr
    help_proc = subprocess.run([sys.executable, "-m", "edgeprune.cli.main", "--help"], capture_output=True, text=True)
    assert help_proc.returncode == 0
    for command in ("export", "bench", "inspect"):
        assert command in help_proc.stdout


def test_latency_budget_end_to_end(tmp_path, capsys):
    # Enough tokens (256) and width that dropping tokens pays for the reducer on a CPU.
    wide = ["--model-arg", "img_size=64", "--model-arg", "patch_size=4", "--model-arg", "embed_dim=128",
            "--model-arg", "depth=4", "--model-arg", "num_heads=2"]
    code, _, err = run(["export", "vit_tiny_patch16_224", *wide, "--method", "tome", "--latency", "0.8",
                        "--out", tmp_path / "lat"], capsys)
    assert code == 0, err
    target = json.loads((tmp_path / "lat" / "manifest.json").read_text())["plan"]["target"]
    assert target["planner"] == "latency-search" and target["predicted_latency_ratio"] <= 0.8
    code, _, err = run(["export", "vit_tiny_patch16_224", *wide, "--method", "tome", "--latency", "0.01",
                        "--out", tmp_path / "lat2"], capsys)
    assert code == 2 and "latency ratio of 0.01" in error_line(err)


def test_hf_folder_export(tmp_path, capsys):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                image_size=32, patch_size=8)
    SiglipVisionModel(config).save_pretrained(tmp_path / "siglip")
    code, _, err = run(["export", tmp_path / "siglip", "--method", "gsp", "--keep", "0.5", "--dynamic-batch",
                        "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"]["source"] == "huggingface"
    assert [o["name"] for o in manifest["outputs"]] == ["last_hidden_state", "pooler_output", "token_sizes"]
    assert manifest["outputs"][0]["shape"][1:] == [8, 32]
    code, _, err = run(["export", tmp_path / "siglip", "--checkpoint", tmp_path / "w.pth", "--flops", "0.5",
                        "--out", tmp_path / "out2"], capsys)
    assert code == 2 and "HF folder" in error_line(err)


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip().startswith("edgeprune ")


def test_usage_errors_exit_2(capsys):
    code, _, err = run(["export"], capsys)
    assert code == 2 and "Traceback" not in err
    code, _, err = run(["export", "vit_tiny_patch16_224", "--out", "x", "--batch", "0"], capsys)
    assert code == 2
    code, out, _ = run([], capsys)
    assert code == 0 and "export" in out


def test_tile_and_engine_round_the_exported_plan(tmp_path, capsys):
    """16 patches + CLS at 0.6 MACs: --tile 8 puts every reduction point on a multiple of 8 tokens;
    --engine openvino-bf16 plans with its tile of 32 (here: every point at 32 or left alone)."""
    wide = [a for k, v in dict(TINY, img_size=64).items() for a in ("--model-arg", f"{k}={v}")]  # 64 patches + CLS
    code, _, err = run(["export", "vit_tiny_patch16_224", *wide, "--flops", "0.6", "--tile", "8", "--out", tmp_path / "t8"], capsys)
    assert code == 0, err
    plan = json.loads((tmp_path / "t8" / "manifest.json").read_text())["plan"]
    assert plan["tile"] == 8 and plan["macs_ratio"] <= 0.6 and plan["reduction_points"]
    assert all((1 + plan["keep"][b]) % 8 == 0 for b in plan["reduction_points"])
    code, _, err = run(["export", "vit_tiny_patch16_224", *wide, "--flops", "0.7", "--engine", "openvino-bf16", "--out", tmp_path / "ov"], capsys)
    assert code == 0, err
    plan = json.loads((tmp_path / "ov" / "manifest.json").read_text())["plan"]
    assert plan["tile"] == 32 and all((1 + plan["keep"][b]) % 32 == 0 for b in plan["reduction_points"])
