"""``edgeprune export``: model + reduction budget -> parity-checked static-shape ONNX artifact."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edgeprune.cli.common import CheckpointOpt, ImgSizeOpt, MODEL_HELP, ModelArgOpt, ThreadsOpt, parse_int_list
from edgeprune.core.console import console, out
from edgeprune.core.progress import rich_status


def export(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Artifact directory to create (model.onnx + manifest.json)."),
    method: str = typer.Option("tome", "--method", "-m", help="none, tome (merging), evit (attention top-k), gsp (graph pruning); segmenters also cluster (Expedite clustering + reconstruction) and pass (token pass). LLaVA folders: visionzip, gsp, qcsp, script (see docs/mllm.md)."),
    keep: Optional[float] = typer.Option(None, "--keep", help="Fraction of patch tokens left after the last reduction point."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="Patch tokens left after the last reduction point."),
    flops: Optional[float] = typer.Option(None, "--flops", help="Target MACs ratio vs the unreduced model."),
    latency: Optional[float] = typer.Option(None, "--latency", help="Target latency ratio, from this machine's calibrated per-block latency (cached)."),
    temporal: Optional[float] = typer.Option(None, "--temporal", help="Segmenters: temporal reuse for video; a refresh graph (every patch) and an update graph recomputing this share of the patches (e.g. 0.4) or this many; --out becomes a temporal artifact for demo/TemporalRuntime."),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="A plan file written by `edgeprune tune` (or TokenPlan.to_dict): bake it in as is; replaces --method and the budget options."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="Engine set: one artifact per MACs ratio, e.g. 1.0,0.75,0.5 (1.0 = unreduced); --out becomes a set folder."),
    points: Optional[str] = typer.Option(None, "--points", help="Blocks that reduce, e.g. 1,4,7 (default for 12 blocks). With --latency: searched when omitted."),
    schedule: str = typer.Option("points", "--schedule", help="points (few large steps) or constant (ToMe's r per block)."),
    prop_attn: Optional[bool] = typer.Option(None, "--prop-attn/--no-prop-attn", help="Proportional attention (log size bias); default on for tome."),
    tile: Optional[str] = typer.Option(None, "--tile", help="Round every reduction point to the engine's tile (prefix tokens included): a token count, or an engine such as openvino-bf16 (32) or tensorrt-fp16 (16); 1 = off, the default (right for ONNX Runtime fp32). See docs/engines.md."),
    engine: Optional[str] = typer.Option(None, "--engine", help="The engine the plan is for (onnxruntime-fp32, openvino-bf16, openvino-int8, tensorrt-fp16, ...): sets the default --tile and where --latency is measured (OpenVINO: each token count compiled at that precision). Default onnxruntime-fp32."),
    prefix_only_last: bool = typer.Option(False, "--prefix-only-last", help="Classifiers whose head reads only CLS/distillation tokens: the last block computes attention and MLP for those alone (exact; fewer MACs)."),
    gsp_alpha: Optional[float] = typer.Option(None, "--gsp-alpha", help="gsp: edge threshold = mean + alpha * std of similarities."),
    option: list[str] = typer.Option([], "--option", help="Reducer option KEY=VALUE (repeatable), e.g. cluster_tau=0.02, cluster_iters=3, cluster_residual=false, pass_signal=update."),
    query_tower: Optional[Path] = typer.Option(None, "--query-tower", help="LLaVA, qcsp/script: the CLIP/SigLIP model folder (same checkpoint as the vision tower) whose text tower turns a question into the graph's query input; exported beside it."),
    crop_tokens: Optional[int] = typer.Option(None, "--crop-tokens", help="LLaVA-NeXT: visual tokens kept per crop (default: --tokens)."),
    crops: int = typer.Option(4, "--crops", min=1, help="LLaVA-NeXT: crops per image besides the base image (the anyres layout of the static input)."),
    checkpoint: Optional[Path] = CheckpointOpt,
    model_arg: list[str] = ModelArgOpt,
    img_size: Optional[int] = ImgSizeOpt,
    batch: int = typer.Option(1, "--batch", min=1, help="Static batch size of the graph."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Symbolic batch axis (token counts stay static); parity checked at batch 1 and 2."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 17)."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Max relative error ONNX vs eager; export fails above it."),
    threads: int = ThreadsOpt,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
) -> None:
    """Export a ViT with a token-reduction plan baked in, as a static-shape ONNX graph checked against PyTorch."""
    from edgeprune.core.extras import require_extra

    require_extra("export", "edgeprune export")
    from edgeprune.core.files import check_target
    from edgeprune.exporting.onnx_export import export as export_artifact
    from edgeprune.families.loading import load_model
    from edgeprune.families.weights import parse_model_args
    from edgeprune import build_plan
    from edgeprune.plan.tiles import plan_tile

    started = time.perf_counter()
    from edgeprune.mllm.llava import MLLM_ONLY_METHODS, looks_like_llava_folder

    if looks_like_llava_folder(model) or method in MLLM_ONLY_METHODS or query_tower is not None or crop_tokens is not None:
        from edgeprune.cli.mllm_export import export_mllm

        others = dict(keep=keep, flops=flops, latency=latency, temporal=temporal, plan=plan_file, budgets=budgets, points=points,
                      prop_attn=prop_attn, gsp_alpha=gsp_alpha, checkpoint=checkpoint, img_size=img_size)
        export_mllm(Path(model), out_dir, method=method, tokens=tokens, query_tower=query_tower, crop_tokens=crop_tokens,
                    crops=crops, option=option, batch=batch, dynamic_batch=dynamic_batch, opset=opset, tolerance=tolerance,
                    force=force, unused={k: v for k, v in others.items() if v is not None}, started=started)
        return
    budget_list = _parse_budget_set(budgets, keep=keep, tokens=tokens, flops=flops, latency=latency)
    if plan_file is not None and (budgets is not None or temporal is not None):
        from edgeprune.core.errors import EdgepruneError

        raise EdgepruneError("--plan exports one plan; it does not combine with --budgets or --temporal")
    if plan_file is not None and not plan_file.is_file():
        from edgeprune.core.errors import EdgepruneError

        raise EdgepruneError(f"plan file '{plan_file}' does not exist")
    if temporal is not None:
        _check_temporal_flags(method, budgets=budgets, keep=keep, tokens=tokens, flops=flops, latency=latency, points=points)
    check_target(out_dir, force)  # before the slow model load
    with console.status("loading model"):
        net, info = load_model(model, checkpoint=checkpoint, model_args=parse_model_args(model_arg), img_size=img_size)
    options = parse_model_args(option, "--option")  # typed and checked by build_plan
    if gsp_alpha is not None:
        options["gsp_alpha"] = gsp_alpha
    if temporal is not None:
        from edgeprune.exporting.temporal import export_temporal

        with console.status("exporting temporal artifact") as status:
            path = export_temporal(net, temporal, out_dir, batch=batch, dynamic_batch=dynamic_batch, opset=opset,
                                   tolerance=tolerance, model_info=info, overwrite=force, progress=rich_status(status))
        from edgeprune.cli.inspect_cmd import print_temporal
        from edgeprune.runtime.temporal import load_temporal

        print_temporal(load_temporal(path, verify=False), f"exported temporal artifact {out_dir} in {time.perf_counter() - started:.1f} s")
        return
    point_list = parse_int_list(points, "--points")
    tile_tokens = plan_tile(tile, engine)
    common = dict(prop_attn=prop_attn, options=options, **({"prefix_only_last": True} if prefix_only_last else {}),
                  **({"tile": tile_tokens} if tile_tokens > 1 else {}))
    if budget_list is not None:
        from edgeprune.cli.inspect_cmd import print_set
        from edgeprune.exporting.engine_set import export_engine_set

        with console.status("exporting engine set") as status:
            engine_set = export_engine_set(
                net, method, budget_list, out_dir, batch=batch, dynamic_batch=dynamic_batch, opset=opset,
                tolerance=tolerance, model_info=info, overwrite=force, progress=rich_status(status),
                points=point_list, schedule=schedule, **common,
            )
        print_set(engine_set, f"exported engine set {out_dir} in {time.perf_counter() - started:.1f} s")
        return
    if plan_file is not None:
        plan = _read_plan(plan_file, net, method=method if method != "tome" else None, keep=keep, tokens=tokens,
                          flops=flops, latency=latency, points=points, gsp_alpha=gsp_alpha, option=option or None,
                          prop_attn=prop_attn, schedule=schedule if schedule != "points" else None,
                          prefix_only_last=prefix_only_last or None, tile=tile, engine=engine)
    elif latency is not None and method != "none":
        plan = _latency_plan(net, method, latency, point_list, schedule, threads, common, engine)
    else:
        budget = dict(keep=keep, tokens=tokens, flops=flops)
        plan = build_plan(net, method, points=point_list, schedule=schedule, **budget, **common)
        if tokens is not None and plan.final_tokens != tokens:
            console.print(f"[yellow]note: {tokens} tokens do not form a center grid; using {plan.final_tokens}[/]", highlight=False)
    with console.status("exporting") as status:
        artifact = export_artifact(
            net, plan, out_dir, batch=batch, dynamic_batch=dynamic_batch, opset=opset,
            tolerance=tolerance, model_info=info, overwrite=force, progress=rich_status(status),
        )
    _print_summary(artifact.path, artifact.manifest, time.perf_counter() - started)


def _read_plan(path: Path, net, **others) -> "TokenPlan":  # noqa: F821 - lazy import below
    """A plan file for this very model; any other planning flag given with it is a conflict."""
    from edgeprune.core.errors import EdgepruneError
    from edgeprune.core.files import read_json
    from edgeprune.families import adapter_for
    from edgeprune.plan.token_plan import TokenPlan

    given = [f"--{k.replace('_', '-')}" for k, v in others.items() if v is not None]
    if given:
        raise EdgepruneError(f"--plan carries the whole plan; drop {', '.join(given)}")
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise EdgepruneError(f"plan file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EdgepruneError(f"cannot read plan file '{path}': {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise EdgepruneError(f"plan file '{path}' is not a plan (expected a JSON object)")
    plan = TokenPlan.from_dict(data)
    spec = adapter_for(net).spec
    if plan.spec != spec:
        diff = [f"{k} {getattr(plan.spec, k)!r} vs {getattr(spec, k)!r}" for k in spec.to_dict() if getattr(plan.spec, k) != getattr(spec, k)]
        raise EdgepruneError(f"plan file '{path}' was made for another model configuration ({'; '.join(diff[:3])})")
    return plan


def _check_temporal_flags(method: str, **others: Optional[object]) -> None:
    from edgeprune.core.errors import EdgepruneError

    given = [f"--{k}" for k, v in others.items() if v is not None] + (["--method"] if method not in ("tome", "none") else [])
    if given:
        raise EdgepruneError(f"--temporal exports the unreduced model with temporal reuse; drop {', '.join(given)}")


def _parse_budget_set(budgets: Optional[str], **single: Optional[float]) -> Optional[list[float]]:
    if budgets is None:
        return None
    from edgeprune.artifacts.engine_set import parse_budgets
    from edgeprune.core.errors import EdgepruneError

    given = [f"--{k}" for k, v in single.items() if v is not None]
    if given:
        raise EdgepruneError(f"--budgets replaces the single budget options; drop {', '.join(given)}")
    return parse_budgets(budgets)


def _latency_plan(net, method, latency, points, schedule, threads, common, engine=None):
    from edgeprune.core.progress import messages
    from edgeprune.exporting.block_latency import calibrate
    from edgeprune import build_plan
    from edgeprune.families import spec_of
    from edgeprune.plan.latency import search_plan, with_prediction

    with console.status("calibrating per-block latency (cached after the first run)") as status:
        model = calibrate(net, method, threads=threads, progress=messages(lambda msg: _status_or_warn(status, msg)),
                          **({"engine": engine} if engine else {}))
    if points is None and schedule == "points":
        return search_plan(spec_of(net), method, latency, model, **common)
    plan = build_plan(net, method, latency=latency, points=points, schedule=schedule, latency_model=model.ratio, **common)
    return with_prediction(plan, model)


def _status_or_warn(status, message: str) -> None:
    if message.startswith("warning"):
        console.print(f"[yellow]{message}[/]", highlight=False)
    else:
        status.update(message)


def _print_summary(path: Path, manifest: dict, seconds: float) -> None:
    plan = manifest["plan"]
    table = Table(title=f"exported {manifest['model'].get('name', manifest['model'].get('path', ''))} ({manifest['method']})", show_header=False)
    table.add_row("artifact", str(path / manifest["onnx"]["file"]))
    table.add_row("tokens", f"{plan['spec']['num_patches']} -> {plan['keep'][-1]} patch tokens (+{plan['spec']['num_prefix']} protected)")
    table.add_row("reduction points", ", ".join(map(str, plan["reduction_points"])) or "-")
    if plan.get("prefix_only_last"):
        table.add_row("last block", "CLS/prefix tokens only (exact)")
    table.add_row("MACs", f"{manifest['flops']['macs'] / 1e9:.3f} G ({manifest['flops']['macs_ratio']:.3f} of unreduced)")
    table.add_row("parity", f"max relative error {manifest['parity']['max']:.2e} (tolerance {manifest['parity']['tolerance']:.0e})")
    lint = manifest.get("trt_lint") or {}
    if lint:
        verdict = "clean" if not lint["errors"] and not lint["warnings"] else \
            f"{lint['errors']} errors, {lint['warnings']} warnings ({', '.join(lint['rules'])}); see `edgeprune lint`"
        table.add_row("TensorRT lint", f"{verdict} (TensorRT {lint['trt']})")
    table.add_row("time", f"{seconds:.1f} s")
    out.print(table)
