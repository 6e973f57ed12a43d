"""Shared fixtures: tiny but real timm ViTs of every supported layout, fresh random inputs."""

from __future__ import annotations

import pytest
import timm
import torch

TINY = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2, num_classes=7)

# Layouts the timm adapter must handle: CLS token, distillation token, registers + avg pooling,
# no CLS with avg pooling, registers without CLS (like timm's *_reg4_gap models).
LAYOUTS = {
    "cls": ("vit_tiny_patch16_224", {}),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
    "registers": ("vit_tiny_patch16_224", dict(reg_tokens=4, global_pool="avg")),
    "no_cls_avg": ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg")),
    "registers_no_cls": ("vit_tiny_patch16_224", dict(reg_tokens=4, class_token=False, global_pool="avg")),
}


def make_tiny(layout: str = "cls", **overrides) -> torch.nn.Module:
    name, extra = LAYOUTS[layout]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **{**TINY, **extra, **overrides}).eval()


def export_tiny_set(root, budgets, num_classes, mean, std):
    """A real, calibrated engine set of a 2-block 32x32 segmenter (exports in seconds); returns ``root``."""
    from edgeprune.measure.calibrate import calibrate_engine_set
    from edgeprune.exporting.engine_set import export_engine_set
    from edgeprune.artifacts.engine_set import load_engine_set
    from edgeprune.families.timm_seg import create_segmenter

    model = create_segmenter("vit_tiny_patch16_224", num_classes, head="linear", img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, mlp_ratio=2.0)
    model.info = {"input": {"size": [3, 32, 32], "mean": list(mean), "std": list(std)}}
    export_engine_set(model, "tome", budgets, root)
    calibrate_engine_set(load_engine_set(root), rounds=5, warmup=1)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def pixels():
    from edgeprune.backends.feeds import fresh_seed

    def make(batch: int = 2, size: int = 32, chans: int = 3) -> torch.Tensor:
        gen = torch.Generator().manual_seed(fresh_seed())
        return torch.randn(batch, chans, size, size, generator=gen)

    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the random seeds it drew (fixtures and export parity checks alike);
    ``EDGEPRUNE_SEED=N`` makes every draw use N, to rerun it."""
    from edgeprune.backends.feeds import RECENT_SEEDS

    if call.when == "setup":
        RECENT_SEEDS.clear()
    outcome = yield
    report = outcome.get_result()
    if report.failed and RECENT_SEEDS:
        report.sections.append(("random seeds", "seeds drawn by this test (rerun with EDGEPRUNE_SEED=N): "
                                + ", ".join(str(s) for s in RECENT_SEEDS)))


@pytest.fixture(scope="session", autouse=True)
def _every_export_lints_clean(tmp_path_factory):
    """Issue 5's acceptance: every graph the test suite exports passes the TensorRT lint (warnings
    allowed). Export records the lint in each manifest; this reads them all once the tests are done."""
    import json

    yield
    dirty, seen = [], 0
    for manifest in tmp_path_factory.getbasetemp().rglob("manifest.json"):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue  # tests write corrupt manifests on purpose
        if not isinstance(data, dict):
            continue
        reports = [data.get("trt_lint")] + [g.get("trt_lint") for g in (data.get("graphs") or {}).values()
                                            if isinstance(g, dict)]
        for report in filter(None, reports):
            seen += 1
            if report.get("errors"):
                dirty.append(f"{manifest.parent}: {report['findings'][0]}")
    assert not dirty, f"{len(dirty)} of {seen} exported graphs fail the TensorRT lint, e.g. {dirty[0]}"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-model tests (``pytestmark = pytest.mark.usefixtures(...)``):
    they gain nothing from intra-op threads, and on a busy 2-core box spinning threads make every op
    several times slower. The setting is restored for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_in_threads(work, count: int) -> list[BaseException]:
    """Call ``work(i)`` for i in 0..count-1, each in its own thread, all at once; the exceptions they raised."""
    import threading

    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except Exception as exc:  # reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
