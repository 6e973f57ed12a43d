"""``edgeprune inspect``: what an artifact (or an engine set) contains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from edgeprune.core.console import out


def inspect(
    artifact_dir: Path = typer.Argument(..., help="Artifact directory written by edgeprune export, an engine set, a temporal artifact or an engine folder (edgeprune build)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON instead of tables."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the ONNX file's sha256 against the manifest."),
) -> None:
    """Show an artifact's manifest, its plan block by block, and the graph's op counts."""
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.artifacts.engine_set import is_engine_set, load_engine_set
    from edgeprune.plan.macs import block_macs
    from edgeprune.backends.graph import load_graph, op_counts
    from edgeprune.runtime.temporal import is_temporal, load_temporal

    from edgeprune.engines.build import ENGINES_FILE, load_engines
    from edgeprune.engines.cache import ENGINE_MANIFEST

    if (artifact_dir / ENGINE_MANIFEST).is_file() or (artifact_dir / ENGINES_FILE).is_file():
        from edgeprune.cli.build_cmd import print_engines

        engines = load_engines(artifact_dir, verify=verify)
        if as_json:
            out.print_json(json.dumps([e.manifest for e in engines]))
        else:
            print_engines(engines, f"{artifact_dir} ({'verified' if verify else 'not verified'})")
            for e in engines:
                m = e.manifest
                versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
                out.print(f"{e.name}: from {m['source']['artifact']} (onnx {m['source']['onnx_sha256'][:12]}), "
                          f"graph {m['graph']['precision']}, settings {json.dumps(m['settings'])}, {versions}", highlight=False)
        return
    # Folders that hold more than one graph: a temporal artifact, an engine set.
    for is_kind, load, show in ((is_temporal, load_temporal, print_temporal), (is_engine_set, load_engine_set, print_set)):
        if is_kind(artifact_dir):
            bundle = load(artifact_dir, verify=verify)
            if as_json:
                out.print_json(json.dumps(bundle.manifest))
            else:
                show(bundle, f"{bundle.path} ({'verified' if verify else 'not verified'})")
            return
    from edgeprune.mllm.runtime import is_visual_artifact

    if is_visual_artifact(artifact_dir):
        _show_visual(artifact_dir, as_json, verify)
        return
    artifact = load_artifact(artifact_dir, verify=verify)
    m = artifact.manifest
    if as_json:
        out.print_json(json.dumps(m))
        return
    info = Table(title=f"{artifact.path}", show_header=False)
    model = m["model"]
    info.add_row("model", f"{model.get('name', model.get('path', '?'))} [{model.get('family')}]")
    info.add_row("method", m["method"] + (" + proportional attention" if m["plan"]["prop_attn"] else ""))
    info.add_row("inputs", ", ".join(f"{i['name']} {i['shape']}" for i in m["inputs"]))
    info.add_row("outputs", ", ".join(f"{o['name']} {o.get('shape')}" for o in m["outputs"]))
    info.add_row("MACs", f"{m['flops']['macs'] / 1e9:.3f} G ({m['flops']['macs_ratio']:.3f} of unreduced)")
    info.add_row("target", json.dumps(m["plan"].get("target", {})))
    info.add_row("parity", f"max relative error {m['parity']['max']:.2e} at batches {', '.join(m['parity']['batches'])}")
    info.add_row("onnx", f"opset {m['onnx']['opset']}, sha256 {m['onnx']['sha256'][:16]}… ({'verified' if verify else 'not verified'})")
    info.add_row("versions", ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()))
    out.print(info)

    plan = artifact.plan
    blocks = Table(title="plan per block")
    for col in ("block", "tokens in", "tokens out", "reduces", "GMACs"):
        blocks.add_column(col, justify="right")
    p = plan.spec.num_prefix
    for i in range(plan.spec.depth):
        n_in, n_out = plan.tokens_in(i), plan.keep[i]
        macs = block_macs(plan.spec, plan.method, n_in, n_out)
        blocks.add_row(str(i), str(p + n_in), str(p + n_out), "yes" if n_out < n_in else "", f"{macs / 1e9:.3f}")
    out.print(blocks)

    ops = Table(title="graph ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in op_counts(load_graph(artifact.onnx_path)).items():
        ops.add_row(op, str(count))
    out.print(ops)


def print_set(engine_set, title: str) -> None:
    """Members (budget, tokens, MACs, parity) and, when calibrated, their latencies and where measured."""
    from edgeprune.artifacts.engine_set import calibration_matches

    cal = engine_set.calibration or {}
    timed = cal.get("members", {})
    table = Table(title=title)
    columns = ["member", "budget", "tokens", "MACs ratio", "parity"] + (["p50 ms", "p90 ms", "p99 ms"] if timed else [])
    for col in columns:
        table.add_column(col, justify="left" if col == "member" else "right")
    for m in engine_set.members:
        parity = m.artifact.manifest["parity"]["max"]
        cells = [m.path, f"{m.budget:g}", str(m.final_tokens), f"{m.macs_ratio:.3f}", f"{parity:.1e}"]
        if timed:
            t = timed.get(m.path, {})
            cells += [f"{t[k]:.3f}" if k in t else "-" for k in ("p50_ms", "p90_ms", "p99_ms")]
        table.add_row(*cells)
    out.print(table)
    if cal:
        ok, why = calibration_matches(engine_set)
        where = "this machine" if ok else f"another machine: {why}"
        out.print(f"calibrated {cal.get('measured_at')} on {where}; {cal.get('rounds')} rounds, "
                  f"{cal.get('threads')} threads, {cal.get('provider')}, batch {cal.get('batch')}", highlight=False)
    else:
        out.print("not calibrated (edgeprune calibrate SET)", highlight=False)


def print_temporal(temporal, title: str) -> None:
    """A temporal artifact: its two graphs, their MACs and parity, and the cache it carries."""
    m = temporal.manifest
    model = m["model"]
    info = Table(title=title, show_header=False)
    info.add_row("model", f"{model.get('name', model.get('path', '?'))} [{model.get('family')}]")
    info.add_row("patches", f"{m['patches']} ({m['grid'][0]} x {m['grid'][1]}) + {m['prefix']} prefix tokens")
    info.add_row("update", f"recomputes {m['recompute']} patches ({m['recompute_share']:.0%}); the rest come from the cache")
    shapes = {n: s for n, s in m["inputs"].items() if n.startswith("cache_")}
    floats = sum(int(np.prod([d if isinstance(d, int) else 1 for d in s])) for s in shapes.values())
    info.add_row("cache", f"{len(shapes)} tensors, {floats * 4 / 1e6:.2f} MB per stream")
    out.print(info)
    table = Table(title="graphs")
    for col in ("graph", "patches", "MACs", "vs refresh", "parity (max rel. err)", "sha256"):
        table.add_column(col)
    full = m["graphs"]["refresh"]["macs"]
    for name, g in m["graphs"].items():
        table.add_row(name, str(g["recompute"]), f"{g['macs'] / 1e9:.3f} G", f"{g['macs'] / full:.3f}",
                      f"{g['parity']['max']:.2e}", g["sha256"][:12])
    out.print(table)


def _show_visual(folder: Path, as_json: bool, verify: bool) -> None:
    """A multimodal vision artifact: its contract, parity and lint (and the ONNX checksum)."""
    from edgeprune.core.files import sha256_file
    from edgeprune.cli.mllm_export import print_visual_summary
    from edgeprune.core.errors import EdgepruneError
    from edgeprune.mllm.runtime import read_visual_manifest

    manifest = read_visual_manifest(folder)
    onnx_path = folder / manifest["onnx"]["file"]
    if not onnx_path.is_file():
        raise EdgepruneError(f"{folder}: {onnx_path.name} is missing")
    if verify and sha256_file(onnx_path) != manifest["onnx"]["sha256"]:
        raise EdgepruneError(f"{onnx_path}: sha256 differs from the manifest (modified or corrupt)")
    if as_json:
        out.print_json(json.dumps(manifest))
    else:
        print_visual_summary(folder, manifest.get("export_seconds", 0.0))
