"""The plan search of ``edgeprune tune`` on the reference MNIST ViT (models/mnist_vit) and real digits:
equal-cost candidates, the search beating ToMe's constant r on what it optimises, resumable scores."""

import json
from pathlib import Path

import pytest
import torch

import edgeprune
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import messages as to_messages
from edgeprune.families import adapter_for
from edgeprune.families.loading import load_model
from edgeprune.families.weights import model_fingerprint
from edgeprune.plan.token_plan import TokenPlan, min_tokens
from edgeprune import build_plan
from edgeprune.tune import Preprocess, load_calibration, tune
from edgeprune.tune.data import ImageSet
from edgeprune.tune.evaluate import Evaluator, ScoreCache, cache_path, first_reduction
from edgeprune.tune.space import Shape, Variant, fit, removal_schedule, shapes, variants
from tests.conftest import make_tiny

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models" / "mnist_vit"
MNIST = ROOT.parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="shared MNIST digits absent")
METHODS = ["tome", "prune-merge"]
# The budget only sizes the screening subset, capped at the 100 calibration images: 3 minutes keeps it
# at all 100 even on a very busy core (the resume check needs both runs to screen the same images).
BUDGET = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mnist_vit():
    config = json.loads((MODEL_DIR / "config.json").read_text())
    model, _ = load_model(config["timm_name"], checkpoint=MODEL_DIR / "model.safetensors", model_args=config["model_args"])
    return model.eval()


@pytest.fixture(scope="module")
def digits():
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("shared MNIST digits absent")
    pre = Preprocess((32, 32), 1, (0.1307,), (0.3081,), fit="pad")
    return load_calibration(MNIST, pre, 100, 60)


@pytest.fixture(scope="module")
def tuned(mnist_vit, digits, tmp_path_factory):
    calib, hold = digits
    cache = tmp_path_factory.mktemp("tune_cache")
    messages = []
    result = tune(mnist_vit, calib, flops=0.6, methods=METHODS, holdout=hold, budget_minutes=BUDGET, threads=1,
                  cache_dir=cache, progress=to_messages(messages.append))
    return result, cache, messages


# --------------------------------------------------------------------------- the search


@needs_mnist
def test_tuned_plan_meets_target_and_beats_constant_r(tuned, mnist_vit, digits):
    result, _, _ = tuned
    plan = result.plan
    spec = adapter_for(mnist_vit).spec
    assert plan.spec == spec and plan.method in METHODS
    assert plan.macs_ratio <= 0.6 + 1e-9 and plan.macs_ratio > 0.5  # uses the budget, not far below it
    assert plan.prefix_only_last is True  # the timm head reads CLS only
    assert plan.reduction_points and plan.reduction_points[-1] < spec.depth - 1
    assert result.target == {"flops": 0.6}
    assert plan.target["planner"] == "tune" and "calibration_scores" in plan.target
    # every candidate was fitted to the same target
    assert len(result.candidates) >= 10
    for c in result.candidates:
        assert c.cost <= 0.6 + 1e-9, (c.label, c.cost)
        assert c.plan.macs_ratio == pytest.approx(c.cost)
        assert c.plan.method in METHODS
    # the constant-r reference, scored on the same calibration images
    ref = result.reference
    assert ref is not None and ref.plan.method == "tome" and ref.plan.macs_ratio <= 0.6 + 1e-9
    chosen_full, ref_full = plan.target["calibration_scores"], ref.scores["full"]
    assert chosen_full["n"] == ref_full["n"] == len(digits[0])
    assert chosen_full["kl"] <= ref_full["kl"], (chosen_full, ref_full)
    # ... and those are the real scores of the plan on those images
    check = Evaluator(adapter_for(mnist_vit), digits[0], [0, spec.depth - 1])
    assert check.score(plan)["kl"] == pytest.approx(chosen_full["kl"], rel=1e-3, abs=1e-7)
    assert check.score(ref.plan)["kl"] == pytest.approx(ref_full["kl"], rel=1e-3, abs=1e-7)
    # the chosen plan is the best of the finalists
    finals = [c for c in result.candidates if "full" in c.scores and c is not ref]
    assert finals and min(c.scores["full"]["kl"] for c in finals) == pytest.approx(chosen_full["kl"])


@needs_mnist
def test_holdout_report_and_to_dict(tuned, digits):
    result, cache, messages = tuned
    hold = result.holdout
    assert set(hold) >= {"baseline", "tuned", "constant_r", "description"}
    assert hold["baseline"]["kl"] == pytest.approx(0.0, abs=1e-6) and hold["baseline"]["agreement"] == 1.0
    assert hold["baseline"]["n"] == hold["tuned"]["n"] == len(digits[1]) == 60
    assert hold["baseline"]["top1"] > 0.9  # a real MNIST classifier on real digits
    assert hold["tuned"]["top1"] >= hold["baseline"]["top1"] - 0.05
    doc = json.loads(json.dumps(result.to_dict(), default=str))
    assert doc["chosen"]["keep"] == list(result.plan.keep)
    assert doc["constant_r"]["keep"] == list(result.reference.plan.keep)
    kls = [row["scores"].get("full", {}).get("kl") for row in doc["candidates"]]
    full = [k for k in kls if k is not None]
    assert full == sorted(full) and kls[: len(full)] == full  # ranked: fully scored first, by KL
    assert result.info["calibration_images"] == 100 and result.info["resumed_scores"] == 0
    assert Path(result.info["cache"]).parent == cache and Path(result.info["cache"]).is_file()
    assert any("unreduced" in m for m in messages)


