"""Run an exported multimodal front-end without PyTorch: ONNX Runtime for the vision graph and, for
the query-conditioned methods, the text tower + tokenizer exported beside it.

``VisualEncoder(folder).encode(pixels, question=...)`` returns the output contract as NumPy arrays
(``visual_tokens``, ``patch_index``, ``grid_position``, ``token_sizes``); :mod:`edgeprune.mllm.splice`
turns them into an LLM's ``inputs_embeds``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.files import read_json

KIND = "mllm-visual"


def is_visual_artifact(folder: Union[str, os.PathLike]) -> bool:
    """True when ``folder`` holds a multimodal vision artifact (manifest kind ``mllm-visual``)."""
    try:
        return read_json(Path(folder) / "manifest.json").get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def read_visual_manifest(folder: Union[str, os.PathLike]) -> dict[str, Any]:
    """The manifest of an ``mllm-visual`` artifact, or one error line. Read here rather than through
    :func:`edgeprune.artifacts.artifact.read_folder_json`, which imports PyTorch: this path runs without it."""
    path = Path(folder)
    file = path / "manifest.json"
    if not file.is_file():
        raise EdgepruneError(f"'{path}' is not an edgeprune artifact (no manifest.json)")
    try:
        manifest = read_json(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgepruneError(f"cannot read '{file}': {type(exc).__name__}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise EdgepruneError(f"'{path}' is not a multimodal vision artifact (export a LLaVA folder to make one)")
    return manifest


class VisualEncoder:
    """The vision graph (and query tower) of one artifact folder, ready to run."""

    def __init__(self, folder: Union[str, os.PathLike], threads: Optional[int] = None) -> None:
        from edgeprune.backends.ort import OrtRunner

        self.folder = Path(folder)
        self.manifest = read_visual_manifest(self.folder)
        self.inputs = {item["name"]: item["shape"] for item in self.manifest["inputs"]}
        kwargs = {} if threads is None else {"threads": threads}
        self.runner = OrtRunner(self.folder / self.manifest["onnx"]["file"], **kwargs)
        self.runner.activate()
        self.query_encoder = None
        query = self.manifest.get("query")
        if query:
            from edgeprune.mllm.query import QueryEncoder

            self.query_encoder = QueryEncoder(self.folder / query["folder"])

    @property
    def needs_query(self) -> bool:
        return "query" in self.inputs

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> "VisualEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, pixels: np.ndarray, question: Union[str, Sequence[str], None] = None,
               query: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """Pixels [B, ...] (as the manifest says) and a question per image, or a ready ``query``
        [B, D_q] -> the four outputs. Wrong shapes are one error line, not an ONNX Runtime trace."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        expected = self.inputs["pixel_values"]
        _check_shape("pixel_values", pixels.shape, expected)
        feed = {"pixel_values": pixels}
        if self.needs_query:
            if query is None:
                if question is None:
                    raise EdgepruneError(f"this graph ({self.manifest['method']}) is conditioned on a question: pass question= or query=")
                if self.query_encoder is None:
                    raise EdgepruneError("this artifact has no query tower: pass query= vectors")
                questions = [question] if isinstance(question, str) else list(question)
                query = self.query_encoder.encode(questions)
            query = np.ascontiguousarray(query, dtype=np.float32)
            if query.ndim == 1:
                query = query[None]
            if query.shape[0] == 1 and pixels.shape[0] > 1:
                query = np.repeat(query, pixels.shape[0], axis=0)
            _check_shape("query", query.shape, [pixels.shape[0], self.inputs["query"][1]])
            feed["query"] = query
        elif question is not None or query is not None:
            raise EdgepruneError(f"method {self.manifest['method']} does not take a question")
        return self.runner.infer(feed)


def _check_shape(name: str, got: tuple[int, ...], expected: Sequence[Any]) -> None:
    ok = len(got) == len(expected) and all(isinstance(e, str) or e == g for g, e in zip(got, expected))
    if not ok:
        shown = ", ".join(str(e) for e in expected)
        what = "wide" if name == "query" and len(got) == 2 else "shaped"
        detail = f"{got[-1]} {what}" if what == "wide" else f"{list(got)}"
        raise EdgepruneError(f"{name} is {detail}; this graph takes [{shown}]")
