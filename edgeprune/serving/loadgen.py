"""Simulated cameras against `edgeprune serve`: throughput, latency, budgets, deadline hits, failures.

Each camera is a thread with its own client (HTTP or gRPC) on loopback, sending the frames it was given
(``edgeprune load-test`` streams real clips, resized as a camera would stream them) at ``fps`` with a
deadline, for ``seconds``. A camera waits for each answer before sending the next frame; a frame whose
time slot passed meanwhile is skipped, as a live camera drops it (counted, never sent). Every frame
that was sent ends as answered or failed (with the reason); "lost" counts frames with neither and
must be 0.

:func:`run_load_test` starts the server itself for each variant (NAME, MAX_BATCH, INSTANCES) and runs
every protocol against it, or drives a server someone started (``url`` = (HTTP, gRPC) addresses).
``fps_steps`` runs the first variant over gRPC with the per-camera rate stepping through the list
(equal shares of ``seconds``) and reports the budgets chosen per step. ``fault_at`` kills the server
(SIGKILL) that many seconds into each run and restarts it ``restart_after`` seconds later on the same
ports; clients retry until ``retry_for`` seconds per frame. ``check`` = N compares every Nth answered
frame with the local Runtime at the budget the server reported.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import messages


@dataclass
class LoadOptions:
    """What one load test runs; the defaults are ``edgeprune load-test``'s."""

    seconds: float = 60.0
    fps: float = 10.0
    fps_steps: list[float] = field(default_factory=list)
    deadline_ms: float = 60.0
    variants: list[tuple[str, int, int]] = field(default_factory=lambda: [("batch", 8, 2), ("single", 1, 1)])
    protocols: list[str] = field(default_factory=lambda: ["http", "grpc"])
    queue_delay_us: int = 2000
    fault_at: Optional[float] = None
    restart_after: float = 3.0
    retry_for: float = 20.0
    check: int = 0
    url: Optional[tuple[str, str]] = None  # (HOST:HTTP_PORT, HOST:GRPC_PORT) of a running server


def parse_variants(text: str) -> list[tuple[str, int, int]]:
    """``batch:8x2,single:1x1`` -> [("batch", 8, 2), ("single", 1, 1)] (NAME:MAX_BATCHxINSTANCES)."""
    out = []
    for spec in (v for v in text.split(",") if v):
        name, _, shape = spec.partition(":")
        try:
            max_batch, instances = (int(v) for v in shape.lower().split("x"))
        except ValueError:
            raise EdgepruneError(f"--variants expects NAME:MAX_BATCHxINSTANCES (e.g. batch:8x2), got '{spec}'") from None
        if not name or max_batch < 1 or instances < 1:
            raise EdgepruneError(f"--variants expects NAME:MAX_BATCHxINSTANCES with both numbers >= 1, got '{spec}'")
        out.append((name, max_batch, instances))
    if not out:
        raise EdgepruneError("--variants is empty")
    return out


@dataclass
class Frame:
    camera: int
    index: int
    sent_s: float  # since the run's start
    outcome: str = "pending"  # answered | failed
    latency_ms: float = 0.0
    budget: float = 0.0
    engine: str = ""
    batch_size: int = 0
    attempts: int = 0
    error: str = ""
    step: int = 0
    labels: Optional[np.ndarray] = field(default=None, repr=False)


def fps_at(elapsed: float, steps: list[float], seconds: float) -> tuple[float, int]:
    step = min(int(elapsed / (seconds / len(steps))), len(steps) - 1)
    return steps[step], step


def camera_loop(cam: int, url: str, protocol: str, frames: list[np.ndarray], steps: list[float], seconds: float,
                deadline_ms: float, retry_for: float, t0: float, records: list[Frame], keep_every: int,
                skipped: Counter) -> None:
    from edgeprune.serving.client import Client, RequestRejected, ServerUnavailable

    client = Client(url, protocol, timeout_s=10.0)
    next_slot = t0 + cam * 0.013  # cameras do not all tick at the same instant
    k = 0
    while True:
        now = time.perf_counter()
        if now - t0 >= seconds:
            break
        if now < next_slot:
            time.sleep(next_slot - now)
            now = time.perf_counter()
        fps, step = fps_at(now - t0, steps, seconds)
        record = Frame(cam, k, now - t0, step=step)
        records.append(record)  # appended before sending: a frame is never unaccounted for
        give_up = now + retry_for
        while True:
            record.attempts += 1
            try:
                result = client.infer(frames[k % len(frames)], deadline_ms=deadline_ms)
            except RequestRejected as exc:
                record.outcome, record.error = "failed", f"rejected: {exc}"
                break
            except ServerUnavailable as exc:
                if time.perf_counter() >= give_up:
                    record.outcome, record.error = "failed", f"unavailable for {retry_for:g} s: {exc}"
                    break
                time.sleep(min(0.05 * 2 ** min(record.attempts, 5), 1.0))
                continue
            record.outcome = "answered"
            record.latency_ms = (time.perf_counter() - (t0 + record.sent_s)) * 1e3  # includes any retries
            record.budget, record.engine, record.batch_size = result.budget, result.engine, result.batch_size
            if keep_every and k % keep_every == 0:
                record.labels = result.labels[0]
            break
        k += 1
        period = 1.0 / fps
        next_slot += period
        late = time.perf_counter() - next_slot
        if late > 0:  # slots that passed while waiting: a live camera drops those frames
            missed = int(late / period) + 1
            skipped[cam] += missed
            k += missed
            next_slot += missed * period
    client.close()


