"""A real, calibrated engine set of a tiny segmenter saved as a folder (so batch-N members can be
re-exported from it), and a real Triton server on free loopback ports serving it."""

from __future__ import annotations

import numpy as np
import pytest

MEAN, STD = [0.45, 0.45, 0.45], [0.25, 0.25, 0.25]


def make_set(root, budgets=(1.0, 0.5)):
    from edgeprune.measure.calibrate import calibrate_engine_set
    from edgeprune.exporting.engine_set import export_engine_set
    from edgeprune.artifacts.engine_set import load_engine_set
    from edgeprune.families.timm_seg import create_segmenter, save_segmenter
    from edgeprune.families.loading import load_model

    import torch

    torch.manual_seed(0)
    model = create_segmenter("vit_tiny_patch16_224", 5, head="linear", img_size=32, patch_size=8, depth=4,
                             embed_dim=32, num_heads=2, mlp_ratio=2.0)
    save_segmenter(model.eval(), root / "model", extra={"input": {"size": [3, 32, 32], "mean": MEAN, "std": STD}})
    net, info = load_model(str(root / "model"))
    export_engine_set(net, "tome", list(budgets), root / "set", model_info=info)
    calibrate_engine_set(load_engine_set(root / "set"), rounds=5, warmup=1)
    return root / "set"


@pytest.fixture(scope="session")
def served_set(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def service_config(served_set, tmp_path_factory):
    """Batch-N members in the session's cache, where `edgeprune serve` run by a test finds them too (the
    autouse fixture pointing EDGEPRUNE_CACHE_DIR there is function-scoped: it is not set yet here)."""
    from edgeprune.serving.serve import prepare_service

    cache = tmp_path_factory.getbasetemp() / "cache" / "serve"
    return prepare_service(served_set, max_batch=4, target_ms=50.0, threads=1, rounds=5, cache=cache)


@pytest.fixture
def frames():
    """Fresh random RGB frames of several sizes (never zeros)."""
    rng = np.random.default_rng()

    def make(n=4, height=48, width=64):
        return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]

    return make


@pytest.fixture(scope="module")
def server(service_config, tmp_path_factory):
    """``edgeprune serve``'s server: 2 instances, batches up to 4, on free ports; always stopped."""
    pytest.importorskip("pytriton", reason="serving needs edgeprune[serve] (nvidia-pytriton)")
    from edgeprune.serving.serve import start

    running = start(service_config, instances=2, queue_delay_us=3000, timeout_s=120,
                    workspace=tmp_path_factory.mktemp("triton"))
    try:
        yield running
    finally:
        running.stop()
