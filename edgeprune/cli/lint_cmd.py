"""``edgeprune lint PATH``: TensorRT-compatibility findings for every graph of an artifact, set or temporal artifact."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from edgeprune.core.console import out


def graphs_of(path: Path) -> list[Path]:
    """The ONNX files behind an artifact folder, an engine set, a temporal artifact or a bare .onnx."""
    from edgeprune.artifacts.artifact import load_artifact
    from edgeprune.artifacts.engine_set import is_engine_set, load_engine_set
    from edgeprune.core.errors import EdgepruneError
    from edgeprune.runtime.temporal import is_temporal, load_temporal

    if path.is_file() and path.suffix == ".onnx":
        return [path]
    if is_temporal(path):
        temporal = load_temporal(path, verify=False)
        return [temporal.onnx_path(g) for g in temporal.manifest["graphs"]]
    if is_engine_set(path):
        return [m.artifact.onnx_path for m in load_engine_set(path, verify=False).members]
    from edgeprune.mllm.runtime import is_visual_artifact, read_visual_manifest

    if is_visual_artifact(path):
        manifest = read_visual_manifest(path)  # a multimodal artifact: the vision graph and its query tower
        query = [path / manifest["query"]["folder"] / "query.onnx"] if manifest.get("query") else []
        return [path / manifest["onnx"]["file"], *query]
    if path.is_dir():
        return [load_artifact(path, verify=False).onnx_path]
    raise EdgepruneError(f"{path}: not an artifact folder, engine set, temporal artifact or .onnx file")


def lint(
    path: Path = typer.Argument(..., help="Artifact folder, engine set, temporal artifact or .onnx file."),
    trt: str = typer.Option("10.0", "--trt", help="TensorRT version to check against (rules have version ranges), e.g. 8.6, 10.0, 11.0."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
) -> None:
    """Check graphs for TensorRT compatibility without TensorRT: one line per finding with the rule and the fix.

    Exit code 0 when no rule reports an error (warnings allowed), 1 when one does, 2 on unreadable input.
    """
    from edgeprune.backends.trt_lint import lint_model, summarize
    from edgeprune.backends.graph import load_graph

    report = {}
    for graph in graphs_of(path):
        report[str(graph)] = lint_model(load_graph(graph), trt)
    errors = sum(summarize(f)["errors"] for f in report.values())
    if as_json:
        out.print_json(json.dumps({"trt": trt, "graphs": {g: [f.to_dict() for f in fs] for g, fs in report.items()}}))
    else:
        for graph, findings in report.items():
            s = summarize(findings)
            title = f"{graph}: {s['errors']} errors, {s['warnings']} warnings (TensorRT {trt})"
            if not findings:
                out.print(f"{graph}: clean (TensorRT {trt})", highlight=False)
                continue
            table = Table(title=title, title_justify="left")
            for col in ("severity", "rule", "where", "message", "fix"):
                table.add_column(col, overflow="fold")
            for f in findings:
                table.add_row(f"[red]{f.severity}[/]" if f.severity == "error" else f"[yellow]{f.severity}[/]",
                              f.rule, f.where, f.message, f.fix)
            out.print(table)
    raise typer.Exit(1 if errors else 0)

