"""Serving a classifier artifact (not a set): one budget, class ids [N, 1], logits equal to the artifact's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprune.serving.serve import load_set_or_artifact, prepare_service
from edgeprune.serving.service import Service
from tests.conftest import make_tiny


@pytest.fixture(scope="module")
def classifier_artifact(tmp_path_factory):
    from safetensors.torch import save_file

    from edgeprune.exporting.onnx_export import export
    from edgeprune.families.loading import load_model
    from edgeprune import build_plan

    root = tmp_path_factory.mktemp("classifier")
    model = make_tiny("cls")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "weights.safetensors"))
    args = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2, num_classes=7)
    net, info = load_model("vit_tiny_patch16_224", checkpoint=root / "weights.safetensors", model_args=args)
    info["input"] = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    export(net, build_plan(net, "tome", flops=0.7), root / "artifact", model_info=info)
    return root / "artifact"


def test_a_classifier_artifact_is_served_with_class_ids(classifier_artifact, tmp_path):
    from edgeprune.backends.ort import OrtRunner

    one = load_set_or_artifact(classifier_artifact)
    assert len(one.members) == 1 and abs(one.members[0].budget - 0.7) < 0.05
    config = prepare_service(classifier_artifact, max_batch=2, threads=1, rounds=3, cache=tmp_path)
    assert not config.dense and config.num_classes == 7 and config.sizes == [1, 2]
    service = Service(config)
    pixels = torch.randn(2, 3, 32, 32).numpy()
    a, b = service.run([service.parse(None, pixels[:1], {}), service.parse(None, pixels[1:], {"deadline_ms": 5})])
    runner = OrtRunner(one.members[0].artifact.onnx_path, threads=1)
    runner.activate()
    for row, result in zip(pixels, (a, b)):
        expected = runner.infer({"pixel_values": row[None]})["logits"]
        np.testing.assert_allclose(result.logits, expected, rtol=1e-4, atol=1e-5)
        assert result.labels.dtype == np.int32 and result.labels.shape == (1, 1)
        assert result.labels[0, 0] == expected.argmax()
    assert a.batch_size == 2  # both requests ran as one batch
