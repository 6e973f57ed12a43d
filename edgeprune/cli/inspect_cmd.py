"""``edgeprune inspect``: what an artifact contains."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from edgeprune.cli.common import out


def inspect(
    artifact_dir: Path = typer.Argument(..., help="Artifact directory written by edgeprune export."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON instead of tables."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the ONNX file's sha256 against the manifest."),
) -> None:
    """Show an artifact's manifest, its plan block by block, and the graph's op counts."""
    from edgeprune.artifact import load_artifact
    from edgeprune.flops import block_macs
    from edgeprune.graph import load_graph, op_counts

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
