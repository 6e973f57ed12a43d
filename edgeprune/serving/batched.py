"""Batch-N exports of an engine set's members, for Triton's dynamic batcher.

An engine set's members are static batch-1 graphs. A server that batches requests needs the same
plans at other batch sizes: every member is re-exported from the model recorded in the set's manifest
(its checkpoint checked against the recorded sha256, so a changed model is refused, not silently
served), with static shapes per batch size (1, 2, 4, ... up to ``max_batch``), parity-checked against
eager PyTorch at that batch like any export, then timed here so a deadline policy can predict a
batch's latency. The result is cached under the user cache, keyed by the members' ONNX hashes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, say

BATCHED_FILE = "batched.json"
BATCHED_FORMAT = 1


def batch_sizes(max_batch: int) -> list[int]:
    """Powers of two below ``max_batch``, then ``max_batch``: a batch of k runs the smallest size >= k."""
    if max_batch < 1:
        raise EdgepruneError(f"--max-batch must be >= 1, got {max_batch}")
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return sizes + [max_batch]


def cache_root() -> Path:
    from edgeprune.core.cache import cache_dir

    return cache_dir("serve")


def model_from_manifest(info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Reload the model an artifact was exported from, refusing one whose weights changed since."""
    from edgeprune.core.files import sha256_file
    from edgeprune.families.loading import load_model

    source = info.get("source")
    if source in ("edgeprune-segmenter", "huggingface"):
        target, kwargs = str(info.get("path", "")), {}
    elif source == "timm":
        target = str(info.get("name", ""))
        kwargs = {"checkpoint": info.get("checkpoint"), "model_args": info.get("model_args") or {}}
        if "checkpoint" not in info:
            raise EdgepruneError(f"timm model {target} was exported with random weights; batch-N exports would not "
                                 "match its members: export the set from a checkpoint")
    else:
        raise EdgepruneError(f"cannot re-export a model recorded as {source!r}: serve a set exported from a segmenter "
                             "folder, a timm model with --checkpoint or a Hugging Face folder")
    if not target or (source != "timm" and not Path(target).exists()):
        raise EdgepruneError(f"the set's model {target or '(none)'} is not here; batch-N exports need it")
    recorded = info.get("checkpoint_sha256")
    weights = Path(info["checkpoint"]) if source == "timm" else Path(target) / "model.safetensors"
    if recorded and weights.is_file() and sha256_file(weights) != recorded:
        raise EdgepruneError(f"{weights} changed since the engine set was exported (sha256 differs); re-export the set")
    return load_model(target, **kwargs)


@dataclass(frozen=True)
class BatchedMember:
    """One budget at one batch size: its ONNX and calibrated latency."""

    name: str  # the engine set member, e.g. b0.50
    budget: float
    batch: int
    onnx: Path
    p50_ms: float
    p95_ms: float


def _key(engine_set: Any, sizes: Sequence[int], threads: int, engine: Any) -> str:
    from edgeprune.core.version import __version__
    from edgeprune.core.machine import machine_fingerprint

    # ONNX Runtime's CPU provider keeps the key it always had, so existing caches stay valid
    timed_on = {} if engine.key == "onnxruntime:cpu" else {"engine": engine.key}
    digest = hashlib.sha256(json.dumps({"v": __version__, "sizes": list(sizes), "threads": threads, **timed_on,
                                        "machine": machine_fingerprint(),
                                        "members": [m.onnx_sha256 for m in engine_set.members]}).encode())
    return digest.hexdigest()[:16]


def load_batched(folder: Path) -> list[BatchedMember]:
    data = json.loads((folder / BATCHED_FILE).read_text())
    return [BatchedMember(e["name"], float(e["budget"]), int(e["batch"]), folder / e["onnx"], float(e["p50_ms"]),
                          float(e["p95_ms"])) for e in data["members"]]


def prepare_batched(engine_set: Any, max_batch: int, *, threads: int = 2, rounds: int = 20,
                    progress: Optional[Progress] = None, root: Optional[Path] = None,
                    engine: Any = None) -> list[BatchedMember]:
    """Batch-N members for every budget and batch size (batch 1 is the set's own member), calibrated on
    ``engine`` (an :class:`edgeprune.backends.runners.EngineChoice`; default ONNX Runtime's CPU provider);
    made on first use and cached, reused afterwards."""
    from edgeprune.backends.runners import EngineChoice
    from edgeprune.core.files import atomic_directory, write_json_atomic
    from edgeprune.measure.bench import benchmark
    from edgeprune.measure.calibrate import latency_stats

    engine = engine or EngineChoice("cpu")
    sizes = batch_sizes(max_batch)
    folder = (root or cache_root()) / f"{Path(engine_set.path).resolve().name}-{_key(engine_set, sizes, threads, engine)}"
    if (folder / BATCHED_FILE).is_file():
        return load_batched(folder)
    members = sorted(engine_set.members, key=lambda m: -m.budget)
    net = None
    if any(n > 1 for n in sizes):
        from edgeprune.core.extras import require_extra

        require_extra("export", f"serving at --max-batch {max_batch} (first use exports every budget at batch sizes > 1; --max-batch 1 does not)")
        say(progress, f"exporting every budget at batch sizes {', '.join(map(str, sizes[1:]))} (first use; cached in {folder})")
        net, _info = model_from_manifest(members[0].artifact.manifest["model"])
    shutil.rmtree(folder, ignore_errors=True)  # a half-made folder of an interrupted first run
    folder.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    with atomic_directory(folder) as tmp:
        artifacts: dict[tuple[str, int], Any] = {}
        for member in members:
            for n in sizes:
                if n == 1 and member.artifact.input_shape()[0] == 1:
                    artifacts[member.path, n] = member.artifact
                    continue
                from edgeprune.exporting.onnx_export import export  # the export extra, checked above

                say(progress, f"  {member.path} batch {n}: export + parity check")
                artifacts[member.path, n] = export(net, member.artifact.plan, tmp / f"{member.path}-n{n}", batch=n,
                                                   model_info=member.artifact.manifest["model"])
        for n in sizes:
            say(progress, f"  calibrating batch {n} ({rounds} interleaved rounds)")
            group = [artifacts[m.path, n] for m in members]
            result = benchmark(group, batch=n, rounds=rounds, warmup=3, threads=threads, provider=engine,
                               spinning=False)
            for member, row in zip(members, result.rows):
                stats = latency_stats(row.samples_ms)
                artifact = artifacts[member.path, n]
                onnx = artifact.onnx_path
                if artifact is member.artifact:  # the set's own batch-1 member: copy it in
                    (tmp / f"{member.path}-n1").mkdir()
                    onnx = Path(shutil.copy2(onnx, tmp / f"{member.path}-n1" / onnx.name))
                entries.append({"name": member.path, "budget": member.budget, "batch": n,
                                "onnx": str(onnx.relative_to(tmp)), "p50_ms": stats["p50_ms"],
                                "p95_ms": stats["p95_ms"]})
        write_json_atomic(tmp / BATCHED_FILE, {"format": BATCHED_FORMAT, "set": str(Path(engine_set.path).resolve()),
                                               "sizes": sizes, "threads": threads, "engine": engine.key,
                                               "members": entries})
    return load_batched(folder)


__all__ = ["BatchedMember", "batch_sizes", "load_batched", "model_from_manifest", "prepare_batched"]
