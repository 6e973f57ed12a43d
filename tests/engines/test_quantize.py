"""int8 artifacts (edgeprune.engines.quantize) with real NNCF on the Fashion-MNIST ViT trained here
(models/fashion_vit, ToMe at 0.6 MACs) and real Fashion-MNIST images: the QDQ graph and its manifest,
token decisions that read no int8 data and decide exactly as fp32 from the tensors they read,
OpenVINO and ONNX Runtime engines close to fp32, calibration sources preprocessed as the runtime
does, engine sets quantized whole or in part, and no PyTorch needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeprune.artifacts.artifact import load_artifact
from edgeprune.artifacts.engine_set import load_engine_set
from edgeprune.artifacts.schema import check_manifest
from edgeprune.backends.precision import choice_agreement, decision_nodes, with_choice_outputs
from edgeprune.backends.trt import BuilderSettings
from edgeprune.core.errors import EdgepruneError
from tests.conftest import export_tiny_set

pytest.importorskip("nncf", reason='NNCF is not installed (pip install "edgeprune[quantize]")')

from edgeprune.engines.quantize import float_cone_violations, quantize_artifact, quantize_set  # noqa: E402
from edgeprune.engines.quantize_data import batched_inputs, choose, input_spec, model_input, read_calibration  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models" / "fashion_vit"
FASHION = ROOT.parent / "shared" / "data" / "fashion-mnist"
SAMPLES = 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """The trained Fashion-MNIST ViT exported with ToMe at 0.6 MACs (three reduction points), its
    normalisation recorded as `edgeprune export` records a model's own."""
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("shared Fashion-MNIST images absent")
    from edgeprune import build_plan
    from edgeprune.exporting.onnx_export import export
    from edgeprune.families.loading import load_model

    config = json.loads((MODEL_DIR / "config.json").read_text())
    model, info = load_model(config["timm_name"], checkpoint=MODEL_DIR / "model.safetensors", model_args=config["model_args"])
    info["input"] = {"mean": [config["input"]["mean"]], "std": [config["input"]["std"]]}
    return export(model, build_plan(model, "tome", flops=0.6), tmp_path_factory.mktemp("q") / "tome", model_info=info)


@pytest.fixture(scope="module")
def int8(fp32, tmp_path_factory):
    return quantize_artifact(fp32, FASHION, tmp_path_factory.mktemp("q") / "tome.int8", samples=SAMPLES)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """A calibrated two-member set of a tiny segmenter (random weights), colour input normalised per channel."""
    return export_tiny_set(tmp_path_factory.mktemp("q") / "SET", [1.0, 0.75], 4, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])


@pytest.fixture(scope="module")
def test_images():
    """200 Fashion-MNIST test images (the calibration came from the train split)."""
    from edgeprune.data.idx import load_idx_split

    images, labels = load_idx_split(FASHION, "test")
    return images[:200], labels[:200]


def graph(artifact):
    import onnx

    return onnx.load(str(artifact.onnx_path))


def test_the_int8_artifact_says_where_it_came_from(fp32, int8):
    m = int8.manifest
    assert m["precision"] == "int8" and "precision" not in fp32.manifest
    q = m["quantization"]
    assert q["parent"]["onnx_sha256"] == fp32.manifest["onnx"]["sha256"] != m["onnx"]["sha256"]
    assert q["calibration"]["kind"] == "idx" and q["calibration"]["samples"] == SAMPLES
    assert q["calibration"]["source"].endswith("train-images-idx3-ubyte.gz") and q["calibration"]["available"] == 60000
    assert q["calibration"]["mean"] == [0.286] and q["nncf"] and m["versions"]["nncf"] == q["nncf"]
    assert m["onnx"]["ops"]["QuantizeLinear"] > 0 and m["onnx"]["ops"]["DequantizeLinear"] > 0
    broken = {k: v for k, v in m.items() if k != "quantization"}  # int8 without its provenance
    with pytest.raises(EdgepruneError, match="artifact schema .*'quantization' is a required property"):
        check_manifest("artifact", broken, "manifest.json")


