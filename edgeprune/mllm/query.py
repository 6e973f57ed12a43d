"""Query vectors for query-conditioned token pruning (Script-style), from a CLIP/SigLIP text tower.

The vision graph takes the question as ``query [B, D_q]``: the text tower's embedding (with its
projection) of the question. Here: load the text tower (:func:`load_query_model`), export it to its own
ONNX with the tokenizer beside it (:func:`export_query_tower`), and run that without PyTorch
(:class:`QueryEncoder`); :func:`query_vector` is the same computation in eager PyTorch.

A question longer than the text tower's context is split into segments that each fit it; the query is
the mean of the L2-normalised segment embeddings, so its dot product with a visual feature is the mean
of the per-segment relevances (Script's rule for long prompts).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from edgeprune.core.errors import EdgepruneError, first_line
from edgeprune.core.files import read_json

if TYPE_CHECKING:  # torch is only needed to load and export, never to encode with ONNX Runtime
    import torch
    from torch import nn

QUERY_ONNX = "query.onnx"
TOKENIZER_DIR = "tokenizer"
INPUT_NAME = "input_ids"
OUTPUT_NAME = "text_embeds"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "spiece.model")
MAX_BATCH = 1024  # the exported batch axis' upper bound; encode runs more segments in chunks of this
# config.json's model_type / architectures -> the transformers class that holds the text tower
_TYPES = {"clip": "CLIPModel", "clip_text_model": "CLIPTextModelWithProjection",
          "siglip": "SiglipModel", "siglip_text_model": "SiglipTextModel"}
_ARCHS = {"CLIPModel", "CLIPTextModelWithProjection", "SiglipModel", "SiglipTextModel"}


@dataclass
class QueryModel:
    """A text tower whose ``text(input_ids [B, L])`` is the query embedding ``[B, query_dim]``."""

    text: "nn.Module"
    visual_projection: Optional["nn.Linear"]  # CLIPModel's: puts patch features into the joint space
    family: str  # "clip" | "siglip"
    query_dim: int
    max_length: int  # the text tower's max_position_embeddings
    folder: Path
    # CLIP pools the hidden state at the first token equal to this (2: legacy configs, at the highest
    # token id); None for SigLIP, which pools the last position.
    eos_token_id: Optional[int] = None
    vocab_size: int = 0


def load_query_model(folder: Union[str, Path]) -> QueryModel:
    """Load the text tower of a CLIP/SigLIP ``save_pretrained`` folder, offline, float32, eval mode."""
    from edgeprune.families.hf_loading import _one_line, _quiet_transformers, _read_json_object

    path = Path(folder)
    if not (path / "config.json").is_file():
        what = "has no config.json" if path.is_dir() else "does not exist"
        raise EdgepruneError(f"model folder '{path}' {what} (expected a CLIP/SigLIP save_pretrained folder)")
    cfg = _read_json_object(path / "config.json", "a model config")
    model_type, archs = cfg.get("model_type"), cfg.get("architectures")
    archs = archs if isinstance(archs, list) else []
    name = _TYPES.get(model_type) if model_type else next((a for a in archs if a in _ARCHS), None)
    if model_type == "clip_text_model" and "CLIPTextModel" in archs:
        name = None  # a CLIPTextModel has no text projection: its output is not in the joint space
    if name is None:
        raise EdgepruneError(f"'{path}' is not a CLIP/SigLIP model folder (model_type {model_type!r}, "
                             f"architectures {archs}); expected one of {', '.join(sorted(_ARCHS))}")
    import transformers

    with _quiet_transformers():
        try:
            model, info = getattr(transformers, name).from_pretrained(
                path, local_files_only=True, output_loading_info=True, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - the library raises many types; all mean "cannot load"
            raise EdgepruneError(f"cannot load {name} from '{path}': {_one_line(exc)}") from None
    # A missing tensor would be left randomly initialised: the query would be noise, silently.
    missing = sorted(info.get("missing_keys") or []) + sorted(m[0] for m in info.get("mismatched_keys") or [])
    if missing:
        raise EdgepruneError(f"weights in '{path}' do not fit config.json: {len(missing)} tensors missing or "
                             f"resized, e.g. {missing[0]}")
    model = model.float().eval()
    family = "clip" if name.startswith("CLIP") else "siglip"
    if family == "clip":
        tower, projection = model.text_model, model.text_projection
        query_dim, eos = projection.out_features, tower.eos_token_id
    else:
        tower = model.text_model if name == "SiglipModel" else model
        projection, query_dim, eos = None, tower.head.out_features, None
    text_cfg = tower.config
    return QueryModel(
        text=_text_tower_class()(tower, projection).eval(),
        visual_projection=getattr(model, "visual_projection", None),
        family=family, query_dim=int(query_dim), max_length=int(text_cfg.max_position_embeddings),
        folder=path, eos_token_id=eos, vocab_size=int(text_cfg.vocab_size))


@cache
def _text_tower_class() -> type:
    """The ``nn.Module`` class, built on first use so that importing this module needs no torch."""
    from torch import nn

    class TextTower(nn.Module):
        """input_ids -> text embeds: the pooled output, then CLIP's text projection (SigLIP's head is
        already inside its pooled output)."""

        output_names = (OUTPUT_NAME,)  # read by edgeprune's parity check

        def __init__(self, model: nn.Module, projection: Optional[nn.Module]) -> None:
            super().__init__()
            self.model, self.projection = model, projection

        def forward(self, input_ids: "torch.Tensor") -> "torch.Tensor":
            pooled = self.model(input_ids=input_ids).pooler_output
            return pooled if self.projection is None else self.projection(pooled)

    return TextTower


@dataclass(frozen=True)
class _Frame:
    """How the tokenizer frames a short text: the special ids around it and the padding id."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int
    max_length: int

    @property
    def room(self) -> int:
        return self.max_length - len(self.prefix) - len(self.suffix)


