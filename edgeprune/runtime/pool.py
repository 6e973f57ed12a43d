"""One token pool shared by several cameras (the EchoingPixels idea): busy streams get more.

Budgets are per-frame MACs ratios (1.0 = the unreduced model), so a pool of 2.0 per tick can run
two cameras at full budget, or four at 0.5, or one at 1.0 and two at 0.5. Each stream can only run
at one of the available engine budgets (``levels``).

Algorithm (deterministic, O(streams x levels) upgrades):

1. Every stream starts at the smallest level >= its ``minimum``; if those alone exceed the pool,
   it is an error (the pool cannot honour the guarantees).
2. Repeatedly upgrade one stream by one level, choosing the stream with the highest
   ``content / (extra after the upgrade)``, where *extra* is budget above its starting level. This
   is water-filling: extras end up roughly proportional to content, and a stream with more content
   never gets less. Ties go to higher content, then to the earlier stream.
3. An upgrade that would overflow the pool, or pass the stream's ``maximum``, is skipped; streams
   with content <= 0 stay at their minimum (nothing changed, the last result is still good).
   It stops when no upgrade fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from edgeprune.core.errors import EdgepruneError

_EPS = 1e-9


@dataclass(frozen=True)
class StreamDemand:
    """One camera's request: its content signal in [0, 1] and the budget range it accepts."""

    name: str
    content: float
    minimum: float = 0.0
    maximum: float = 1.0


def allocate(total_budget: float, streams: Sequence[StreamDemand], levels: Sequence[float]) -> dict[str, float]:
    """Budget per stream name, each one of ``levels``, summing to at most ``total_budget``."""
    lv = sorted(set(float(x) for x in levels))
    if not lv or lv[0] <= 0:
        raise EdgepruneError(f"pool: need positive budget levels, got {list(levels)}")
    names = [s.name for s in streams]
    if len(set(names)) != len(names):
        raise EdgepruneError(f"pool: stream names must be unique, got {names}")
    start: list[int] = []
    top: list[int] = []
    for s in streams:
        lo = next((i for i, b in enumerate(lv) if b >= s.minimum - _EPS), None)
        hi = max((i for i, b in enumerate(lv) if b <= s.maximum + _EPS), default=None)
        if lo is None or hi is None or hi < lo:
            raise EdgepruneError(f"pool: stream {s.name!r} range [{s.minimum}, {s.maximum}] holds no level of {lv}")
        start.append(lo)
        top.append(hi)
    used = sum(lv[i] for i in start)
    if used > total_budget + _EPS:
        raise EdgepruneError(f"pool: minimums need {used:.3g} but the pool holds {total_budget:.3g}")
    cur = list(start)
    while True:
        best, best_key = -1, None
        for j, s in enumerate(streams):
            if s.content <= 0 or cur[j] >= top[j]:
                continue
            nxt = lv[cur[j] + 1]
            if used - lv[cur[j]] + nxt > total_budget + _EPS:
                continue
            key = (s.content / (nxt - lv[start[j]]), s.content, -j)
            if best_key is None or key > best_key:
                best, best_key = j, key
        if best < 0:
            break
        used += lv[cur[best] + 1] - lv[cur[best]]
        cur[best] += 1
    return {s.name: lv[i] for s, i in zip(streams, cur)}
