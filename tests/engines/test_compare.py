"""Parity across backends through Polygraphy's comparator: verdicts agree with the measured errors."""

from __future__ import annotations

import pytest

from edgeprune.engines.cache import EngineCache
from edgeprune.engines.compare import BackendSpec, compare_backends, label_agreement, parse_backends
from edgeprune.core.errors import EdgepruneError
from tests.conftest import make_tiny


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from edgeprune.exporting.onnx_export import export
    from edgeprune import build_plan

    net = make_tiny("registers")
    return export(net, build_plan(net, "tome", flops=0.6), tmp_path_factory.mktemp("compare") / "tome")


def test_parse_backends():
    specs = parse_backends("ort-cpu, ort-cpu:fp16,trt:fp16")
    assert [(s.backend, s.precision) for s in specs] == [("ort-cpu", "fp32"), ("ort-cpu", "fp16"), ("trt", "fp16")]
    for text, message in [("ort-cpu", "at least two"), ("ort-cpu,tpu", "unknown backend"),
                          ("ort-cpu,ort-cpu:fp8", "unknown precision"), ("ort-cpu,ort-cpu", "twice")]:
        with pytest.raises(EdgepruneError, match=message):
            parse_backends(text)


def test_fp32_engine_passes_and_verdict_follows_the_tolerance(artifact, tmp_path):
    specs = [BackendSpec("ort-cpu", "ort-cpu", "fp32"), BackendSpec("ort-cpu:fp16", "ort-cpu", "fp16")]
    cache = EngineCache(tmp_path / "cache")
    report = compare_backends(artifact, specs, tmp_path / "w", inputs=3, cache=cache)
    row = report["comparisons"][0]
    assert row["tolerance"] == 1e-2 and row["max_relative_error"] > 0 and 0 < row["label_agreement"] <= 1
    # Polygraphy's verdict and the measured error agree on both sides of the error
    strict = compare_backends(artifact, specs, tmp_path / "w2", inputs=3, cache=cache,
                              tolerance=row["max_relative_error"] / 1e3)
    assert strict["passed"] is False and strict["comparisons"][0]["passed"] is False
    loose = compare_backends(artifact, specs, tmp_path / "w3", inputs=3, cache=cache, tolerance=1.0)
    assert loose["passed"] is True


def test_a_built_fp32_engine_matches_the_exported_graph(artifact, tmp_path):
    from edgeprune.engines.build import build_engine
    from edgeprune.backends.trt import BuilderSettings

    build_engine(artifact, "ort-cpu", BuilderSettings(), tmp_path / "engine")
    specs = parse_backends(f"ort-cpu,{tmp_path / 'engine'}")
    report = compare_backends(artifact, specs, tmp_path / "w", inputs=2)
    assert report["passed"] and report["comparisons"][0]["tolerance"] == 1e-4


def test_label_agreement_counts_changed_answers():
    import numpy as np

    ref = [{"logits": np.array([[0.0, 1.0], [2.0, 0.0]])}]
    got = [{"logits": np.array([[0.0, 1.1], [0.0, 2.0]])}]
    assert label_agreement(ref, got) == 0.5
    dense = [{"logits": np.zeros((1, 3, 4, 4))}]
    assert label_agreement(dense, dense) == 1.0
    assert label_agreement([{"tokens": np.zeros((1, 4))}], [{"tokens": np.zeros((1, 4))}]) is None
