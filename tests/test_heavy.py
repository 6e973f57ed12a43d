"""Full-size cases: real ViT-B/S, DeiT-B distilled, a register ViT, CLIP and SigLIP at default sizes,
and three segmenters (the reference model, ViT-S/16 linear, ViT-S/16 registers + multi-level head).

Run with ``python -m pytest -m heavy`` (CI runs them after the fast suite when time allows).
"""

import json
from pathlib import Path

import pytest

from edgeprune.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.heavy


def test_vit_base_export_and_inspect(tmp_path):
    out = tmp_path / "vitb"
    assert main(["export", "vit_base_patch16_224", "--method", "tome", "--flops", "0.5", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["flops"]["macs_ratio"] <= 0.5 and manifest["parity"]["max"] <= 1e-4
    assert main(["inspect", str(out)]) == 0