def _frame(tokenizer: Any, max_length: int) -> _Frame:
    """Read the framing off the tokenizer itself (CLIP adds BOS+EOS, SigLIP only EOS), so segments
    are framed exactly like a short question the model was trained on."""
    probe = "a photo of a cat"
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    body = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    at = next((i for i in range(len(full) - len(body) + 1) if full[i:i + len(body)] == body), None)
    if not body or at is None:
        raise EdgepruneError(f"tokenizer {type(tokenizer).__name__} does not frame texts as prefix + text + suffix")
    prefix, suffix = tuple(full[:at]), tuple(full[at + len(body):])
    # Without a pad token, pad with EOS: CLIP's causal mask and first-EOS pooling ignore what follows it.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (suffix[-1] if suffix else None)
    frame = _Frame(prefix, suffix, pad, max_length)
    if pad is None or frame.room < 1:
        raise EdgepruneError(f"tokenizer {type(tokenizer).__name__} has no pad/EOS token or leaves no room "
                             f"in {max_length} positions")
    return frame


def _check_pooling(frame: _Frame, family: str, eos_token_id: Optional[int], vocab_size: int) -> None:
    """CLIP pools the hidden state at the EOS token; a tokenizer that ends texts with another id
    would make every query the embedding of some other token. SigLIP pools the last position."""
    if family != "clip":
        return
    end = frame.suffix[-1] if frame.suffix else None
    if eos_token_id == 2:  # legacy configs: pooled at the highest id, which must be the EOS
        ok = end == vocab_size - 1 and frame.pad_id <= end
        rule = f"the highest token id ({vocab_size - 1}, legacy eos_token_id 2)"
    else:
        ok = end == eos_token_id
        rule = f"eos_token_id {eos_token_id}"
    if not ok:
        raise EdgepruneError(f"the tokenizer ends texts with id {end} but the CLIP text model pools at {rule}")


