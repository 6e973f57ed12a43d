"""edgeprune.video.pipeline: files keep every frame in order, live sources drop stale frames, errors surface."""

import threading
import time

import numpy as np
import pytest

from edgeprune.video.pipeline import run_pipeline
from edgeprune.video.sources import Source


def source(n, live=False, delay=0.0, name="s"):
    def frames():
        for i in range(n):
            if delay:
                time.sleep(delay)
            yield np.full((4, 4, 3), i % 256, np.uint8)

    return Source(name, 30.0, (4, 4), frames(), n, live=live)


def test_file_sources_keep_every_frame_in_order():
    seen, threads, switched = [], set(), []

    def infer(item):
        threads.add(threading.current_thread().name)
        time.sleep(0.001)
        return int(item.frame[0, 0, 0])

    def finish(item, value):
        threads.add(threading.current_thread().name)
        seen.append((item.source, value))

    stats = run_pipeline([source(30), source(12)], lambda f: f, infer, finish, queue_size=2,
                         on_new_source=switched.append)
    assert stats.frames == 42 and stats.dropped == 0
    assert seen == [(0, i) for i in range(30)] + [(1, i) for i in range(12)]
    assert switched == [0, 1] and len(threads) == 2  # infer here, finish in the output thread


def test_max_frames_stops_early():
    done = []
    stats = run_pipeline([source(1000)], lambda f: f, lambda item: item.index, lambda item, v: done.append(v),
                         max_frames=25)
    assert stats.frames == 25 and done == list(range(25))


def test_live_source_drops_stale_frames():
    done = []

    def slow(item):
        time.sleep(0.02)
        return item.index

    stats = run_pipeline([source(60, live=True, delay=0.002)], lambda f: f, slow, lambda item, v: done.append(v))
    assert stats.dropped > 0 and stats.frames + stats.dropped == 60 and len(done) == stats.frames
    assert done == sorted(done) and done[-1] == 59  # always the newest frame; the last one is never lost


@pytest.mark.parametrize("stage", ["decode", "infer", "finish"])
def test_an_error_in_any_stage_stops_the_pipeline(stage):
    def prepare(frame):
        if stage == "decode" and frame[0, 0, 0] == 5:
            raise RuntimeError("decode broke")
        return frame

    def infer(item):
        if stage == "infer" and item.index == 5:
            raise RuntimeError("infer broke")
        return item.index

    def finish(item, value):
        if stage == "finish" and value == 5:
            raise RuntimeError("finish broke")

    with pytest.raises(RuntimeError, match=f"{stage} broke"):
        run_pipeline([source(10_000)], prepare, infer, finish)
    assert not [t for t in threading.enumerate() if t.name.startswith("edgeprune-")]
