"""The served model's request handling, without a server: checks, batching, budgets, parity with Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.runtime.policies import FixedPolicy
from edgeprune.runtime.runtime import Runtime, profiles_from_calibration
from edgeprune.serving.batched import batch_sizes, load_batched, model_from_manifest
from edgeprune.serving.service import RequestError, Service


@pytest.fixture(scope="module")
def service(service_config):
    return Service(service_config)


def local_labels(served_set, budget, frame):
    """What the local Runtime gives for ``frame`` when it runs the member of ``budget``."""
    from edgeprune.artifacts.engine_set import load_engine_set

    engine_set = load_engine_set(served_set, verify=False)
    profiles = profiles_from_calibration(engine_set)
    index = [p.budget for p in profiles].index(budget)
    with Runtime(engine_set, 1000.0, policy=FixedPolicy(profiles, index), threads=1) as runtime:
        return runtime.infer(frame).labels


def test_batch_sizes():
    assert batch_sizes(1) == [1]
    assert batch_sizes(4) == [1, 2, 4]
    assert batch_sizes(6) == [1, 2, 4, 6]
    with pytest.raises(EdgepruneError, match="max-batch"):
        batch_sizes(0)


def test_batched_members_are_calibrated_per_size(service_config):
    sizes = service_config.sizes
    assert sizes == [1, 2, 4]
    by = {(m["name"], m["batch"]): m for m in service_config.members}
    assert set(by) == {(n, b) for n in ("b1.00", "b0.50") for b in sizes}
    for name in ("b1.00", "b0.50"):  # a bigger batch never costs less than a smaller one (within noise)
        assert by[name, 4]["p50_ms"] > 0.5 * by[name, 1]["p50_ms"]


@pytest.mark.parametrize("parameters, message", [
    ({"foo": 1}, "unknown parameter 'foo'"),
    ({"deadline_ms": -5}, "deadline_ms must be > 0"),
    ({"deadline_ms": 0}, "deadline_ms must be > 0"),
    ({"deadline_ms": "soon"}, "deadline_ms must be a number"),
    ({"deadline_ms": True}, "deadline_ms must be a number"),
    ({"deadline_ms": float("nan")}, "must be finite"),
    ({"budget": 0.6}, "budget 0.6 is not served; budgets: 1, 0.5"),
    ({"budget": 0.5, "deadline_ms": 10}, "not both"),
])
def test_bad_parameters_are_refused_by_name(service, frames, parameters, message):
    image = np.stack(frames(1))
    with pytest.raises(RequestError, match=message):
        service.parse(image, None, parameters)


def test_bad_inputs_are_refused_by_name(service, frames):
    good = np.stack(frames(1))
    with pytest.raises(RequestError, match="exactly one input"):
        service.parse(None, None, {})
    with pytest.raises(RequestError, match="exactly one input"):
        service.parse(good, np.zeros((1, 3, 32, 32), np.float32), {})
    with pytest.raises(RequestError, match="image must be uint8"):
        service.parse(good.astype(np.float32), None, {})
    with pytest.raises(RequestError, match="image must be"):
        service.parse(good[..., :2], None, {})
    with pytest.raises(RequestError, match="image is empty"):
        service.parse(np.zeros((1, 0, 5, 3), np.uint8), None, {})
    with pytest.raises(RequestError, match="larger than this server's limit of 8192"):
        service.parse(np.zeros((1, 8200, 2, 3), np.uint8), None, {})
    with pytest.raises(RequestError, match=r"pixels must be \[N, 3, 32, 32\]"):
        service.parse(None, np.ones((1, 3, 16, 16), np.float32), {})
    with pytest.raises(RequestError, match="NaN"):
        service.parse(None, np.full((1, 3, 32, 32), np.nan, np.float32), {})
    with pytest.raises(RequestError, match="at most 4"):
        service.parse(np.stack(frames(5)), None, {})


def test_batched_rows_equal_the_local_runtime(service, served_set, frames):
    """Three requests of different sizes run as one batch (padded to 4) and each gets what the local
    Runtime gives for its frame at the same budget."""
    images = [frames(1, 48, 64)[0], frames(1, 32, 32)[0], frames(1, 90, 40)[0]]
    jobs = [service.parse(img[None], None, {"budget": 0.5}) for img in images]
    results = service.run(jobs)
    assert [r.batch_size for r in results] == [3, 3, 3]
    for image, result in zip(images, results):
        assert result.engine == "b0.50" and result.budget == 0.5
        assert result.labels.shape == (1, 32, 32) and result.labels.dtype == np.uint8
        expected = local_labels(served_set, 0.5, image)
        assert (result.labels[0] == expected).mean() >= 0.9999


def test_pixels_input_equals_image_input(service, frames):
    from edgeprune.imaging.evaluation import normalize
    from edgeprune.imaging.images import resize_rgb

    image = frames(1, 32, 32)[0]
    cfg = service.config
    pixels = normalize(resize_rgb(image, 32, 32)[None], cfg.mean, cfg.std)
    a, b = service.run([service.parse(image[None], None, {"budget": 1.0}), service.parse(None, pixels, {"budget": 1.0})])
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_the_policy_picks_smaller_budgets_for_tight_deadlines(service_config, frames):
    service = Service(service_config)
    image = np.stack(frames(1))
    loose = [service.run([service.parse(image, None, {"deadline_ms": 10_000})])[0].budget for _ in range(5)]
    tight = [service.run([service.parse(image, None, {"deadline_ms": 0.001})])[0].budget for _ in range(3)]
    assert loose[-1] == 1.0 and tight[-1] == 0.5


def test_a_changed_model_is_not_re_exported(tmp_path, served_set):
    from edgeprune.artifacts.engine_set import load_engine_set

    info = dict(load_engine_set(served_set, verify=False).members[0].artifact.manifest["model"])
    info["checkpoint_sha256"] = "0" * 64
    with pytest.raises(EdgepruneError, match="changed since the engine set was exported"):
        model_from_manifest(info)
    with pytest.raises(EdgepruneError, match="cannot re-export"):
        model_from_manifest({"source": "somewhere"})


def test_batched_exports_are_cached(service_config, served_set, tmp_path):
    from pathlib import Path

    folder = Path(service_config.members[0]["engine"]).parent.parent
    again = load_batched(folder)
    assert {(m.name, m.batch) for m in again} == {(m["name"], m["batch"]) for m in service_config.members}


def test_openvino_service_equals_onnx_runtimes(service, service_config, served_set, frames, tmp_path):
    """The same batch-N graphs on OpenVINO (what `edgeprune serve --provider openvino` runs): the same logits as on
    ONNX Runtime, batched or not; prepare_service times them on OpenVINO, cached apart from ONNX Runtime's."""
    import dataclasses

    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")
    from edgeprune.backends.feeds import relative_error
    from edgeprune.serving.serve import prepare_service

    engine = {"provider": "openvino", "precision": "fp32", "device": "CPU"}
    openvino = Service(dataclasses.replace(service_config, engine=engine))
    images = [frames(1, 48, 64)[0], frames(1, 32, 32)[0], frames(1, 90, 40)[0]]
    for budget in (1.0, 0.5):
        jobs = [service.parse(img[None], None, {"budget": budget}) for img in images]
        for a, b in zip(service.run(jobs), openvino.run(jobs)):
            assert a.batch_size == b.batch_size == 3 and a.engine == b.engine
            assert relative_error(b.logits, a.logits) <= 1e-5
    config = prepare_service(served_set, max_batch=1, threads=1, rounds=3, cache=tmp_path, provider="openvino")
    assert config.engine == engine and config.sizes == [1]
    assert {m["name"] for m in config.members} == {"b1.00", "b0.50"} and all(m["p50_ms"] > 0 for m in config.members)
    auto = prepare_service(served_set, max_batch=1, threads=1, rounds=3, cache=tmp_path, provider="auto")
    assert auto.engine == {"provider": "cpu", "precision": "fp32", "device": None}  # only ONNX Runtime is calibrated
    assert len(list(tmp_path.iterdir())) == 2  # one cache folder per engine