def tokenize_questions(tokenizer: Any, questions: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[S, max_length]`` int64 of every question's segments, and ``[S]`` the question of each.

    A question is tokenized without truncation; its ids (no special tokens) are cut into pieces of at
    most ``max_length`` minus the special tokens, each framed and right-padded like a short question
    (CLIP: BOS text EOS pad..., pooled at EOS under a causal mask; SigLIP: text EOS pad..., pooled at
    the last position as with ``padding="max_length"``, the way it was trained).
    """
    return _tokenize(tokenizer, _frame(tokenizer, max_length), questions)


def _tokenize(tokenizer: Any, frame: _Frame, questions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(questions, str):
        raise EdgepruneError("questions must be a list of strings, not one string")
    rows, owner = [], []
    for index, question in enumerate(questions):
        if not isinstance(question, str) or not question.strip():
            raise EdgepruneError(f"question {index} is empty or not text: {question!r}")
        # verbose=False: a long question is expected here; it is segmented rather than truncated
        body = list(tokenizer(question, add_special_tokens=False, verbose=False)["input_ids"])
        if not body:
            raise EdgepruneError(f"question {index} has no tokens: {question!r}")
        for start in range(0, len(body), frame.room):
            ids = [*frame.prefix, *body[start:start + frame.room], *frame.suffix]
            rows.append(ids + [frame.pad_id] * (frame.max_length - len(ids)))
            owner.append(index)
    return np.asarray(rows, dtype=np.int64).reshape(-1, frame.max_length), np.asarray(owner, dtype=np.int64)


def _mean_normalised(embeds: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    """Per question, the mean of its L2-normalised segment embeddings (float32 ``[count, D]``)."""
    unit = embeds.astype(np.float64) / np.maximum(np.linalg.norm(embeds, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((count, embeds.shape[1]))
    np.add.at(sums, owner, unit)
    return (sums / np.bincount(owner, minlength=count)[:, None]).astype(np.float32)


def query_vector(model: QueryModel, tokenizer: Any, questions: Sequence[str]) -> "torch.Tensor":
    """Eager-PyTorch query vectors ``[B, query_dim]``: the same segments and averaging as
    :meth:`QueryEncoder.encode` (for parity checks and scripts)."""
    import torch

    frame = _frame(tokenizer, model.max_length)
    _check_pooling(frame, model.family, model.eos_token_id, model.vocab_size)
    ids, owner = _tokenize(tokenizer, frame, questions)
    with torch.no_grad():
        embeds = torch.cat([model.text(torch.from_numpy(ids[i:i + MAX_BATCH])) for i in range(0, len(ids), MAX_BATCH)])
    return torch.from_numpy(_mean_normalised(embeds.numpy(), owner, len(questions)))


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - missing backends, corrupt files: all mean "cannot load"
        raise EdgepruneError(f"cannot load the tokenizer in '{folder}': {first_line(exc)}") from None


def export_query_tower(folder: Union[str, Path], out_dir: Union[str, Path], *, overwrite: bool = False,
                       tolerance: float = 1e-4) -> Path:
    """Export the text tower to ``out_dir/query.onnx`` (``input_ids`` int64 ``[batch, max_length]`` ->
    ``text_embeds`` float32 ``[batch, query_dim]``), with ``tokenizer/`` and ``manifest.json``.

    Parity with eager PyTorch is checked on fresh random token ids at batch 1 and 2 (ParityError above
    ``tolerance``). Nothing is left at ``out_dir`` unless every step succeeds.
    """
    import torch

    from edgeprune.artifacts.artifact import MANIFEST
    from edgeprune.core.files import atomic_directory, sha256_file, write_json_atomic
    from edgeprune.exporting.onnx_export import DEFAULT_OPSET, check_parity, trace_to_onnx
    from edgeprune.backends.feeds import fresh_seed
    from edgeprune.core.machine import library_versions
    from edgeprune.backends.graph import load_graph

    src = Path(folder)
    model = load_query_model(src)
    files = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if not files:
        raise EdgepruneError(f"'{src}' has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer "
                             f"into the model folder with tokenizer.save_pretrained")
    length = model.max_length
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / TOKENIZER_DIR).mkdir()
        for name in files:
            shutil.copy2(src / name, tmp / TOKENIZER_DIR / name)
        # Load the copy, as QueryEncoder will: what ships is what was checked.
        tokenizer = _load_tokenizer(tmp / TOKENIZER_DIR)
        frame = _frame(tokenizer, length)
        _check_pooling(frame, model.family, model.eos_token_id, model.vocab_size)
        if len(tokenizer) > model.vocab_size:
            raise EdgepruneError(f"the tokenizer has {len(tokenizer)} tokens but the text model only "
                                 f"{model.vocab_size}")
        plain = np.setdiff1d(np.arange(len(tokenizer)), tokenizer.all_special_ids)

        def framed_ids(batch: int) -> tuple[torch.Tensor]:
            # Questions of random length in random tokens, framed and padded like real ones, so
            # parity covers the pooled EOS position moving along the sequence.
            rng = np.random.default_rng(fresh_seed())
            texts = [rng.choice(plain, size=int(rng.integers(1, frame.room + 1))) for _ in range(batch)]
            rows = [[*frame.prefix, *t, *frame.suffix] for t in texts]
            return (torch.tensor([r + [frame.pad_id] * (length - len(r)) for r in rows], dtype=torch.int64),)

        onnx_path = tmp / QUERY_ONNX
        # Traced at batch 2 so the tracer cannot specialize the batch axis to 1.
        trace_to_onnx(model.text, framed_ids(2), onnx_path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},), opset=DEFAULT_OPSET)
        batch_dim = load_graph(onnx_path).graph.input[0].type.tensor_type.shape.dim[0]
        if batch_dim.HasField("dim_value"):
            raise EdgepruneError(f"{QUERY_ONNX}: the batch axis was specialized to a constant during tracing")
        parity = check_parity(model.text, onnx_path, [1, length], [1, 2], tolerance,
                              make_inputs=framed_ids, input_names=[INPUT_NAME])
        manifest = {
            "kind": "query-tower", "family": model.family, "query_dim": model.query_dim, "max_length": length,
            "input": {"name": INPUT_NAME, "shape": ["batch", length], "dtype": "int64"},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", model.query_dim], "dtype": "float32"},
            "parity": parity, "source": src.resolve().name, "visual_projection": model.visual_projection is not None,
            "eos_token_id": model.eos_token_id, "vocab_size": model.vocab_size,
            "tokenizer": {"dir": TOKENIZER_DIR, "files": files, "prefix": list(frame.prefix),
                          "suffix": list(frame.suffix), "pad_id": frame.pad_id},
            "onnx": {"file": QUERY_ONNX, "opset": DEFAULT_OPSET, "sha256": sha256_file(onnx_path)},
            "versions": library_versions(),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return Path(out_dir)


class QueryEncoder:
    """Questions -> query vectors with ONNX Runtime and the exported tokenizer; no PyTorch needed."""

    def __init__(self, out_dir: Union[str, Path], *, providers: Sequence[str] = ("cpu",),
                 threads: Optional[int] = None) -> None:
        from edgeprune.backends.ort import DEFAULT_THREADS, OrtRunner

        self.path = Path(out_dir)
        manifest = self._read_manifest()
        self.family: str = manifest["family"]
        self.query_dim: int = int(manifest["query_dim"])
        self.max_length: int = int(manifest["max_length"])
        self.vocab_size: int = int(manifest.get("vocab_size") or 0)
        self.tokenizer = _load_tokenizer(self.path / TOKENIZER_DIR)
        self._frame = _frame(self.tokenizer, self.max_length)
        _check_pooling(self._frame, self.family, manifest.get("eos_token_id"), self.vocab_size)
        self._runner = OrtRunner(self.path / QUERY_ONNX, providers, threads or DEFAULT_THREADS).activate()

    def _read_manifest(self) -> dict[str, Any]:
        file = self.path / "manifest.json"
        try:
            manifest = read_json(file)
        except (OSError, ValueError) as exc:
            raise EdgepruneError(f"{self.path}: not a query-tower export ({first_line(exc)})") from None
        if not isinstance(manifest, dict) or manifest.get("kind") != "query-tower":
            raise EdgepruneError(f"{file}: not a query-tower manifest (expected kind 'query-tower')")
        if not (self.path / QUERY_ONNX).is_file():
            raise EdgepruneError(f"{self.path}: {QUERY_ONNX} is missing")
        return manifest

    def encode(self, questions: Sequence[str]) -> np.ndarray:
        """``[len(questions), query_dim]`` float32: per question, the mean of its L2-normalised segment
        embeddings (see :func:`tokenize_questions`)."""
        ids, owner = _tokenize(self.tokenizer, self._frame, questions)
        if not len(ids):
            return np.zeros((0, self.query_dim), np.float32)
        return _mean_normalised(self.encode_tokens(ids), owner, len(questions))

    def encode_tokens(self, input_ids: np.ndarray, *, normalize: bool = False) -> np.ndarray:
        """Raw text embeddings ``[B, query_dim]`` of already framed and padded ids ``[B, max_length]``
        (L2-normalised rows with ``normalize``)."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[1] != self.max_length or not np.issubdtype(ids.dtype, np.integer):
            raise EdgepruneError(f"input_ids must be integers of shape [batch, {self.max_length}], "
                                 f"got {ids.dtype} {list(ids.shape)}")
        if ids.size and (ids.min() < 0 or (self.vocab_size and ids.max() >= self.vocab_size)):
            raise EdgepruneError(f"input_ids must lie in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        ids = ids.astype(np.int64)
        outs = [self._runner.infer({INPUT_NAME: ids[i:i + MAX_BATCH]})[OUTPUT_NAME]
                for i in range(0, len(ids), MAX_BATCH)]
        embeds = np.concatenate(outs) if outs else np.zeros((0, self.query_dim), np.float32)
        if normalize:
            embeds = embeds / np.maximum(np.linalg.norm(embeds, axis=1, keepdims=True), 1e-12)
        return embeds.astype(np.float32)

    def close(self) -> None:
        self._runner.deactivate()

    def __enter__(self) -> "QueryEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