@needs_mnist
def test_second_run_resumes_every_score(tuned, mnist_vit, digits, monkeypatch, tmp_path):
    result, cache, _ = tuned
    calls = []
    original = Evaluator.score

    def counting(self, plan):
        calls.append(plan)
        return original(self, plan)

    monkeypatch.setattr(Evaluator, "score", counting)
    again = tune(mnist_vit, digits[0], flops=0.6, methods=METHODS, budget_minutes=BUDGET, threads=1, cache_dir=cache)
    assert again.info["screen_images"] == result.info["screen_images"] == 100
    assert calls == [], f"{len(calls)} plans re-scored although every score was cached"
    assert again.info["resumed_scores"] > 0
    assert again.plan.keep == result.plan.keep and again.plan.method == result.plan.method
    assert again.plan.options == result.plan.options
    # other images (one pixel changed): nothing may be taken from that cache
    images = digits[0].images.clone()
    images[0, 0, 5, 5] += 0.5
    other = ImageSet(images, digits[0].labels, digits[0].description)
    fresh = tune(mnist_vit, other, flops=0.6, methods=["tome"], budget_minutes=BUDGET, threads=1, cache_dir=cache)
    assert fresh.info["resumed_scores"] == 0 and len(calls) > 0


@needs_mnist
def test_impossible_target(mnist_vit, digits):
    spec = adapter_for(mnist_vit).spec
    cost = lambda plan: plan.macs_ratio  # noqa: E731
    assert fit(spec, Shape(0, 1), Variant("tome"), cost, 0.01, True) is None
    assert fit(spec, Shape(3, 2), Variant("tome"), cost, 0.3, True) is None  # one late point cannot get that low
    with pytest.raises(EdgepruneError) as excinfo:
        tune(mnist_vit, digits[0], flops=0.01, methods=["tome"], budget_minutes=BUDGET, threads=1)
    assert "\n" not in str(excinfo.value) and "0.01" in str(excinfo.value)


@needs_mnist
@pytest.mark.parametrize("kwargs", [dict(), dict(flops=0.6, latency=0.6), dict(flops=0.0), dict(flops=1.5),
                                    dict(flops=0.6, methods=["bogus"])])
def test_bad_requests(mnist_vit, digits, kwargs):
    with pytest.raises(EdgepruneError) as excinfo:
        tune(mnist_vit, digits[0], budget_minutes=BUDGET, threads=1, **kwargs)
    assert "\n" not in str(excinfo.value)


# --------------------------------------------------------------------------- the space


@needs_mnist
def test_fit_is_the_smallest_removal_within_target(mnist_vit):
    spec = adapter_for(mnist_vit).spec
    cost = lambda plan: plan.macs_ratio  # noqa: E731
    for shape in (Shape(0, 1), Shape(1, 2), Shape(0, 1, 0.5), Shape(2, 1, 2.0)):
        for variant in (Variant("tome"), Variant("prune-merge", (("prune_share", 0.5),))):
            c = fit(spec, shape, variant, cost, 0.7, True)
            assert c is not None and c.cost <= 0.7 + 1e-9 and c.plan.prefix_only_last
            assert c.plan.options.get("prune_share", 0.5) == 0.5
            points = shape.points(spec.depth - 1)
            assert set(c.plan.reduction_points) <= set(points)
            removed = spec.num_patches - c.plan.keep[-1]
            # one token fewer removed would exceed the target
            less = removal_schedule(spec.num_patches, spec.depth, points, removed - 1, shape.gamma, min_tokens(variant.method))
            worse = TokenPlan(variant.method, spec, less, c.plan.prop_attn, c.plan.options, prefix_only_last=True)
            assert worse.macs_ratio > 0.7


def test_removal_schedule():
    for gamma in (0.5, 1.0, 2.0):
        keep = removal_schedule(64, 6, [0, 1, 2, 3, 4], 40, gamma, 1)
        assert len(keep) == 6 and keep[-1] == 64 - 40 and keep[4] == keep[5]
        assert all(a >= b for a, b in zip((64,) + keep, keep))
    early, even, late = (removal_schedule(64, 6, [0, 1, 2, 3, 4], 40, g, 1) for g in (0.5, 1.0, 2.0))
    assert early[0] < even[0] < late[0]  # gamma < 1 removes more early
    assert even == (56, 48, 40, 32, 24, 24)
    # tokens change only at the points
    keep = removal_schedule(64, 8, [1, 4, 6], 30, 1.0, 1)
    assert keep == (64, 54, 54, 54, 44, 44, 34, 34)
    # the floor holds even when more removal is asked for
    floored = removal_schedule(64, 6, [0, 2, 4], 63, 1.0, 8)
    assert min(floored) == 8 and floored[-1] == 8
    assert removal_schedule(64, 4, [], 30, 1.0, 1) == (64, 64, 64, 64)
    assert removal_schedule(64, 4, [0, 1], 0, 1.0, 1) == (64, 64, 64, 64)


