"""Multi-camera token pool: guarantees, pool bound, monotone in content, errors."""

from __future__ import annotations

import random

import pytest

from edgeprune.core.errors import EdgepruneError
from edgeprune.runtime import StreamDemand, allocate

LEVELS = [0.25, 0.35, 0.5, 0.75, 1.0]


def test_basic_split():
    streams = [StreamDemand("front", 0.9, 0.25), StreamDemand("left", 0.1, 0.25), StreamDemand("rear", 0.0, 0.35)]
    out = allocate(2.0, streams, LEVELS)
    assert out["rear"] == 0.35  # no change: stays at its minimum
    assert out["front"] > out["left"] >= 0.25
    assert sum(out.values()) <= 2.0 + 1e-9
    assert allocate(2.0, streams, LEVELS) == out  # deterministic


def test_maximum_and_levels_respected():
    out = allocate(10.0, [StreamDemand("a", 1.0, 0.0, 0.6), StreamDemand("b", 0.5)], LEVELS)
    assert out == {"a": 0.5, "b": 1.0}


def test_random_properties():
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 5)
        streams = [StreamDemand(f"s{i}", rng.random(), rng.choice([0.0, 0.25, 0.35, 0.5]), rng.choice([0.5, 0.75, 1.0]))
                   for i in range(n)]
        floor = sum(min(x for x in LEVELS if x >= s.minimum) for s in streams)
        total = floor + rng.random() * 2
        out = allocate(total, streams, LEVELS)
        assert sum(out.values()) <= total + 1e-9
        for s in streams:
            assert s.minimum <= out[s.name] <= s.maximum and out[s.name] in LEVELS
        # raising one stream's content never lowers its budget
        j = rng.randrange(n)
        more = list(streams)
        more[j] = StreamDemand(streams[j].name, streams[j].content + rng.random(), streams[j].minimum, streams[j].maximum)
        assert allocate(total, more, LEVELS)[streams[j].name] >= out[streams[j].name]
        # among streams with the same range, more content -> not less budget
        same = [StreamDemand(f"t{i}", rng.random(), 0.25, 1.0) for i in range(n)]
        got = allocate(0.25 * n + rng.random() * 2, same, LEVELS)
        ranked = sorted(same, key=lambda s: s.content)
        assert [got[s.name] for s in ranked] == sorted(got[s.name] for s in ranked)


def test_errors():
    with pytest.raises(EdgepruneError, match="minimums need"):
        allocate(0.5, [StreamDemand("a", 1.0, 0.5), StreamDemand("b", 1.0, 0.25)], LEVELS)
    with pytest.raises(EdgepruneError):
        allocate(2.0, [StreamDemand("a", 1.0, 0.8, 0.9)], LEVELS)  # no level in range
    with pytest.raises(EdgepruneError):
        allocate(2.0, [StreamDemand("a", 1.0), StreamDemand("a", 0.5)], LEVELS)
