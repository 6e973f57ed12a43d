"""TemporalRuntime: which graph runs when, exactness on unchanged frames, drift refreshes, streams
from several threads, and bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from edgeprune.core.errors import EdgepruneError
from edgeprune.runtime.temporal import TemporalRuntime, choose_patches, patch_features

SIZE = 32


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from edgeprune.exporting.temporal import export_temporal
    from edgeprune.families.timm_seg import create_segmenter

    torch.manual_seed(0)
    model = create_segmenter("vit_tiny_patch16_224", 5, head="multilevel", feature_blocks=(1, 3), img_size=SIZE,
                             patch_size=8, depth=4, embed_dim=32, num_heads=2, reg_tokens=2).eval()
    model.info = {"input": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    return export_temporal(model, 0.25, tmp_path_factory.mktemp("temporal") / "t")


def clip(frames: int = 12, seed: int = 0) -> np.ndarray:
    from edgeprune.data import SceneConfig, make_clip

    return make_clip(seed, frames, SceneConfig(height=SIZE, width=SIZE))[0]


def test_patch_features_and_choice():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert patch_features(frame, (4, 4)).shape == (16, 12)
    assert patch_features(frame[:30, :30], (3, 3)).shape == (9, 12)  # 10-pixel patches: 2 x 2 sub-blocks
    assert patch_features(frame[:27, :27], (3, 3)).shape == (9, 3)  # odd sides: whole-patch means
    base = np.full((32, 32, 3), 120, np.uint8)
    noisy = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    moved = noisy.copy()
    moved[0:8, 8:16] = 250  # one patch changes
    change_noise = np.abs(patch_features(noisy, (4, 4)) - patch_features(base, (4, 4))).mean(1)
    change_moved = np.abs(patch_features(moved, (4, 4)) - patch_features(base, (4, 4))).mean(1)
    assert change_noise.max() < 2.0 < 100 < change_moved[1]
    index, stale = choose_patches(change_moved, 1)
    assert index.tolist() == [1] and index.dtype == np.int64 and stale < 2.0
    index, stale = choose_patches(np.array([0.0, 5.0, 1.0, 7.0]), 2)
    assert index.tolist() == [1, 3] and stale == pytest.approx(0.5)
    assert choose_patches(np.ones(4), 4)[1] == 0.0


def test_graph_schedule_and_unchanged_frames_stay_exact(artifact):
    frames = clip(10)
    with TemporalRuntime(artifact, threads=1, refresh_every=4, drift_threshold=1e6) as rt:
        results = [rt.infer(f) for f in frames]
        assert [r.refreshed for r in results] == [i % 4 == 0 for i in range(10)]
        assert results[0].reason == "first frame" and results[4].reason == "every 4 frames"
        assert {r.recomputed for r in results if not r.refreshed} == {0.25}
        assert all(r.labels.shape == (SIZE, SIZE) and r.labels.dtype == np.uint8 for r in results)
        # The same frame again and again: every update must reproduce the refresh exactly.
        rt.reset()
        still = [rt.infer(frames[0], stream="still") for _ in range(3)]
        assert still[0].refreshed and not still[1].refreshed
        for r in still[1:]:
            np.testing.assert_allclose(r.logits, still[0].logits, atol=1e-4)
            assert np.array_equal(r.labels, still[0].labels)


def test_drift_refreshes_on_a_scene_cut_and_reset(artifact):
    a, b = clip(1, seed=1)[0], clip(1, seed=2)[0]
    with TemporalRuntime(artifact, threads=1, refresh_every=100, drift_threshold=2.0) as rt:
        assert rt.infer(a).reason == "first frame"
        cut = rt.infer(b)
        assert cut.refreshed and cut.reason.startswith("drift") and cut.recomputed == 1.0
        assert not rt.infer(b).refreshed
        rt.reset(0)
        assert rt.infer(b).reason == "first frame"


def test_streams_from_threads_match_sequential_runs(artifact):
    clips = {s: clip(6, seed=s) for s in range(3)}
    with TemporalRuntime(artifact, threads=1) as rt:
        expected = {s: [rt.infer(f, stream=s).logits for f in frames] for s, frames in clips.items()}
        rt.reset()
        got: dict[int, list[np.ndarray]] = {s: [] for s in clips}
        errors: list[BaseException] = []

        def serve(s: int) -> None:
            try:
                for f in clips[s]:
                    got[s].append(rt.infer(f, stream=s).logits)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        workers = [threading.Thread(target=serve, args=(s,)) for s in clips]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert not errors
    for s in clips:
        for e, g in zip(expected[s], got[s]):
            np.testing.assert_allclose(g, e, atol=1e-5)


def test_frames_of_another_size_are_resized(artifact):
    big = np.repeat(np.repeat(clip(1)[0], 3, axis=0), 2, axis=1)  # 96 x 64
    with TemporalRuntime(artifact, threads=1) as rt:
        assert rt.infer(big).labels.shape == (SIZE, SIZE)


def test_batch_two_artifacts_are_refused(tmp_path):
    from edgeprune.exporting.temporal import export_temporal
    from edgeprune.families.timm_seg import create_segmenter

    model = create_segmenter("vit_tiny_patch16_224", 3, img_size=16, patch_size=8, depth=1, embed_dim=16, num_heads=1)
    model.info = {"input": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    path = export_temporal(model, 0.5, tmp_path / "b2", batch=2)
    with pytest.raises(EdgepruneError, match="one frame per stream"):
        TemporalRuntime(path)


def test_bad_input(artifact, tmp_path):
    with pytest.raises(EdgepruneError, match="refresh-every"):
        TemporalRuntime(artifact, refresh_every=0)
    with pytest.raises(EdgepruneError, match="drift-threshold"):
        TemporalRuntime(artifact, drift_threshold=0)
    with pytest.raises(EdgepruneError, match="not an edgeprune artifact"):
        TemporalRuntime(tmp_path)
    rt = TemporalRuntime(artifact, threads=1)
    with pytest.raises(EdgepruneError, match="RGB uint8"):
        rt.infer(np.zeros((SIZE, SIZE, 3), np.float32))
    rt.close()
    with pytest.raises(EdgepruneError, match="closed"):
        rt.infer(clip(1)[0])
