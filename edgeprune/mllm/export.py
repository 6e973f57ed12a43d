"""Export a LLaVA front-end with visual-token selection to a static ONNX artifact, checked against eager.

The artifact folder holds ``model.onnx`` (the vision graph), ``manifest.json`` (kind
``mllm-visual``) and, for the query-conditioned methods, ``query/`` (the text tower ONNX and its
tokenizer, see :mod:`edgeprune.mllm.query`), so the whole path runs without PyTorch.

Parity: on fresh random pixels and queries at each batch size, ``visual_tokens`` and
``token_sizes`` must agree within the tolerance and ``patch_index`` / ``grid_position`` must be
identical. A mismatch is re-checked on fresh inputs (a near-tie between two tokens' scores can flip on
one input, see :func:`edgeprune.exporting.onnx_export.check_parity`) and fails if it repeats.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from edgeprune.artifacts.artifact import ONNX_FILE
from edgeprune.core.files import atomic_directory, read_json, sha256_file, write_json_atomic
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, say
from edgeprune.exporting.onnx_export import DEFAULT_OPSET, DEFAULT_TOLERANCE, check_parity, trace_to_onnx, trt_lint_report
from edgeprune.backends.feeds import fresh_seed
from edgeprune.core.machine import library_versions
from edgeprune.backends.graph import load_graph, op_counts, safety_problems
from edgeprune.mllm.graph import VisualTokenGraph
from edgeprune.mllm.llava import LlavaParts

KIND = "mllm-visual"
QUERY_DIR = "query"
EXACT_OUTPUTS = ("patch_index", "grid_position")


def input_shapes(graph: VisualTokenGraph, batch: int, pieces: int = 1) -> dict[str, list[int]]:
    spec = graph.parts.tower.spec
    image = [spec.in_chans, *spec.img_size]
    pixels = [batch, pieces, *image] if graph.parts.family == "llava_next" else [batch, *image]
    shapes = {"pixel_values": pixels}
    if graph.needs_query:
        shapes["query"] = [batch, graph.query_dim]
    return shapes


def fresh_inputs(graph: VisualTokenGraph, batch: int, pieces: int = 1) -> tuple[torch.Tensor, ...]:
    """Random pixels and a random unit query, from an unpredictable (reported) seed."""
    gen = torch.Generator().manual_seed(fresh_seed())
    out = []
    for name, shape in input_shapes(graph, batch, pieces).items():
        t = torch.randn(*shape, generator=gen)
        out.append(t / t.norm(dim=-1, keepdim=True) if name == "query" else t)
    return tuple(out)


def check_visual_parity(graph: VisualTokenGraph, onnx_path: Path, batches: list[int], tolerance: float,
                        pieces: int = 1) -> dict[str, Any]:
    """ONNX Runtime vs eager on fresh inputs at each batch size, indices exact; raises ParityError."""
    shape = input_shapes(graph, 1, pieces)["pixel_values"]
    report = check_parity(graph, onnx_path, shape, batches, tolerance, make_inputs=lambda b: fresh_inputs(graph, b, pieces),
                          input_names=graph.input_names, exact=EXACT_OUTPUTS)
    report["indices_identical"] = True  # check_parity raised otherwise
    return report


def export_visual(parts: LlavaParts, method: str, out_dir: str | os.PathLike, *, tokens: Optional[int] = None,
                  crop_tokens: Optional[int] = None, pieces: int = 1, options: Optional[dict] = None,
                  query_folder: Optional[str | os.PathLike] = None, projection: Optional[torch.nn.Module] = None, batch: int = 1, dynamic_batch: bool = False,
                  opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE, model_info: Optional[dict] = None,
                  overwrite: bool = False, progress: Optional[Progress] = None) -> Path:
    """Export ``parts``' vision front-end under ``method`` to ``out_dir``; returns the folder.

    ``query_folder`` (a CLIP/SigLIP ``save_pretrained`` folder of the same checkpoint as the tower)
    provides the text tower, exported beside the vision graph, and CLIP's ``visual_projection``.
    Without it a query-conditioned graph still exports (the caller computes query vectors), given
    ``projection`` for a CLIP tower.
    Nothing is left at ``out_dir`` unless every step succeeds.
    """
    if batch < 1:
        raise EdgepruneError(f"--batch must be >= 1, got {batch}")
    query_model = None
    if query_folder is not None:
        from edgeprune.mllm.query import load_query_model

        say(progress, "loading the query tower")
        query_model = load_query_model(query_folder)
    if query_model is not None and query_model.visual_projection is not None:
        projection = query_model.visual_projection
        width = parts.tower.spec.embed_dim
        if projection.in_features != width:
            raise EdgepruneError(f"the query tower's CLIP vision width is {projection.in_features} but the LLaVA tower's is "
                                 f"{width}: use the CLIP checkpoint the LLaVA tower comes from")
    graph = VisualTokenGraph(parts, method, tokens, options, projection=projection, crop_tokens=crop_tokens).eval()
    if query_model is not None and query_model.query_dim != graph.query_dim:
        raise EdgepruneError(f"the query tower's embeddings are {query_model.query_dim} wide but the vision tower's joint "
                             f"space is {graph.query_dim}: use the text tower of the same CLIP/SigLIP checkpoint")
    started = time.perf_counter()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        onnx_path = tmp / ONNX_FILE
        say(progress, "tracing and converting to ONNX")
        trace_batch = 2 if dynamic_batch else batch
        dims = ({0: torch.export.Dim("batch", min=1, max=1024)},) * len(graph.input_names) if dynamic_batch else None
        trace_to_onnx(graph, fresh_inputs(graph, trace_batch, pieces), onnx_path, input_names=graph.input_names,
                      output_names=list(graph.output_names), dynamic_shapes=dims, opset=opset)
        onnx_graph = load_graph(onnx_path)
        problems = safety_problems(onnx_graph)
        if problems:
            raise EdgepruneError(f"exported graph breaks edgeprune's export rules: {problems[0]}")
        say(progress, "checking ONNX Runtime against eager PyTorch")
        parity = check_visual_parity(graph, onnx_path, [1, 2] if dynamic_batch else [batch], tolerance, pieces)
        query_info = None
        if query_model is not None:
            from edgeprune.mllm.query import export_query_tower

            say(progress, "exporting the query tower")
            export_query_tower(query_folder, tmp / QUERY_DIR, tolerance=tolerance)
            query_info = read_json(tmp / QUERY_DIR / "manifest.json")
        shapes = input_shapes(graph, "batch" if dynamic_batch else batch, pieces)  # type: ignore[arg-type]
        k = graph.num_outputs(pieces)
        manifest = {
            "kind": KIND,
            "format": 1,
            "model": {**parts.describe(), **(model_info or {})},
            "method": method,
            "tokens": graph.tokens,
            **({"crop_tokens": graph.crop_tokens, "pieces": pieces} if parts.family == "llava_next" else {}),
            "visual_tokens": k,
            "patch_tokens": parts.num_patches * pieces,
            "options": graph.options,
            "inputs": [{"name": n, "shape": s, "dtype": "float32"} for n, s in shapes.items()],
            "outputs": [{"name": n, "shape": s} for n, s in zip(graph.output_names, _output_shapes(shapes["pixel_values"][0], k, parts.llm_dim))],
            "query": query_info and {"folder": QUERY_DIR, "query_dim": query_info["query_dim"],
                                     "max_length": query_info["max_length"], "family": query_info["family"]},
            "onnx": {"file": ONNX_FILE, "opset": opset, "sha256": sha256_file(onnx_path), "ops": op_counts(onnx_graph)},
            "parity": parity,
            "trt_lint": trt_lint_report(onnx_graph),
            "versions": library_versions(),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    return Path(out_dir)


def _output_shapes(batch: Any, k: int, width: int) -> list[list[Any]]:
    return [[batch, k, width], [batch, k], [batch, k, 2], [batch, k]]