@pytest.mark.parametrize("depth", [2, 3, 4, 6, 12])
@pytest.mark.parametrize("prefix_only_last", [True, False])
def test_shapes_are_distinct(depth, prefix_only_last):
    spec = adapter_for(make_tiny(depth=depth)).spec
    found = shapes(spec, prefix_only_last)
    reducing = depth - 1 if prefix_only_last else depth
    point_lists = [tuple(s.points(reducing)) for s in found]
    assert found and len(set(point_lists)) == len(point_lists), point_lists
    assert all(p and max(p) < reducing for p in point_lists)
    assert (0, *range(1, reducing)) in point_lists  # every block, ToMe-like
    if depth == 12:
        assert any(s.stride == 3 for s in found)


def test_shapes_need_a_reducing_block():
    with pytest.raises(EdgepruneError):
        shapes(adapter_for(make_tiny(depth=1)).spec, True)


def test_variants():
    spec = adapter_for(make_tiny(depth=8)).spec
    found = variants(spec, ["tome", "tofu", "prune-merge"])
    assert Variant("tome") in found
    assert sorted(dict(v.options)["prune_share"] for v in found if v.method == "prune-merge") == [0.0, 0.5, 1.0]
    assert sorted(dict(v.options)["prune_until"] for v in found if v.method == "tofu") == [2, 4]
    with pytest.raises(EdgepruneError) as excinfo:
        variants(spec, ["tome", "magic"])
    assert "magic" in str(excinfo.value)


def test_first_reduction():
    spec = adapter_for(make_tiny(depth=4)).spec  # 16 patches, CLS head
    n = spec.num_patches
    assert first_reduction(TokenPlan("tome", spec, (n, 12, 12, 8))) == 1
    assert first_reduction(TokenPlan("tome", spec, (10, 8, 8, 8))) == 0
    assert first_reduction(TokenPlan("tome", spec, (n, n, 10, 10), prefix_only_last=True)) == 2
    assert first_reduction(TokenPlan("none", spec, (n,) * 4)) == 4
    assert first_reduction(TokenPlan("none", spec, (n,) * 4, prefix_only_last=True)) == 3


# --------------------------------------------------------------------------- scoring


@needs_mnist
def test_evaluator_reference_and_cached_starts(mnist_vit, digits):
    calib = digits[0]
    adapter = adapter_for(mnist_vit)
    spec = adapter.spec
    ev = Evaluator(adapter, calib, [0, 2, spec.depth - 1], batch_size=32)
    with torch.no_grad():
        logits = mnist_vit(calib.images)
    assert torch.allclose(ev.logits, logits, atol=1e-4)
    unreduced = ev.score(build_plan(spec, "none"))
    assert unreduced["kl"] == pytest.approx(0.0, abs=1e-6) and unreduced["agreement"] == 1.0
    assert unreduced["top1"] == unreduced["reference_top1"] > 0.9 and unreduced["n"] == 100
    # a reduced plan scored from a cached block input equals the whole reduced model
    for plan in (TokenPlan("tome", spec, (64, 64, 40, 30, 20, 20), True, prefix_only_last=True),
                 TokenPlan("tome", spec, (64, 64, 64, 50, 40, 30), True),
                 build_plan(spec, "tome", flops=0.5)):
        with torch.no_grad():
            whole = edgeprune.reduce_model(mnist_vit, plan)(calib.images)
        assert torch.allclose(ev.outputs(plan), whole, atol=1e-4), plan.keep
        scores = ev.score(plan)
        assert scores["kl"] > 0 and 0 < scores["agreement"] <= 1
    sub = ev.subset(10)
    assert len(sub.images) == 10 and sub.score(build_plan(spec, "none"))["n"] == 10
    assert torch.equal(sub.logits, ev.logits[:10])
    unlabelled = Evaluator(adapter, ImageSet(calib.images[:8], None, "x"), [0])
    assert "top1" not in unlabelled.score(build_plan(spec, "none"))


def test_score_cache_and_fingerprints(tmp_path):
    path = cache_path(tmp_path, {"a": 1})
    assert path.parent == tmp_path and path != cache_path(tmp_path, {"a": 2})
    cache = ScoreCache(path)
    cache.put("screen64", "k1", {"kl": 0.5})
    cache.put("full100", "k1", {"kl": 0.25})
    reread = ScoreCache(path)
    assert len(reread) == 2 and reread.get("screen64", "k1") == {"kl": 0.5} and reread.get("screen64", "k2") is None
    assert not list(tmp_path.glob("*.tmp"))
    path.write_text("{ not json")
    assert len(ScoreCache(path)) == 0
    model = make_tiny()
    before = model_fingerprint(model)
    assert model_fingerprint(make_tiny()) == before
    with torch.no_grad():
        model.head.bias[0] += 1e-3
    assert model_fingerprint(model) != before
