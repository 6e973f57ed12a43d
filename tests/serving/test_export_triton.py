"""``edgeprune export-triton`` for real: a tiny calibrated engine set (``served_set`` in conftest) becomes a
production Triton repository; its configs are checked with Triton's schema, its ONNX run in ONNX Runtime,
and its scheduler loaded in the Triton server PyTriton bundles (which has only the Python backend)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.serving.load_check import check_load
from edgeprune.serving.production import (
    NOT_RUN, SCRIPT_FILE, ProductionOptions, budget_model_config, export_triton, trtexec_script,
)

pytest.importorskip("tritonclient.grpc", reason="Triton configs are checked with tritonclient[grpc]'s schema")


@pytest.fixture(scope="module")
def repo(served_set, tmp_path_factory):
    """The repository of the served set: ONNX Runtime on CPU, batches up to 4."""
    options = ProductionOptions(name="seg", device="cpu", max_batch=4, threads=1)
    return export_triton(served_set, tmp_path_factory.mktemp("triton_prod") / "repo", options)


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_every_config_fits_tritons_schema(repo):
    from edgeprune.serving.repository import check_config, check_repository

    configs = check_repository(repo.path)
    assert set(configs) == {"seg", "seg_b1.00", "seg_b0.50"}
    for model in repo.models:
        config = check_config(repo.path / model.name / "config.pbtxt")
        assert config.backend == "onnxruntime" and config.max_batch_size == 4
        assert [i.name for i in config.input] == ["pixel_values"] and list(config.input[0].dims) == [3, 32, 32]
        assert [o.name for o in config.output] == ["logits"] and list(config.output[0].dims) == [5, 32, 32]
        assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
        assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
        assert config.parameters["intra_op_thread_count"].string_value == "1"
        assert config.optimization.graph.level == 1
    scheduler = configs["seg"]
    assert scheduler.backend == "python" and scheduler.max_batch_size == 4
    assert {i.name for i in scheduler.input} == {"image", "pixels"}
    assert scheduler.parameters["edgeprune_service"].string_value == "service.json"  # relative: the repo can move
    service = json.loads((repo.path / "seg" / "service.json").read_text())
    assert {(m["engine"], m["batch"]) for m in service["members"]} == {
        (f"seg_{b}", n) for b in ("b1.00", "b0.50") for n in (1, 2, 4)}
    # latency priors: the set's calibration scaled by batch size
    by_key = {(m["name"], m["batch"]): m["p50_ms"] for m in service["members"]}
    for model in repo.models:
        assert by_key[model.member, 4] == pytest.approx(4 * model.p50_ms, rel=1e-3)
    assert str(repo.path) not in (repo.path / "seg" / "config.pbtxt").read_text()


def test_budget_models_take_any_batch_and_equal_the_set(repo, served_set):
    rng = np.random.default_rng()
    for model in repo.models:
        production = _session(repo.path / model.name / "1" / "model.onnx")
        member = _session(served_set / model.member / "model.onnx")
        pixels = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
        batch3 = production.run(["logits"], {"pixel_values": pixels})[0]
        assert batch3.shape == (3, 5, 32, 32)
        for row in range(3):
            one = production.run(["logits"], {"pixel_values": pixels[row:row + 1]})[0]
            expected = member.run(None, {"pixel_values": pixels[row:row + 1]})[0]
            scale = float(np.abs(expected).max())
            np.testing.assert_allclose(one, expected, rtol=1e-4, atol=1e-5 * scale)
            np.testing.assert_allclose(batch3[row:row + 1], expected, rtol=1e-4, atol=1e-5 * scale)


def test_readme_says_how_to_run_and_what_was_not_run(repo):
    text = (repo.path / "README.md").read_text()
    assert "docker run --rm" in text and "tritonserver --model-repository=/models" in text
    assert "pip install edgeprune" in text and "EXECUTION_ENV_PATH" in text
    assert "deadline_ms" in text and "budget" in text and NOT_RUN in text
    assert "seg_b0.50" in text and "this machine's CPU calibration" in text


def test_scheduler_loads_in_the_bundled_server(repo):
    pytest.importorskip("pytriton", reason="the bundled tritonserver comes with nvidia-pytriton")
    report = check_load(repo.path, repo.name, [m.name for m in repo.models], timeout_s=120)
    assert set(report.budget_errors) == {"seg_b1.00", "seg_b0.50"}
    assert all("onnxruntime" in error for error in report.budget_errors.values())  # no such backend in the wheel
    assert report.summary == ("scheduler model seg loaded in the bundled server; 2 budget models need the "
                              "onnxruntime backend (not in PyTriton's wheel)")
    assert not (repo.path / "seg" / "1" / "__pycache__").exists()  # loading left the repository as exported


def test_refusals(repo, served_set, tmp_path):
    def refused(words, source=served_set, out=tmp_path / "new", **options):
        with pytest.raises(EdgepruneError, match=words):
            export_triton(source, out, ProductionOptions(**options))
        assert not (tmp_path / "new").exists()

    refused("already exists", out=repo.path)
    refused("does not exist", source=tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    refused("not an engine set", source=tmp_path / "plain")
    uncalibrated = tmp_path / "uncalibrated"
    shutil.copytree(served_set, uncalibrated)
    manifest = json.loads((uncalibrated / "set.json").read_text())
    manifest["calibration"] = None
    (uncalibrated / "set.json").write_text(json.dumps(manifest))
    refused("not calibrated.*edgeprune calibrate", source=uncalibrated)
    refused("--max-batch must be from 1 to 1024", max_batch=0)
    refused("--max-batch must be from 1 to 1024", max_batch=5000)
    refused("--backend must be one of onnxruntime, tensorrt, openvino", backend="tensorflow")
    refused("--backend tensorrt runs on GPUs only", backend="tensorrt", device="cpu")
    refused("--accelerator tensorrt", accelerator="tensorrt", device="cpu")
    refused("model name", name="bad name")


def test_gpu_and_tensorrt_settings_fit_the_schema(repo):
    from edgeprune.serving.repository import config_text

    manifest = json.loads((repo.path / "seg_b0.50" / "manifest.json").read_text())
    ort_trt = budget_model_config("m", manifest, ProductionOptions(accelerator="tensorrt", precision="fp16",
                                                                   instances=2, workspace_mb=512))
    text = config_text(ort_trt)
    assert "KIND_GPU" in text and "count: 2" in text and 'name: "tensorrt"' in text
    accelerator = ort_trt["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]["parameters"]
    assert accelerator == {"precision_mode": "FP16", "max_workspace_size_bytes": str(512 << 20),
                           "trt_engine_cache_enable": "true", "trt_engine_cache_path": "/tmp/triton-trt-cache/m"}
    plan = budget_model_config("m", manifest, ProductionOptions(backend="tensorrt", max_batch=8))
    assert 'platform: "tensorrt_plan"' in config_text(plan) and "backend" not in plan
    script = trtexec_script(["m_b1.00", "m_b0.50"], "pixel_values", [3, 32, 32],
                            ProductionOptions(backend="tensorrt", max_batch=8, precision="fp16"))
    assert script.startswith("#!/usr/bin/env bash") and NOT_RUN in script
    for model in ("m_b1.00", "m_b0.50"):
        assert (f"--onnx={model}/model.onnx --saveEngine={model}/1/model.plan" in script)
    assert "--minShapes=pixel_values:1x3x32x32 --optShapes=pixel_values:8x3x32x32 " \
           "--maxShapes=pixel_values:8x3x32x32" in script
    assert "--fp16" in script


def test_openvino_budget_models_fit_the_backends_layout(repo, served_set, tmp_path):
    """--backend openvino: a budget model is the layout Triton's OpenVINO backend reads (backend "openvino",
    default_model_filename model.onnx in 1/, CPU instances, its string parameters), and that very file, compiled
    by OpenVINO here, equals the set's member. PyTriton's server has no OpenVINO backend, so the backend itself is
    not run: the files are checked structurally and their contents with OpenVINO's own Python API."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")
    from edgeprune.backends.feeds import relative_error
    from edgeprune.backends.runners import make_runner
    from edgeprune.serving.repository import check_config, write_config

    options = ProductionOptions(name="ov", backend="openvino", max_batch=4, threads=2, precision="bf16")
    options.validate()
    assert options.device == "cpu"
    rng = np.random.default_rng()
    for model in repo.models:
        folder = tmp_path / f"ov_{model.member}"
        (folder / "1").mkdir(parents=True)
        shutil.copy2(repo.path / model.name / "1" / "model.onnx", folder / "1" / "model.onnx")  # the same re-export
        manifest = json.loads((repo.path / model.name / "manifest.json").read_text())
        config = check_config(write_config(folder, budget_model_config(folder.name, manifest, options)))
        assert config.backend == "openvino" and config.default_model_filename == "model.onnx" and not config.platform
        assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
        assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
        assert {k: v.string_value for k, v in config.parameters.items()} == {
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2", "HINT_BF16": "YES"}
        (folder / "1" / "model.onnx").rename(folder / "1" / "model.xml")  # the backend's default file is not it
        with pytest.raises(EdgepruneError, match="missing model.onnx for openvino"):
            check_config(folder / "config.pbtxt")
        member = _session(served_set / model.member / "model.onnx")
        with make_runner(repo.path / model.name / "1" / "model.onnx", "openvino", 1) as runner:
            pixels = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
            batch3 = runner.infer({"pixel_values": pixels})["logits"]
            for row in range(3):
                expected = member.run(None, {"pixel_values": pixels[row:row + 1]})[0]
                assert relative_error(batch3[row:row + 1], expected) <= 1e-4
    plain = budget_model_config("m", manifest, ProductionOptions(backend="openvino"))
    assert {k: v["string_value"] for k, v in plain["parameters"].items()} == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    with pytest.raises(EdgepruneError, match="--backend openvino: Triton's OpenVINO backend runs on CPU instances"):
        ProductionOptions(backend="openvino", device="gpu").validate()
    with pytest.raises(EdgepruneError, match="--precision must be one of fp32, bf16, got 'fp16'"):
        ProductionOptions(backend="openvino", precision="fp16").validate()
    assert ProductionOptions(backend="openvino").precision == "fp32" and ProductionOptions().precision == "fp16"


def _cli(argv: list[str]) -> int:
    """The installed CLI when ``export-triton`` is registered in it, else the same command on its own app."""
    import typer

    from edgeprune.cli import main as cli
    from edgeprune.cli.export_triton_cmd import export_triton as command

    if any(c.name == "export-triton" for c in cli.app.registered_commands):
        return cli.main(["export-triton", *argv])
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command(name="export-triton", help=command.__doc__)(command)
    app.command(name="other")(lambda: None)  # two commands, so the name is part of the command line
    try:
        app(args=["export-triton", *argv], standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    except EdgepruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def test_cli_refusals_are_one_line(served_set, tmp_path, capsys):
    for argv, words in ((["--max-batch", "0"], "--max-batch must be from 1 to 1024"),
                        (["--backend", "triton"], "--backend must be one of"),
                        (["--device", "cpu", "--backend", "tensorrt"], "runs on GPUs only")):
        assert _cli([str(served_set), "--out", str(tmp_path / "r"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1
    assert _cli([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "not an engine set" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.heavy
def test_cli_tensorrt_repository_without_tensorrt(served_set, tmp_path, capsys):
    pytest.importorskip("pytriton")
    from edgeprune.backends.trt import tensorrt_version
    from edgeprune.serving.repository import check_config

    if tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here: the plans are built instead of scripted")
    repo = tmp_path / "trt"
    assert _cli([str(served_set), "--out", str(repo), "--backend", "tensorrt", "--max-batch", "2", "--check-load"]) == 0
    printed = capsys.readouterr().out
    assert NOT_RUN in printed and SCRIPT_FILE in printed
    assert "scheduler model edgeprune loaded in the bundled server; 2 budget models need the tensorrt backend" in printed
    for member in ("b1.00", "b0.50"):
        folder = repo / f"edgeprune_{member}"
        assert (folder / "model.onnx").is_file() and (folder / "1").is_dir() and not (folder / "1" / "model.plan").exists()
        check_config(folder / "config.pbtxt", model_files=False)
    script = (repo / SCRIPT_FILE).read_text()
    assert "--maxShapes=pixel_values:2x3x32x32" in script and (repo / SCRIPT_FILE).stat().st_mode & 0o111
    assert "must be built on the target" in (repo / "README.md").read_text()


@pytest.mark.heavy
def test_cli_openvino_repository_in_the_bundled_server(served_set, tmp_path, capsys):
    """The whole --backend openvino repository: every budget model holds exactly its config, manifest and 1/model.onnx;
    the README and the output say where the latency priors came from; the real Triton server PyTriton bundles loads
    the scheduler and names, for each budget model, the OpenVINO backend it lacks (so that backend is not run here)."""
    pytest.importorskip("pytriton")
    from edgeprune.serving.repository import check_repository

    repo = tmp_path / "ov"
    assert _cli([str(served_set), "--out", str(repo), "--backend", "openvino", "--precision", "bf16", "--max-batch", "2",
                 "--check-load"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "budget models on openvino (cpu)" in printed
    assert "latency priors: calibrated for ONNX Runtime cpu, not OpenVINO CPU bf16" in printed
    assert "scheduler model edgeprune loaded in the bundled server; 2 budget models need the openvino backend" in printed
    assert printed.count("unable to find backend library for backend 'openvino'") == 2
    configs = check_repository(repo)
    for member in ("b1.00", "b0.50"):
        folder = repo / f"edgeprune_{member}"
        assert configs[folder.name].backend == "openvino"
        assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "manifest.json"]
        assert [p.name for p in (folder / "1").iterdir()] == ["model.onnx"]
    text = (repo / "README.md").read_text()
    assert "Triton's OpenVINO backend on CPU (bf16" in text and "OpenVINO" in text.split("Not here:")[1]


STAND_IN = '''"""Test stand-in for Triton's onnxruntime backend (absent from PyTriton's wheel): runs ../model.onnx."""
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        folder = args["model_repository"]
        self.session = ort.InferenceSession(os.path.join(folder, "1", "engine.onnx"), providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "pixel_values").as_numpy()
            logits = self.session.run(["logits"], {"pixel_values": pixels})[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", logits)]))
        return responses
'''


@pytest.mark.heavy
def test_scheduler_routes_through_bls(repo, served_set, tmp_path, frames):
    """End to end in the bundled server: the budget models replaced by Python-backend models that run the same
    ONNX with ONNX Runtime (the wheel has no onnxruntime backend), the scheduler unchanged."""
    pytest.importorskip("pytriton")
    from edgeprune.serving.client import Client
    from edgeprune.serving.repository import check_repository, write_config
    from edgeprune.serving.tritonserver import choose_ports, start_server
    from tests.serving.test_service import local_labels

    copy = tmp_path / "moved-repo"  # elsewhere than it was written: nothing may point back there
    shutil.copytree(repo.path, copy)
    for model in repo.models:
        folder = copy / model.name
        (folder / "1" / "model.onnx").rename(folder / "1" / "engine.onnx")
        (folder / "1" / "model.py").write_text(STAND_IN)
        config = budget_model_config(model.name, json.loads((folder / "manifest.json").read_text()),
                                     ProductionOptions(device="cpu", max_batch=4))
        del config["optimization"]
        config["backend"] = "python"
        write_config(folder, config)
    check_repository(copy)
    triton = start_server(copy, choose_ports(), workspace=tmp_path / "ws")
    try:
        triton.wait_ready(120)
        with Client(triton.ports.http_url, "http", model="seg") as client:
            for budget, member in ((1.0, "b1.00"), (0.5, "b0.50")):
                image = frames(1, 40, 56)[0]
                result = client.infer(image, budget=budget, logits=True)
                assert result.engine == member and result.budget == budget and result.logits.shape == (1, 5, 32, 32)
                assert (result.labels[0] == local_labels(served_set, budget, image)).mean() >= 0.9999
            assert client.infer(frames(1)[0], deadline_ms=50).budget in (1.0, 0.5)
    finally:
        triton.stop()