def summarize(records: list[Frame], seconds: float, deadline_ms: float, skipped: Counter) -> dict[str, Any]:
    answered = [r for r in records if r.outcome == "answered"]
    failed = [r for r in records if r.outcome == "failed"]
    lost = [r for r in records if r.outcome not in ("answered", "failed")]
    lat = np.array([r.latency_ms for r in answered]) if answered else np.zeros(1)
    budgets = Counter(f"{r.budget:g}" for r in answered)
    return {
        "sent": len(records), "answered": len(answered), "failed": len(failed), "lost": len(lost),
        "skipped_by_cameras": int(sum(skipped.values())),
        "throughput_fps": round(len(answered) / seconds, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "deadline_hits": round(float(np.mean(lat <= deadline_ms)), 4) if answered else 0.0,
        "mean_budget": round(float(np.mean([r.budget for r in answered])), 3) if answered else 0.0,
        "budgets": dict(sorted(budgets.items(), reverse=True)),
        "mean_batch": round(float(np.mean([r.batch_size for r in answered])), 2) if answered else 0.0,
        "retried_frames": sum(1 for r in answered if r.attempts > 1),
        "errors": dict(Counter(r.error.split(":")[0] + ": " + r.error.split(":", 1)[-1][:90] for r in failed).most_common(5)),
    }


def run_cameras(url: str, protocol: str, frames: list[list[np.ndarray]], steps: list[float], args: LoadOptions,
                fault: Optional[Any] = None) -> tuple[list[Frame], Counter]:
    records: list[Frame] = []
    skipped: Counter = Counter()
    t0 = time.perf_counter() + 0.2
    threads = [threading.Thread(target=camera_loop, args=(c, url, protocol, frames[c], steps, args.seconds,
                                                          args.deadline_ms, args.retry_for, t0, records,
                                                          args.check, skipped), daemon=True)
               for c in range(len(frames))]
    for t in threads:
        t.start()
    if fault is not None:
        fault(t0)
    for t in threads:
        t.join(args.seconds + args.retry_for + 60)
    return records, skipped


def check_against_runtime(engine_set: Path, records: list[Frame], frames: list[list[np.ndarray]]) -> dict[str, Any]:
    """Labels over Triton vs the local Runtime running the member the server reported, same frames."""
    from edgeprune.artifacts.engine_set import load_engine_set
    from edgeprune.runtime.policies import FixedPolicy
    from edgeprune.runtime.runtime import Runtime, profiles_from_calibration

    loaded = load_engine_set(engine_set, verify=False)
    profiles = profiles_from_calibration(loaded)
    runtimes = {p.name: Runtime(loaded, 1000.0, policy=FixedPolicy(profiles, i), threads=2)
                for i, p in enumerate(profiles)}
    same = total = 0
    for r in records:
        if r.labels is None:
            continue
        frame = frames[r.camera][r.index % len(frames[r.camera])]
        local = runtimes[r.engine].infer(frame).labels  # the member the server reported running
        same += int((local == r.labels).sum())
        total += local.size
    for rt in runtimes.values():
        rt.close()
    return {"frames_checked": sum(1 for r in records if r.labels is not None), "pixels": total,
            "identical": round(same / total, 6) if total else None}


def run_load_test(args: LoadOptions, frames: list[list[np.ndarray]], engine_set: Optional[Path], *,
                  report: Optional[dict[str, Any]] = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every variant x protocol (or the given server x protocol); returns the report (``runs``, ``ratios``)."""
    from edgeprune.serving.serve import default_threads, prepare_service, start

    report = {} if report is None else report
    report.setdefault("runs", [])
    steps = list(args.fps_steps)

    def one_run(label: str, url: str, protocol: str, steps_: list[float], server=None, service=None, variant=None,
                variant_name: str = ""):
        fault = None
        events: list[str] = []
        if args.fault_at is not None and server is not None:
            def kill_and_restart(t0, holder=server):
                time.sleep(max(0.0, t0 + args.fault_at - time.perf_counter()))
                holder["server"].triton.kill()
                events.append(f"killed at {time.perf_counter() - t0:.1f} s")
                time.sleep(args.restart_after)
                ports = holder["server"].ports
                holder["server"] = start(service, instances=variant[1], queue_delay_us=args.queue_delay_us,
                                         http=ports.http, grpc=ports.grpc, metrics=ports.metrics)
                events.append(f"restarted, ready at {time.perf_counter() - t0:.1f} s")
            fault = kill_and_restart
        records, skipped = run_cameras(url, protocol, frames, steps_, args, fault)
        summary = summarize(records, args.seconds, args.deadline_ms, skipped)
        if events:
            summary["fault"] = events
        if len(steps_) > 1:
            summary["steps"] = []
            for i, fps in enumerate(steps_):
                part = [r for r in records if r.step == i]
                s = summarize(part, args.seconds / len(steps_), args.deadline_ms, Counter())
                summary["steps"].append({"fps_per_camera": fps, "offered_fps": fps * len(frames), **{
                    k: s[k] for k in ("answered", "throughput_fps", "p50_ms", "p99_ms", "mean_budget", "budgets",
                                      "mean_batch", "deadline_hits")}})
        if args.check and engine_set is not None:
            summary["check"] = check_against_runtime(engine_set, records, frames)
        summary.update(label=label, protocol=protocol, variant=variant_name, load_steps=len(steps_) > 1)
        report["runs"].append(summary)
        print_summary(summary, say)

    if args.url:
        http_url, grpc_url = args.url
        for protocol in args.protocols:
            one_run("given server", http_url if protocol == "http" else grpc_url, protocol, [args.fps])
    else:
        for spec in args.variants:
            name, max_batch, instances = spec
            threads = default_threads(instances)
            service = prepare_service(engine_set, max_batch=max_batch, target_ms=args.deadline_ms, threads=threads,
                                      progress=messages(say))
            holder = {"server": start(service, instances=instances, queue_delay_us=args.queue_delay_us)}
            try:
                for protocol in args.protocols:
                    ports = holder["server"].ports
                    url = ports.http_url if protocol == "http" else ports.grpc_url
                    one_run(f"{name} (max batch {max_batch}, {instances} instance(s), {threads} thread(s) each)",
                            url, protocol, [args.fps], holder, service, (max_batch, instances), name)
                if steps and spec == args.variants[0]:
                    ports = holder["server"].ports
                    one_run(f"{name} load steps", ports.grpc_url, "grpc", steps, holder, service, (max_batch, instances),
                            name)
            finally:
                holder["server"].stop()
        runs = report["runs"]
        by = {(r["variant"], r["protocol"]): r for r in runs if not r["load_steps"]}
        names = [v[0] for v in args.variants]
        if len(names) >= 2:
            for protocol in args.protocols:
                a, b = by.get((names[0], protocol)), by.get((names[1], protocol))
                if a and b and b["throughput_fps"]:
                    ratio = a["throughput_fps"] / b["throughput_fps"]
                    say(f"{protocol}: {names[0]} / {names[1]} throughput {ratio:.2f}x "
                        f"({a['throughput_fps']} vs {b['throughput_fps']} frames/s)")
                    report.setdefault("ratios", {})[protocol] = round(ratio, 3)
    return report


def write_report(path: Path, report: dict[str, Any], say: Callable[[str], None] = print) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    say(f"wrote {path}")


def print_summary(s: dict[str, Any], say: Callable[[str], None] = print) -> None:
    say(f"{s['label']} over {s['protocol']}: sent {s['sent']}, answered {s['answered']}, failed {s['failed']}, "
        f"lost {s['lost']}, skipped by cameras {s['skipped_by_cameras']}; {s['throughput_fps']} frames/s; "
        f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms; deadline hits {s['deadline_hits']:.1%}; "
        f"mean budget {s['mean_budget']} {s['budgets']}; mean batch {s['mean_batch']}; retried {s['retried_frames']}")
    for step in s.get("steps", []):
        say(f"   {step['fps_per_camera']:g} fps/camera (offered {step['offered_fps']:g}): {step['throughput_fps']} frames/s, "
            f"mean budget {step['mean_budget']} {step['budgets']}, mean batch {step['mean_batch']}, "
            f"p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms, deadline hits {step['deadline_hits']:.1%}")
    if s.get("fault"):
        say(f"   fault: {'; '.join(s['fault'])}; errors {s['errors']}")
    if s.get("check"):
        say(f"   labels vs local Runtime: {s['check']}")
