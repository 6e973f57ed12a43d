"""Latency calibration, its cache, the latency model and the latency-budget planner.

One real (coarse) calibration of a tiny ViT is shared by the module; cache behaviour is checked by
replacing the measuring step, so no test depends on timing beyond sanity.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

timm = pytest.importorskip("timm")

from edgeprune.exporting import block_latency  # noqa: E402
from edgeprune.exporting.block_latency import calibrate  # noqa: E402
from edgeprune.families import spec_of  # noqa: E402
from edgeprune.plan import latency as L  # noqa: E402
from edgeprune.core.errors import EdgepruneError  # noqa: E402
from edgeprune.core.progress import messages as to_messages  # noqa: E402
from edgeprune import build_plan  # noqa: E402

FAST = dict(grid_points=3, reducer_points=2, repeat=2, runs=3, warmup=1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, depth=4, embed_dim=64, num_heads=2
    ).eval()


@pytest.fixture(scope="module")
def calibrated(tiny, tmp_path_factory):
    cache = tmp_path_factory.mktemp("latency")
    messages: list[str] = []
    lm = calibrate(tiny, "tome", cache_dir=cache, progress=to_messages(messages.append), **FAST)
    return lm, cache, messages


def synthetic(method: str = "tome", reducer_ms: float = 0.1) -> L.LatencyModel:
    dims = dict(embed_dim=64, num_heads=2, mlp_hidden=256, num_prefix=1, num_patches=64)
    return L.LatencyModel(method, dims, [9, 33, 65], [1.0, 2.0, 4.0], [1.0, 3.0, 5.0], [17, 65], [reducer_ms, 2 * reducer_ms])


def reachable(lm: L.LatencyModel, model) -> float:
    """A target this machine's measurements can meet (one early step to a quarter of the tokens)."""
    return min(1.0, round(lm.ratio(build_plan(model, "tome", keep=0.25, points=[0])) + 0.02, 3))


def test_calibration_is_sane(calibrated):
    lm, cache, messages = calibrated
    assert lm.tokens[0] == 8 and lm.tokens[-1] == 65
    assert all(v > 0 for v in [*lm.attention_ms, *lm.mlp_ms, *lm.reducer_ms])
    assert lm.attention_ms[-1] > 0.5 * lm.attention_ms[0] and lm.mlp_ms[-1] > 0.5 * lm.mlp_ms[0]
    assert lm.attention(65) >= lm.attention(8) > 0 and lm.mlp(65) >= lm.mlp(8) > 0 and lm.reducer(65) > 0
    assert any("exporting" in m for m in messages)
    (path,) = cache.glob("*.json")
    saved = json.loads(path.read_text())
    for key in ("cpu", "machine", "onnxruntime", "threads", "providers", "key", "calibration_seconds"):
        assert key in saved["info"]
    assert saved["attention_ms"] == lm.attention_ms and saved["tokens"] == lm.tokens  # raw points kept
    assert L.LatencyModel.from_dict(saved) == lm


def test_second_call_hits_the_cache(calibrated, tiny, monkeypatch):
    lm, cache, _ = calibrated
    (path,) = cache.glob("*.json")
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(block_latency, "_measure", lambda *a, **k: pytest.fail("re-measured despite a valid cache"))
    messages: list[str] = []
    again = calibrate(tiny, "tome", cache_dir=cache, progress=to_messages(messages.append), **FAST)
    assert again == lm and path.stat().st_mtime_ns == mtime
    assert any("using cached" in m for m in messages)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": 1}', "KEY-MISMATCH", "NEGATIVE"])
def test_corrupt_cache_is_remeasured(calibrated, tiny, tmp_path, monkeypatch, content):
    lm, cache, _ = calibrated
    (good,) = cache.glob("*.json")
    d = json.loads(good.read_text())
    if content == "KEY-MISMATCH":
        d["info"]["key"] = "0" * 64
        content = json.dumps(d)
    elif content == "NEGATIVE":
        d["attention_ms"][0] = -1.0
        content = json.dumps(d)
    (tmp_path / good.name).write_text(content)
    calls = []
    monkeypatch.setattr(block_latency, "_measure", lambda *a, **k: calls.append(1) or L.LatencyModel.from_dict(lm.to_dict()))
    messages: list[str] = []
    again = calibrate(tiny, "tome", cache_dir=tmp_path, progress=to_messages(messages.append), **FAST)
    assert calls == [1] and again.attention_ms == lm.attention_ms
    assert any(m.startswith("warning: ignoring unreadable latency cache") for m in messages)
    assert L.LatencyModel.from_dict(json.loads((tmp_path / good.name).read_text())).mlp_ms == lm.mlp_ms  # rewritten
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_refresh_remeasures(calibrated, tiny, monkeypatch):
    lm, cache, _ = calibrated
    calls = []
    monkeypatch.setattr(block_latency, "_measure", lambda *a, **k: calls.append(1) or L.LatencyModel.from_dict(lm.to_dict()))
    calibrate(tiny, "tome", cache_dir=cache, refresh=True, **FAST)
    assert calls == [1]


