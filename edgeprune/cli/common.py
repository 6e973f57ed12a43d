"""Pieces the commands share: the console, error exit, and option groups."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

# Option groups, reused by every command that runs an engine.
ThreadsOpt = typer.Option(2, "--threads", min=1, help="Intra-op threads for ONNX Runtime or OpenVINO.")
ProviderOpt = typer.Option(
    "cpu", "--provider",
    help="Engine: an ONNX Runtime execution provider (cpu, cuda, tensorrt), openvino (pip install "
         "\"edgeprune[openvino]\"), or auto: the fastest engine calibrated for the set here, else OpenVINO on a "
         "CPU with bf16 units, else ONNX Runtime (see docs/engines.md).")
PrecisionOpt = typer.Option(
    None, "--precision",
    help="--provider openvino: fp32 (default), bf16 or fp16 (OpenVINO's inference precision; a CPU without the "
         "unit runs f32). ONNX Runtime runs the fp32 graph. With auto: only engines of this precision.")
DeviceOpt = typer.Option(
    None, "--device", help="--provider openvino: an OpenVINO device reported here: CPU (default), GPU or NPU.")
BatchOpt = typer.Option(1, "--batch", min=1, help="Batch size.")

# Model loading, shared by every command that takes a MODEL (export, tune).
MODEL_HELP = ("timm model name (e.g. vit_small_patch16_224), torchvision:NAME (e.g. torchvision:vit_b_16), a HF "
              "save_pretrained folder (CLIP/SigLIP/ViT/DeiT/Dinov2), an edgeprune segmenter folder (e.g. models/scene_seg) "
              "or a generic-adapter spec file (.json, see docs/generic.md).")
CheckpointOpt = typer.Option(None, "--checkpoint", help="Weights: .safetensors or .pth/.pt (loaded weights-only).")
ModelArgOpt = typer.Option([], "--model-arg", help="KEY=VALUE forwarded to timm.create_model (repeatable).")
ImgSizeOpt = typer.Option(None, "--img-size", help="Input size for timm models (square).")


def check_engine_options(provider: str, precision: Optional[str], device: Optional[str]) -> None:
    """--provider/--precision/--device names, checked before any slow work (one line, exit 2)."""
    from edgeprune.backends.runners import check_provider_options

    check_provider_options(provider, precision, device)


def parse_int_list(text: Optional[str], what: str) -> Optional[list[int]]:
    from edgeprune.core.errors import EdgepruneError

    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EdgepruneError(f"{what} expects comma-separated integers, got '{text}'") from None


SCENES_MODEL = Path("models") / "scene_seg"  # generated scenes: the built-in clip and its tests
REAL_MODEL = Path("models") / "camvid_seg"  # real driving footage: photos, videos and cameras


def default_model(real: bool) -> Path:
    """The shipped segmenter for real footage (CamVid) or for generated scenes, from the working
    directory, else from the source checkout this package runs from."""
    wanted = REAL_MODEL if real else SCENES_MODEL
    if wanted.is_dir():
        return wanted
    return Path(__file__).resolve().parents[2] / wanted
