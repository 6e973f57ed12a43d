"""scripts/train_camvid_segmenter.py as a user runs it: killed mid-run, the same command resumes from
its checkpoint and finishes with a loadable model, its card, and no checkpoint left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeprune.data import camvid

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_camvid_segmenter.py"

pytestmark = [pytest.mark.heavy, pytest.mark.skipif(not camvid.default_root().is_dir(), reason="needs ../shared/data/camvid")]


def test_interrupted_run_resumes(tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, str(SCRIPT), "--minutes", "0.6", "--threads", "1", "--batch-size", "2",
           "--checkpoint-minutes", "0", "--eval-limit", "3", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists():  # checkpoints are saved after every step here
        assert first.poll() is None and time.time() < deadline, first.stdout.read() if first.poll() is not None else "timeout"
        time.sleep(0.2)
    first.kill()
    first.wait()
    assert not (out / "model.safetensors").exists()
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from" in second.stdout
    assert not (out / "checkpoint.pt").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["stem"] == {"channels": [32, 64]} and config["classes"] == list(camvid.CLASSES)
    assert config["train"]["steps"] >= 1 and config["eval"]["test"]["n"] == 3
    assert "test mIoU" in (out / "README.md").read_text()
    from edgeprune.families.timm_seg import load_segmenter

    assert load_segmenter(out).info["input"]["size"] == [3, 180, 240]
