import json

import onnx
import pytest
import torch

import edgeprune
from edgeprune import EdgepruneError, ParityError
from edgeprune.artifacts.artifact import load_artifact
from edgeprune.backends.ort import OrtRunner
from edgeprune.exporting.onnx_export import export
from edgeprune.backends.feeds import relative_error
from edgeprune.backends.graph import safety_problems
from tests.conftest import LAYOUTS, make_tiny


# Every layout and every method run in the default suite; the rest of the matrix is a heavy case.
DEFAULT_EXPORTS = {("none", "cls"), ("tome", "registers"), ("evit", "distilled"), ("gsp", "no_cls_avg"),
                   ("tome", "registers_no_cls"), ("gsp", "registers")}
EXPORT_MATRIX = [pytest.param(method, layout, marks=() if (method, layout) in DEFAULT_EXPORTS else pytest.mark.heavy,
                              id=f"{method}-{layout}")
                 for method in ("none", "tome", "evit", "gsp") for layout in LAYOUTS]


@pytest.mark.parametrize("method,layout", EXPORT_MATRIX)
def test_export_matches_eager_batch_1_and_2(layout, method, tmp_path, pixels):
    model = make_tiny(layout)
    plan = edgeprune.build_plan(model, method, **({} if method == "none" else dict(flops=0.55, points=[0, 2])))
    artifact = export(model, plan, tmp_path / "a", dynamic_batch=True)
    parity = artifact.manifest["parity"]
    assert set(parity["batches"]) == {"1", "2"} and parity["max"] <= 1e-4

    # An independent check with another fresh input and another batch size.
    x = pixels(3)
    with torch.no_grad():
        expected = edgeprune.reduce_model(model, plan)(x).numpy()
    with OrtRunner(artifact.onnx_path) as runner:
        got = runner.infer({"pixel_values": x.numpy()})["logits"]
    assert relative_error(got, expected) <= 1e-4

    graph = onnx.load(str(artifact.onnx_path))
    assert safety_problems(graph) == []
    assert not {"ScatterElements", "ScatterND"} & {n.op_type for n in graph.graph.node}
    assert load_artifact(artifact.path).plan == plan


def test_static_batch_and_manifest(tmp_path):
    model = make_tiny("cls")
    plan = edgeprune.build_plan(model, "tome", keep=0.5)
    artifact = export(model, plan, tmp_path / "b2", batch=2, model_info={"name": "tiny"})
    m = json.loads((tmp_path / "b2" / "manifest.json").read_text())
    assert m["inputs"][0]["shape"] == [2, 3, 32, 32]
    assert m["outputs"][0]["shape"] == [2, 7]
    assert m["flops"]["macs_ratio"] == pytest.approx(plan.macs_ratio, abs=1e-6)
    assert {"torch", "onnx", "onnxruntime", "timm"} <= set(m["versions"])
    assert m["model"]["name"] == "tiny" and m["model"]["family"] == "timm-vit"
    assert list(m["parity"]["batches"]) == ["2"]
    assert artifact.input_shape() == [2, 3, 32, 32]
    with pytest.raises(EdgepruneError, match="batch 2"):
        artifact.input_shape(4)


def test_parity_failure_leaves_nothing(tmp_path):
    model = make_tiny("cls")
    plan = edgeprune.build_plan(model, "tome", keep=0.5)
    with pytest.raises(ParityError, match="relative error"):
        export(model, plan, tmp_path / "bad", tolerance=0.0)
    assert list(tmp_path.iterdir()) == []


def test_export_reports_through_the_progress_protocol(tmp_path):
    """``progress`` is a ``Progress``: called as ``progress(done, total, message)``, never with a bare string."""
    from edgeprune.exporting.engine_set import export_engine_set

    calls = []
    model = make_tiny("cls")
    export(model, edgeprune.build_plan(model, "none"), tmp_path / "a",
           progress=lambda done, total, message="": calls.append((done, total, message)))
    assert calls == [(0, None, "tracing and converting to ONNX"), (0, None, "checking ONNX Runtime against eager PyTorch")]
    calls.clear()
    export_engine_set(model, "tome", [1.0, 0.6], tmp_path / "set",
                      progress=lambda done, total, message="": calls.append((done, total, message)))
    assert [m for _d, _t, m in calls][:2] == ["[1/2] b1.00: tracing and converting to ONNX",
                                             "[1/2] b1.00: checking ONNX Runtime against eager PyTorch"]
    assert all(isinstance(d, int) and m.startswith(("[1/2] ", "[2/2] ")) for d, _t, m in calls)


def test_existing_output_needs_overwrite(tmp_path):
    model = make_tiny("cls")
    plan = edgeprune.build_plan(model, "none")
    export(model, plan, tmp_path / "a")
    with pytest.raises(EdgepruneError, match="already exists"):
        export(model, plan, tmp_path / "a")
    export(model, edgeprune.build_plan(model, "evit", keep=0.5), tmp_path / "a", overwrite=True)
    assert load_artifact(tmp_path / "a").method == "evit"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_old_opset_is_refused(tmp_path):
    model = make_tiny("cls")
    with pytest.raises(EdgepruneError, match="opset"):
        export(model, edgeprune.build_plan(model, "none"), tmp_path / "a", opset=13)


def test_a_single_miss_is_rechecked_on_fresh_inputs(tmp_path):
    """One input whose ranking flips (a near-tie) must not fail an export; a graph that differs on
    every input must."""
    import torch

    from edgeprune.families import adapter_for
    from edgeprune.exporting.onnx_export import PARITY_RECHECKS, check_parity

    model = make_tiny("cls")
    plan = edgeprune.build_plan(model, "tome", keep=0.5)
    artifact = export(model, plan, tmp_path / "a")
    reduced = adapter_for(model).reduced(plan)

    class Skewed(torch.nn.Module):
        output_names = reduced.output_names

        def __init__(self, misses: int) -> None:
            super().__init__()
            self.misses, self.calls = misses, 0

        def forward(self, pixels):
            self.calls += 1
            out = reduced(pixels)
            return out + 1.0 if self.calls <= self.misses else out

    shape = artifact.input_shape()
    report = check_parity(Skewed(1), artifact.onnx_path, shape, [1], 1e-4)
    assert report["rechecked"][0]["batch"] == 1 and report["rechecked"][0]["error"] > 1e-4
    assert report["max"] <= 1e-4
    with pytest.raises(ParityError, match="also"):
        check_parity(Skewed(1 + PARITY_RECHECKS), artifact.onnx_path, shape, [1], 1e-4)
