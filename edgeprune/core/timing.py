"""One interleaved timer for every latency measurement (bench, engine-set calibration, the latency model).

Timing hygiene: ONNX Runtime's intra-op thread pools keep spinning for tens of ms after a run, and a
session's first calls right after another session ran are slow, while a deployed model's one session
stays hot. Timing sessions back to back without a pause and a few untimed calls compresses every
ratio toward 1. So sessions take turns in shuffled visits; each visit first idles ``pause_s``, runs
untimed calls (the warm-up on the first visit, then at least ``settle_calls`` and for at least
``settle_s``), and only then times each of its jobs ``per_visit`` times in shuffled order, so drift
between visits hits every job alike.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Optional, Sequence

from edgeprune.core.progress import Progress

Call = Callable[[], Any]


def interleaved_times(sessions: Sequence[Sequence[Call]], *, runs: int, per_visit: int = 1, warmup: int = 0,
                      settle_calls: int = 2, settle_s: float = 0.0, pause_s: float = 0.0, seed: int = 0,
                      progress: Optional[Progress] = None, clock: Callable[[], float] = time.perf_counter,
                      sleep: Callable[[float], None] = time.sleep) -> list[list[list[float]]]:
    """Time every job (a no-argument call) of every session ``runs`` times, interleaved as above.

    ``sessions[s][j]`` is job ``j`` of session ``s`` (jobs of one session share its thread pool, e.g.
    one graph at several input sizes). ``warmup`` untimed calls per job precede its session's first
    visit (then the settle calls as on every visit). Returns ms samples as ``[session][job][run]``, in the order they were taken. ``progress``
    is told ``(visits done, visits)`` after each round of visits."""
    runs = max(1, runs)
    per_visit = max(1, min(per_visit, runs))
    rounds = -(-runs // per_visit)
    times: list[list[list[float]]] = [[[] for _ in jobs] for jobs in sessions]
    shuffler, order = random.Random(seed), [s for s, jobs in enumerate(sessions) if jobs]
    for visit in range(rounds):
        shuffler.shuffle(order)
        for s in order:
            jobs = sessions[s]
            if pause_s > 0:
                sleep(pause_s)  # let the previous session's spinning threads stop
            need = (warmup * len(jobs) if visit == 0 else 0) + settle_calls
            calls, start = 0, clock()
            while calls < need or (settle_s > 0 and clock() - start < settle_s):
                jobs[calls % len(jobs)]()
                calls += 1
            for _ in range(min(per_visit, runs - visit * per_visit)):
                for j in shuffler.sample(range(len(jobs)), len(jobs)) if len(jobs) > 1 else (0,):
                    start = clock()
                    jobs[j]()
                    times[s][j].append((clock() - start) * 1e3)
        if progress is not None:
            progress(visit + 1, rounds)
    return times
