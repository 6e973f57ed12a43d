"""Engine builds: manifests, the cache (hit, rebuild on change, stale entries), sets, clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeprune.engines.build import build_engine, build_set, load_engine, load_engines
from edgeprune.backends.feeds import random_feed
from edgeprune.engines.cache import EngineCache, cache_key
from edgeprune.backends.ort import OrtRunner
from edgeprune.backends.trt import BuilderSettings, tensorrt_version
from edgeprune.core.errors import EdgepruneError
from edgeprune.backends.feeds import relative_error
from tests.conftest import make_tiny

HAS_TRT = tensorrt_version() is not None
NEEDS_TRT = pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not importable here (pip install tensorrt on a machine with an NVIDIA GPU)")
BACKENDS = ["ort-cpu", pytest.param("trt", marks=NEEDS_TRT)]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from edgeprune.exporting.onnx_export import export
    from edgeprune import build_plan

    root = tmp_path_factory.mktemp("build")
    net = make_tiny("registers")
    return {method: export(net, build_plan(net, method, **options), root / method)
            for method, options in {"none": {}, "tome": {"flops": 0.6}, "evit": {"keep": 0.5}}.items()}


def run_both(artifact, engine, batches=3):
    """Max relative error of the built engine against the exported graph in ONNX Runtime."""
    worst = 0.0
    with OrtRunner(artifact.onnx_path) as ref, engine.runner() as got:
        for _ in range(batches):
            feed = random_feed(artifact.manifest["inputs"])
            a, b = ref.infer(feed), got.infer(feed)
            worst = max(worst, max(relative_error(b[k].astype(np.float32), a[k]) for k in a))
    return worst


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_engine_matches_the_exported_graph(artifacts, tmp_path, backend):
    engine = build_engine(artifacts["tome"], backend, BuilderSettings(), tmp_path / "e", cache=EngineCache(tmp_path / "c"))
    m = engine.manifest
    assert m["backend"] == backend and m["precision"] == "fp32" and m["built"]["how"] == "built"
    assert m["source"]["onnx_sha256"] == artifacts["tome"].manifest["onnx"]["sha256"]
    assert m["versions"]["edgeprune"] and m["versions"]["onnxruntime"] and len(m["engine"]["sha256"]) == 64
    assert m["device"] and m["settings"] == BuilderSettings().to_dict()
    assert run_both(artifacts["tome"], engine) <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_engine_is_close(artifacts, tmp_path, backend):
    engine = build_engine(artifacts["none"], backend, BuilderSettings(precision="fp16"), tmp_path / "e")
    assert engine.manifest["graph"]["precision"] == "fp16"
    assert run_both(artifacts["none"], engine) <= 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_returns_the_same_engine_and_rebuilds_when_the_onnx_changes(artifacts, tmp_path, backend):
    cache = EngineCache(tmp_path / "cache")
    first = build_engine(artifacts["tome"], backend, BuilderSettings(), tmp_path / "a", cache=cache)
    again = build_engine(artifacts["tome"], backend, BuilderSettings(), tmp_path / "b", cache=cache)
    assert again.manifest["built"]["how"] == "cache"
    assert again.engine_path.read_bytes() == first.engine_path.read_bytes()
    assert again.manifest["cache_key"] == first.manifest["cache_key"]
    other = build_engine(artifacts["evit"], backend, BuilderSettings(), tmp_path / "c", cache=cache)  # another ONNX
    assert other.manifest["built"]["how"] == "built" and other.manifest["cache_key"] != first.manifest["cache_key"]
    level = build_engine(artifacts["tome"], backend, BuilderSettings(optimization_level=1), tmp_path / "d", cache=cache)
    assert level.manifest["built"]["how"] == "built"  # other builder settings, other key
    assert len(list(cache.root.iterdir())) == 3


def test_stale_cache_entry_is_rebuilt_not_loaded(artifacts, tmp_path):
    cache = EngineCache(tmp_path / "cache")
    first = build_engine(artifacts["tome"], "ort-cpu", BuilderSettings(), tmp_path / "a", cache=cache)
    entry = cache.entry(first.manifest["cache_key"])
    (entry / "model.onnx").write_bytes(b"\x08\x07garbage")  # a damaged cache entry
    rebuilt = build_engine(artifacts["tome"], "ort-cpu", BuilderSettings(), tmp_path / "b", cache=cache)
    assert rebuilt.manifest["built"]["how"] == "built"
    assert (entry / "model.onnx").read_bytes() == rebuilt.engine_path.read_bytes()  # the entry was replaced
    foreign = json.loads((entry / "engine.json").read_text())
    foreign["cache_key"] = "0" * 64  # an entry written for another key
    (entry / "engine.json").write_text(json.dumps(foreign))
    assert cache.lookup(first.manifest["cache_key"]) is None and not entry.exists()


def test_cache_key_depends_on_every_field():
    base = {"onnx_sha256": "a", "backend": "trt", "settings": {"precision": "fp16"}, "versions": {"tensorrt": "10.3"},
            "device": {"gpu": "Orin", "compute_capability": "8.7"}}
    keys = {cache_key(base)}
    for field, value in [("onnx_sha256", "b"), ("backend", "ort-trt"), ("settings", {"precision": "fp32"}),
                         ("versions", {"tensorrt": "10.4"}), ("device", {"gpu": "Orin", "compute_capability": "8.6"})]:
        keys.add(cache_key({**base, field: value}))
    assert len(keys) == 6
    assert cache_key(dict(reversed(list(base.items())))) == cache_key(base)  # order does not matter


def test_engine_set_build(tmp_path):
    from edgeprune.exporting.engine_set import export_engine_set

    net = make_tiny("cls")
    engine_set = export_engine_set(net, "tome", [1.0, 0.6], tmp_path / "set")
    engines = build_set(engine_set, "ort-cpu", BuilderSettings(precision="fp16"), tmp_path / "built",
                        cache=EngineCache(tmp_path / "cache"))
    assert [e.name for e in engines] == [m.path for m in engine_set.members]
    index = json.loads((tmp_path / "built" / "engines.json").read_text())
    assert index["kind"] == "edgeprune-engine-build" and len(index["members"]) == 2
    assert [e.name for e in load_engines(tmp_path / "built")] == [m.path for m in engine_set.members]
    (tmp_path / "built" / engines[1].name / "model.onnx").write_bytes(b"replaced")
    with pytest.raises(EdgepruneError, match="sha256"):
        load_engines(tmp_path / "built")


def test_refusals_are_one_line_and_write_nothing(artifacts, tmp_path):
    out = tmp_path / "e"
    cases = [("ort-cpu", BuilderSettings(precision="bf16"), "bf16"), ("nope", BuilderSettings(), "--backend"),
             ("ort-cpu", BuilderSettings(optimization_level=9), "--opt-level")]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        cases.append(("ort-cuda", BuilderSettings(), "onnxruntime-gpu"))
    if not HAS_TRT:
        cases.append(("trt", BuilderSettings(), "pip install tensorrt"))
    for backend, settings, message in cases:
        with pytest.raises(EdgepruneError, match=message) as err:
            build_engine(artifacts["tome"], backend, settings, out)
        assert "\n" not in str(err.value)
        assert not out.exists()


def test_load_engine_rejects_bad_folders(artifacts, tmp_path):
    engine = build_engine(artifacts["tome"], "ort-cpu", BuilderSettings(), tmp_path / "e")
    manifest = json.loads((engine.path / "engine.json").read_text())
    with pytest.raises(EdgepruneError, match="no engine.json"):
        load_engine(tmp_path)
    (engine.path / "engine.json").write_text("{not json")
    with pytest.raises(EdgepruneError, match="corrupt"):
        load_engine(engine.path)
    (engine.path / "engine.json").write_text(json.dumps({**manifest, "kind": "something"}))
    with pytest.raises(EdgepruneError, match="not an edgeprune engine"):
        load_engine(engine.path)
    (engine.path / "engine.json").write_text(json.dumps(manifest))
    engine.engine_path.write_bytes(b"changed")
    with pytest.raises(EdgepruneError, match="sha256"):
        load_engine(engine.path)


def test_stale_trt_engine_is_refused_when_opened(artifacts, tmp_path, monkeypatch):
    engine = build_engine(artifacts["tome"], "ort-cpu", BuilderSettings(), tmp_path / "e")
    manifest = {**engine.manifest, "backend": "trt", "versions": {"tensorrt": "10.0.1"},
                "device": {"compute_capability": "8.7"}}
    monkeypatch.setattr("edgeprune.backends.trt.tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr("edgeprune.backends.trt.device_info", lambda: {"compute_capability": "8.7"})
    from edgeprune.engines.build import BuiltEngine

    stale = BuiltEngine(engine.path, manifest)
    assert "TensorRT 10.0.1" in stale.stale_reason()
    with pytest.raises(EdgepruneError, match="stale engine"):
        stale.runner()
    assert BuiltEngine(engine.path, {**manifest, "versions": {"tensorrt": "10.3.0"}}).stale_reason() is None
    other_gpu = {**manifest, "versions": {"tensorrt": "10.3.0"}, "device": {"compute_capability": "8.6"}}
    assert "compute capability 8.6" in BuiltEngine(engine.path, other_gpu).stale_reason()
