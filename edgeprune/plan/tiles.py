"""Token counts in the engine's tiles: fast matrix units pay for whole tiles of rows.

AMX multiplies 16- or 32-row tiles, tensor cores 8- or 16-row fragments, so on those engines a
matmul over 98 tokens costs what one over 128 does and 197 costs 224: measured on a Xeon with AMX
(OpenVINO bf16, 8 ViT-B MLPs), 15.3 ms at 197 tokens, 13.5 at 192, 10.0 at 128, 11.0 at 98 but
8.4 at 96 (NOTES.md, "Fast engines"). A plan whose kept-token counts, prefix tokens included, sit on
tile boundaries keeps its MACs saving as time; one just past a boundary wastes most of a tile.

:func:`round_to_tile` is the one rule; plans (``build_plan(tile=...)``), the latency search and
``tune`` apply it, and :data:`ENGINE_TILES` is the default per engine and precision. ONNX Runtime's
fp32 CPU kernels have no such steps (the curve in NOTES.md "Numbers to beat" is smooth), so its
tile is 1: off.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from edgeprune.core.errors import EdgepruneError

# (backend, precision) -> tile in tokens. A default, not a measurement of the user's device:
# ``scripts/tile_steps.py`` measures the step of an engine on the machine at hand.
ENGINE_TILES: dict[tuple[str, str], int] = {
    ("onnxruntime", "fp32"): 1,
    ("onnxruntime", "fp16"): 8,  # CUDA provider: tensor-core fragments of 8 rows
    ("onnxruntime", "int8"): 1,  # QDQ on the CPU provider runs fp32-sized tiles
    ("openvino", "fp32"): 1,
    ("openvino", "bf16"): 32,  # AMX on Xeon: steps of 32 tokens measured (NOTES.md)
    ("openvino", "fp16"): 32,  # AMX-FP16 shares the bf16 tiles
    ("openvino", "int8"): 32,  # AMX int8 tiles are as tall as bf16's
    ("tensorrt", "fp32"): 1,
    ("tensorrt", "fp16"): 16,  # tensor-core MMA tiles of 16 rows
    ("tensorrt", "bf16"): 16,
    ("tensorrt", "int8"): 32,
}
MAX_TILE = 256


def engine_names() -> list[str]:
    return [f"{backend}-{precision}" for backend, precision in ENGINE_TILES]


def parse_engine(name: str) -> tuple[str, str]:
    """``openvino-bf16`` -> ("openvino", "bf16"): an engine a plan can be made for."""
    backend, _, precision = str(name).strip().lower().rpartition("-")
    if (backend, precision) not in ENGINE_TILES:
        raise EdgepruneError(f"unknown engine {name!r}; known engines: {', '.join(engine_names())}")
    return backend, precision


def default_tile(backend: str, precision: str) -> int:
    """The tile for an engine; one line naming the known engines when it is not one."""
    try:
        return ENGINE_TILES[(backend.lower(), precision.lower())]
    except KeyError:
        raise EdgepruneError(f"no tile default for {backend}-{precision}; known engines: {', '.join(engine_names())}") from None


def parse_tile(value: Union[str, int, None]) -> int:
    """``--tile``: a token count (1 = off) or an engine name such as ``openvino-bf16``."""
    if value is None or value == "":
        return 1
    text = str(value).strip().lower()
    if text.isdigit():
        tile = int(text)
        if not 1 <= tile <= MAX_TILE:
            raise EdgepruneError(f"--tile must be a token count in 1..{MAX_TILE} or an engine ({', '.join(engine_names())}), got {value!r}")
        return tile
    backend, _, precision = text.rpartition("-")
    if not backend:
        raise EdgepruneError(f"--tile must be a token count or an engine such as openvino-bf16 ({', '.join(engine_names())}), got {value!r}")
    return default_tile(backend, precision)


def plan_tile(tile: Union[str, int, None], engine: Optional[str]) -> int:
    """The tile a command plans with: ``--tile`` when given, else the default of ``--engine``, else 1."""
    if tile is not None:
        return parse_tile(tile)
    return default_tile(*parse_engine(engine)) if engine else 1


def round_count(total: int, tile: int) -> int:
    """``total`` tokens rounded to the nearest whole tile; halves go down (fewer tokens, the cheaper
    side), and a count under half a tile stays as it is rather than becoming zero."""
    if tile <= 1:
        return total
    tiles, rest = divmod(total, tile)
    nearest = (tiles + (rest > tile / 2)) * tile
    return nearest or total


def round_to_tile(keep: Sequence[int], num_patches: int, num_prefix: int, tile: int, floor: int) -> tuple[int, ...]:
    """A schedule of patch-token counts with every reduction landing on a tile boundary.

    At each block that reduces, the sequence it leaves (prefix + patch tokens) is rounded to the
    nearest multiple of ``tile``, then kept between ``floor`` patch tokens and the count entering the
    block (a schedule never grows). Blocks that do not reduce keep the previous count, so a point
    whose rounding lands on its input count simply stops reducing. ``tile`` 1 returns ``keep``.
    """
    if tile <= 1:
        return tuple(keep)
    rounded, previous, before = [], num_patches, num_patches
    for k in keep:
        if k < before:  # a reduction point in the original schedule
            total = round_count(num_prefix + k, tile)
            previous = min(previous, max(floor, total - num_prefix))
        before = k
        rounded.append(previous)
    return tuple(rounded)