def test_usable_as_build_plans_latency_model(calibrated, tiny):
    lm, _, _ = calibrated
    assert lm.ratio(build_plan(tiny, "none")) == pytest.approx(1.0)
    target = reachable(lm, tiny)
    for model in (lm.ratio, lm):  # the bound method or the model itself
        plan = build_plan(tiny, "tome", latency=target, points=[0], latency_model=model)
        assert lm.ratio(plan) <= target + 1e-9
        # On a loaded machine the reducer can cost more than the tokens it saves (target 1.0).
        assert plan.final_tokens < 64 or target == 1.0


def test_search_plan_meets_the_target(calibrated, tiny):
    lm, _, _ = calibrated
    target = reachable(lm, tiny)
    plan = L.search_plan(spec_of(tiny), "tome", target, lm)
    assert lm.ratio(plan) <= target + 1e-9
    assert plan.target["planner"] == "latency-search" and plan.target["latency"] == target
    assert plan.target["predicted_latency_ratio"] == pytest.approx(lm.ratio(plan), abs=1e-4)
    assert len(plan.reduction_points) <= 3 and max(plan.reduction_points, default=0) <= 2
    assert plan.reduction_points or target == 1.0
    try:  # the search covers the default points, so it keeps at least as much
        default = build_plan(tiny, "tome", latency=target, latency_model=lm)
    except EdgepruneError:
        return
    assert L.retained_information(plan) >= L.retained_information(default)


def test_search_plan_impossible_target(calibrated, tiny):
    lm, _, _ = calibrated
    # How small the ratio can get depends on this machine's timings; the message must say it.
    with pytest.raises(EdgepruneError, match="smallest achievable is [0-9]+\\.[0-9]{3}") as info:
        L.search_plan(spec_of(tiny), "tome", 0.01, lm)
    assert "\n" not in str(info.value)


def test_mismatches_are_clear_errors(calibrated, tiny):
    lm, _, _ = calibrated
    with pytest.raises(EdgepruneError, match="calibrated for 'tome'"):
        L.search_plan(spec_of(tiny), "evit", 0.7, lm)
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
    with pytest.raises(EdgepruneError, match="different model configuration"):
        lm.ratio(build_plan(other, "tome", keep=0.5))
    with pytest.raises(EdgepruneError, match="unknown method"):
        calibrate(tiny, "nope")


def test_interpolation_and_reducer_rounds():
    lm = synthetic()
    assert lm.attention(33) == 2.0 and lm.attention(49) == 3.0  # on the grid, between points
    assert lm.attention(97) == pytest.approx(6.0) and lm.attention(1) == pytest.approx(1 - 8 / 24)  # linear beyond both ends
    assert lm.reduction_ms(65, 33) == pytest.approx(0.2)  # one halving round at 64 patches
    assert lm.reduction_ms(65, 9) == pytest.approx(0.2 + lm.reducer(33) + 0.1)  # 64 -> 32 -> 16 -> 8
    assert synthetic("evit").reduction_ms(65, 9) == pytest.approx(0.2)  # EViT prunes in one pass
    assert lm.block_ms(65, 65) == pytest.approx(9.0) and lm.block_ms(65, 33) == pytest.approx(4.0 + 0.2 + 3.0)
    with pytest.raises(EdgepruneError):
        L.LatencyModel.from_dict({**lm.to_dict(), "tokens": [9, 9, 65]})


def test_search_prefers_few_points_when_reducing_is_expensive(tiny):
    cheap, dear = L.search_plan(spec_of(tiny), "tome", 0.7, synthetic(reducer_ms=0.01)), L.search_plan(spec_of(tiny), "tome", 0.7, synthetic(reducer_ms=1.5))
    assert len(dear.reduction_points) == 1 and cheap.macs >= dear.macs
    for plan, lm in ((cheap, synthetic(reducer_ms=0.01)), (dear, synthetic(reducer_ms=1.5))):
        assert lm.ratio(plan) <= 0.7 + 1e-9


def test_token_grid_follows_the_engine_tile():
    assert block_latency.token_grid(8, 65, 3, 1) == [8, 36, 65]
    # a tiled engine: every boundary and the count after it, so interpolation is flat within a tile
    assert block_latency.token_grid(8, 65, 3, 32) == [8, 32, 33, 64, 65]


def test_openvino_calibration_is_keyed_by_engine_and_tiled(tiny, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install \"edgeprune[openvino]\")")
    lm = calibrate(tiny, "tome", cache_dir=tmp_path, engine="openvino-bf16", **FAST)
    assert lm.info["engine"] == "openvino-bf16" and lm.info["openvino"]
    assert lm.tokens == [8, 32, 33, 64, 65]  # 64 patches + CLS, AMX's tile of 32
    assert all(v > 0 for v in [*lm.attention_ms, *lm.mlp_ms, *lm.reducer_ms])
    ort_model = calibrate(tiny, "tome", cache_dir=tmp_path, **FAST)
    assert ort_model.info["key"] != lm.info["key"] and "engine" not in ort_model.info
    assert len(list(tmp_path.glob("*.json"))) == 2
    plan = L.search_plan(spec_of(tiny), "tome", 1.0, lm, max_points=1, tile=32)
    assert lm.ratio(plan) <= 1.0 + 1e-9
    with pytest.raises(EdgepruneError, match="known engines"):
        calibrate(tiny, "tome", cache_dir=tmp_path, engine="openvino-int4", **FAST)
    with pytest.raises(EdgepruneError, match="onnxruntime-fp32 or openvino"):
        calibrate(tiny, "tome", cache_dir=tmp_path, engine="tensorrt-fp16", **FAST)