def test_weights_are_int8_with_one_scale_per_output_channel(int8):
    from onnx import numpy_helper

    model = graph(int8)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init and init[n.input[0]].ndim >= 2]
    assert len(weights) >= 20  # patch embedding, qkv/proj/fc1/fc2 of six blocks (less the float ones), head
    for node in weights:
        values, scale = init[node.input[0]], init[node.input[1]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        assert values.dtype == np.int8 and scale.ndim == 1 and scale.size == values.shape[axis] > 1, node.name


def test_token_decisions_read_no_int8_data(fp32, int8):
    keep = decision_nodes(graph(fp32))
    assert len(keep) > 30  # three reduction points: similarity, TopK, ArgMax and the keys they rank
    nodes = {n.name: n for n in graph(int8).graph.node}
    assert all(nodes[n.name].op_type == n.op_type and list(nodes[n.name].input) == list(n.input)
               for n in graph(fp32).graph.node if n.name in keep)
    assert float_cone_violations(graph(int8), keep) == []


def test_decisions_equal_fp32_given_the_tensors_they_read(fp32, int8):
    """The decision subgraph of the int8 graph is the fp32 one: fed the norm outputs the int8 graph
    computed (random inputs), the fp32 subgraph makes exactly the int8 graph's choices."""
    import onnx
    import onnxruntime as ort
    from onnx.utils import Extractor

    from edgeprune.backends.feeds import random_feed

    reference = graph(fp32)
    keep = decision_nodes(reference)
    made = {o for n in reference.graph.node if n.name in keep for o in n.output}
    constants = {t.name for t in reference.graph.initializer}
    boundary = sorted({i for n in reference.graph.node if n.name in keep for i in n.input if i and i not in made | constants})
    assert len(boundary) == 3  # the LayerNorm output each reduction block ranks
    quantized, names = with_choice_outputs(graph(int8))
    quantized.graph.output.extend(onnx.helper.make_tensor_value_info(b, onnx.TensorProto.FLOAT, None) for b in boundary)
    reference, _ = with_choice_outputs(reference)
    subgraph = Extractor(onnx.shape_inference.infer_shapes(reference)).extract_model(boundary, names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # node by node, no fusions
    options.intra_op_num_threads = 1
    full, part = (ort.InferenceSession(m.SerializeToString(), options) for m in (quantized, subgraph))
    for _ in range(10):
        got = dict(zip([o.name for o in full.get_outputs()], full.run(None, random_feed(fp32.manifest["inputs"]))))
        again = dict(zip(names, part.run(names, {b: got[b] for b in boundary})))
        for name in names:
            np.testing.assert_array_equal(again[name], got[name], err_msg=name)


@pytest.mark.heavy
def test_naive_quantization_would_quantize_the_decisions(fp32):
    """NNCF without the ignored scope puts int8 data into the decision subgraph: what the check above
    and quantize_model's own guard catch."""
    import nncf

    keep = decision_nodes(graph(fp32))
    naive = nncf.quantize(graph(fp32), nncf.Dataset(_feeds(fp32, 8)), model_type=nncf.ModelType.TRANSFORMER, subset_size=8)
    assert float_cone_violations(naive, keep)


def _feeds(artifact, count):
    calib = read_calibration(FASHION, count, 1)
    shape, mean, std = input_spec(artifact.manifest)
    return [{"pixel_values": x} for x in batched_inputs(calib.images, shape, mean, std)]


def test_openvino_and_onnx_runtime_engines_agree_with_fp32(fp32, int8, test_images, tmp_path):
    """Measured on these 200 test images: int8 logits within 1.7 % (ONNX Runtime) and 1.9 % (OpenVINO)
    of the largest fp32 logit at the median, 7 % at the 95th percentile; top-1 equal on 98.5 %.
    The median bound (3 %) also fails full-range weights on this AVX2 CPU (OpenVINO: 3.5 %, the
    saturation the default overflow fix avoids), not only a broken scale (errors of 100 %)."""
    from edgeprune.backends.feeds import relative_error
    from edgeprune.backends.ort import OrtRunner
    from edgeprune.engines.build import build_engine

    engines = {backend: build_engine(int8, backend, BuilderSettings(precision="int8"), tmp_path / backend)
               for backend in ("openvino", "ort-cpu")}
    layers = engines["openvino"].manifest["engine"]["int8_layers"]
    assert engines["openvino"].manifest["graph"]["precision"] == "int8" and layers["int8"] >= layers["all"] // 2
    images, _ = test_images
    shape, mean, std = input_spec(fp32.manifest)
    errors = {b: [] for b in engines}
    same_top1 = {b: 0 for b in engines}
    with OrtRunner(fp32.onnx_path, threads=1) as ref:
        runners = {b: e.runner(threads=1).activate() for b, e in engines.items()}
        for image in images:
            feed = {"pixel_values": model_input(image, shape, mean, std)}
            want = ref.infer(feed)["logits"]
            for backend, runner in runners.items():
                got = runner.infer(feed)["logits"]
                errors[backend].append(relative_error(got, want))
                same_top1[backend] += int(got.argmax() == want.argmax())
        for runner in runners.values():
            runner.deactivate()
    for backend in engines:
        assert np.median(errors[backend]) <= 0.03, (backend, np.median(errors[backend]))
        assert np.percentile(errors[backend], 95) <= 0.12, (backend, np.percentile(errors[backend], 95))
        assert same_top1[backend] >= 0.97 * len(images), (backend, same_top1[backend])


def test_token_choices_on_real_images(fp32, int8, test_images):
    """End to end (the residual stream feeding the decisions comes from int8 blocks), the kept/merged
    token groups agree with fp32 on ~97.5 % of choices for in-distribution images (97.7 % over the
    Fashion-MNIST test set, 97.5 % over MNIST's: docs/results/quantize.json), not 100 %."""
    import onnxruntime as ort

    reference, names = with_choice_outputs(graph(fp32))
    quantized, _ = with_choice_outputs(graph(int8))
    groups = [n for n in names if n.startswith("slice")]  # the merged / kept groups of each TopK ranking
    assert len(groups) == 6
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (reference, quantized)]
    images, _ = test_images
    shape, mean, std = input_spec(fp32.manifest)
    agree = []
    for image in images:
        feed = {"pixel_values": model_input(image, shape, mean, std)}
        a, b = (dict(zip(names, s.run(names, feed))) for s in sessions)
        agree.append(np.mean([choice_agreement(a[n], b[n]) for n in groups]))
    assert np.mean(agree) >= 0.96, np.mean(agree)


def test_calibration_is_preprocessed_as_the_runtime_does(tiny_set, tmp_path):
    """A frame becomes the very array Runtime.preprocess makes of it, for folders and videos alike."""
    import warnings

    from PIL import Image

    from edgeprune.runtime import Runtime
    from edgeprune.video.io import VideoWriter

    engine_set = tiny_set
    rng = np.random.default_rng()
    frames = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(5)]
    (tmp_path / "pngs" / "sub").mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "pngs" / ("sub" if i % 2 else "") / f"{i}.png")
    calib = read_calibration(tmp_path / "pngs", 3, 3, extra=8)
    assert calib.kind == "images" and calib.available == 5 and len(calib.images) == 3 and len(calib.extra) == 2
    fitted = read_calibration(tmp_path / "pngs", 3, 3, extra=8, size=(32, 32))  # resized as read: less memory
    assert all(im.shape == (32, 32, 3) for im in fitted.images + fitted.extra)
    shape, mean, std = input_spec(load_engine_set(engine_set).members[0].artifact.manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with Runtime(engine_set, target_ms=1000.0) as runtime:
            for image, small in zip(calib.images + calib.extra, fitted.images + fitted.extra):
                np.testing.assert_array_equal(model_input(image, shape, mean, std), runtime.preprocess(image))
                np.testing.assert_array_equal(model_input(small, shape, mean, std), runtime.preprocess(image))
    with VideoWriter(tmp_path / "clip.mp4", 10.0, (40, 48)) as writer:
        for i in range(30):
            writer.write(np.full((48, 40, 3), 8 * i, np.uint8))
    video = read_calibration(tmp_path / "clip.mp4", 4, 3, extra=2)
    assert video.kind == "video" and video.available == 30 and len(video.images) == 4 and len(video.extra) == 2
    levels = [int(np.median(im)) for im in video.images]
    assert levels[0] < 8 and levels[-1] > 8 * 27 and levels == sorted(levels)  # first to last frame, evenly spread
    assert model_input(video.images[0], [1, 1, 28, 28], [0.5], [0.5]).shape == (1, 1, 28, 28)  # colour to grey


def test_calibration_refusals_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("hello")
    for source, message in ((None, "needs calibration data: --calib DIR"), (tmp_path / "nope", "does not exist"),
                            (tmp_path / "empty", "holds no images"), (tmp_path / "bad", "cannot read image"),
                            (tmp_path / "notes.txt", "--calib takes a folder of images, a video file")):
        with pytest.raises(EdgepruneError, match=message) as caught:
            read_calibration(source, 4, 3)
        assert "\n" not in str(caught.value)


def test_an_engine_set_quantized_in_part_builds_and_runs(tiny_set, tmp_path):
    """--budgets quantizes some members: set.json records each member's precision, build --precision
    int8 builds those int8 and the rest fp32, a float precision is refused, the runtime runs it."""
    import warnings

    from PIL import Image

    from edgeprune.engines.build import build_set, load_engines
    from edgeprune.measure.calibrate import calibrate_engine_set
    from edgeprune.runtime import Runtime

    source = tiny_set
    rng = np.random.default_rng()
    (tmp_path / "calib").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "calib" / f"{i}.jpg")
    mixed = quantize_set(source, tmp_path / "calib", tmp_path / "MIXED", samples=8, budgets=[0.75])
    assert [(m.path, m.precision) for m in mixed.members] == [("b1.00", "fp32"), ("b0.75", "int8")]
    index = json.loads((tmp_path / "MIXED" / "set.json").read_text())
    assert index["calibration"] is None and [m["precision"] for m in index["members"]] == ["fp32", "int8"]
    assert mixed.member("b1.00").onnx_sha256 == load_engine_set(source).member("b1.00").onnx_sha256
    lying = json.loads(json.dumps(index))
    lying["members"][1]["precision"] = "fp32"
    (tmp_path / "LYING").mkdir()
    for name in ("b1.00", "b0.75"):
        (tmp_path / "LYING" / name).symlink_to(tmp_path / "MIXED" / name)
    (tmp_path / "LYING" / "set.json").write_text(json.dumps(lying))
    with pytest.raises(EdgepruneError, match="b0.75: its manifest says precision int8, set.json says fp32"):
        load_engine_set(tmp_path / "LYING")
    built = build_set(mixed, "openvino", BuilderSettings(precision="int8"), tmp_path / "BUILT")
    assert [e.manifest["precision"] for e in load_engines(tmp_path / "BUILT")] == ["fp32", "int8"]
    assert [m["precision"] for m in json.loads((tmp_path / "BUILT" / "engines.json").read_text())["members"]] == ["fp32", "int8"]
    assert len(built) == 2
    with pytest.raises(EdgepruneError, match=r"has int8 members \(b0.75\): build it with --precision int8"):
        build_set(mixed, "openvino", BuilderSettings(precision="bf16"), tmp_path / "nope")
    with pytest.raises(EdgepruneError, match="budgets 0.5: .* has no such member"):
        quantize_set(source, tmp_path / "calib", tmp_path / "x", samples=4, budgets=[0.5])
    assert not (tmp_path / "nope").exists() and not (tmp_path / "x").exists()
    calibrate_engine_set(mixed, rounds=3, warmup=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with Runtime(tmp_path / "MIXED", target_ms=1000.0) as runtime:
            assert runtime.infer(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).labels.shape == (32, 32)


def test_quantizing_needs_no_pytorch(tiny_set, tmp_path):
    """NNCF probes for torch and uses it only when present: with torch unimportable the ONNX path
    still quantizes (a runtime install plus the quantize extra)."""
    source = tiny_set
    script = textwrap.dedent(f"""
        import importlib.machinery, sys
        class WithoutTorch(importlib.machinery.PathFinder):  # finds everything but torch: as if not installed
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "timm"):
                    return None
                return super().find_spec(name, path, target)
        sys.meta_path = [WithoutTorch if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
        import numpy as np
        from edgeprune.engines.quantize import quantize_set
        from edgeprune.engines.quantize_data import CalibrationImages
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
        quantize_set({str(source)!r}, CalibrationImages(__import__("pathlib").Path("random"), "images", images, 4, "all"),
                     {str(tmp_path / "Q")!r}, budgets=[1.0])
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert load_artifact(tmp_path / "Q" / "b1.00").manifest["precision"] == "int8"


def test_the_calibration_choice_is_seeded():
    a, b = choose(1000, 10), choose(1000, 12)
    assert list(a) == list(b[:10]) and len(set(a)) == 10
