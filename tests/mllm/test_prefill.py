"""End-to-end TTFT benchmark of a tiny LLaVA: rows, first tokens checked against the model itself,
the 7B prediction, artifact reuse, the ``bench --prefill`` command line and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeprune.cli.main import main
from edgeprune.backends.ort import OrtRunner
from edgeprune.mllm.configs import LLAMA2_7B, llava15_shaped, save_llava, tiny_llava
from edgeprune.mllm.llava import llava_parts, load_llava
from edgeprune.mllm.prefill import llm_dims, prefill_bench, prefill_inputs, prefill_macs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = save_llava(tiny_llava(), tmp_path_factory.mktemp("prefill") / "model")
    return folder


@pytest.fixture(scope="module")
def result(saved):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return prefill_bench(saved, tokens=(16, 32), rounds=2, threads=1, work_dir=saved.parent / "work", pause=0.01)
    finally:
        torch.set_num_threads(before)


def test_save_llava_round_trip(saved):
    model = load_llava(saved)
    fresh = tiny_llava()
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    parts = llava_parts(model)
    assert parts.num_patches == 64 and parts.image_token_id == 199 and parts.llm_dim == 96


def test_llava15_shape():
    with torch.device("meta"):
        model = llava15_shaped()
    cfg = model.config
    vision, text = cfg.vision_config, cfg.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (1024, 24, 336, 14)
    assert vision.hidden_act == "quick_gelu" and vision.projection_dim == 768
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size) == (2048, 5632, 4, 32064)
    assert cfg.image_token_id == 32000 and cfg.vision_feature_layer == -2 and cfg.projector_hidden_act == "gelu"
    assert sum(p.numel() for p in model.model.vision_tower.parameters()) > 300e6


def test_macs_match_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_llava()
    model.set_attn_implementation("eager")  # the counter sees eager attention's two matmuls
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(inputs_embeds=torch.randn(1, 37, 96), logits_to_keep=1)
    assert counter.get_total_flops() == 2 * prefill_macs(llm_dims(model.config.text_config), 37)
    assert prefill_macs({**LLAMA2_7B}, 608) > 3.9e12


def test_rows_and_first_tokens(result, saved):
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["none", "visionzip-16", "visionzip-32"]
    assert [rows[n]["tokens"] for n in rows] == [64, 16, 32]
    assert [rows[n]["seq_len"] for n in rows] == [96, 48, 64]
    assert rows["none"]["speedup"] == 1.0
    for r in rows.values():
        assert min(r["vision_ms"], r["splice_ms"], r["prefill_ms"]) > 0
        assert r["ttft_ms"] >= r["prefill_ms"] and len(r["samples_ms"]) == 2 and not r["reused_artifact"]
    json.dumps(result)

    model = load_llava(saved)
    parts = llava_parts(model)
    inputs = prefill_inputs(parts, 32, seed=result["config"]["seed"])
    ids = inputs["prompt_ids"][0]
    at = int((ids == 199).nonzero())
    with torch.inference_mode():
        embed = model.get_input_embeddings()
        for r in rows.values():
            assert len(r["first_tokens"]) == 1  # every run gave the same token
            with OrtRunner(f"{r['artifact']}/model.onnx", threads=1) as runner:
                visual = torch.from_numpy(runner.infer({"pixel_values": inputs["pixel_values"]})["visual_tokens"])
            assert visual.shape == (1, r["tokens"], 96)
            embeds = torch.cat([embed(ids[None, :at]), visual, embed(ids[None, at + 1:])], dim=1)
            logits = model(inputs_embeds=embeds).logits
            assert int(logits[0, -1].argmax()) == r["first_tokens"][0], r["name"]
        # the unpruned path is the model's own pixels -> first token
        full = torch.cat([ids[:at], torch.full((64,), 199), ids[at + 1:]])[None]
        own = model(input_ids=full, pixel_values=torch.from_numpy(inputs["pixel_values"])).logits
        assert int(own[0, -1].argmax()) == rows["none"]["first_tokens"][0]


def test_7b_prediction(result):
    fit, pred = result["fit"], result["prediction"]
    assert fit["s_per_mac"] > 0 and fit["a_s"] >= 0 and len(fit["seq_lens"]) == 3
    assert pred["dims"]["hidden"] == 4096 and len(pred["rows"]) == 3
    for p, r in zip(pred["rows"], result["rows"]):
        assert p["prefill_ms"] > 0 and p["ttft_ms"] > p["prefill_ms"] and p["prefill_macs"] > r["prefill_macs"]
        assert p["speedup"] == pytest.approx(r["predicted_7b_speedup"])
    # the 7B prefill is nearly all MACs, which fall with T
    assert pred["rows"][0]["speedup"] == 1.0 and pred["rows"][1]["speedup"] > pred["rows"][2]["speedup"] > 1.0


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_prefill_reuses_artifacts(result, saved, tmp_path, capsys):
    code, out, err = run(["bench", "--prefill", saved, "--tokens", "16,32", "--rounds", 1, "--warmup", 0, "--settle", 0,
                          "--threads", 1, "--work", saved.parent / "work", "--json", tmp_path / "p.json"], capsys)
    assert code == 0, err
    assert "TTFT" in out and "visionzip-16" in out and "7B" in out
    data = json.loads((tmp_path / "p.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["none", "visionzip-16", "visionzip-32"]
    assert all(r["reused_artifact"] for r in data["rows"])  # same model, same manifests: no re-export
    assert data["config"]["source"] == str(saved)
    assert [r["first_tokens"] for r in data["rows"]] == [r["first_tokens"] for r in result["rows"]]


def test_cli_prefill_errors(saved, tmp_path, capsys):
    (tmp_path / "notllava").mkdir()
    (tmp_path / "notllava" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    code, _, err = run(["bench", "--prefill", tmp_path / "notllava"], capsys)
    assert code == 2 and "not a LLaVA model folder" in one_line(err)
    code, _, err = run(["bench", "--prefill", saved, "--tokens", "16,65", "--work", tmp_path / "w"], capsys)
    assert code == 2 and "65" in one_line(err)
    assert not (tmp_path / "w").exists()  # checked before any export
    code, _, err = run(["bench"], capsys)
    assert code == 2 and "--prefill" in one_line(err)
    code, _, err = run(["bench", "--prefill", saved, "--plot", tmp_path / "x.png"], capsys)
    assert code == 2 and "--plot" in one_line(err)
    code, _, err = run(["bench", "--prefill", saved, "--method", "none"], capsys)
    assert code == 2 and "pruning method" in one_line(err)
    code, _, err = run(["bench", tmp_path, "--tokens", "8"], capsys)
    assert code == 2 and "only with --prefill" in one_line(err)


def test_prefill_inputs_are_fixed(saved):
    parts = llava_parts(load_llava(saved))
    a, b = prefill_inputs(parts, 8, query_dim=32), prefill_inputs(parts, 8, query_dim=32)
    assert np.array_equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["prompt_ids"], b["prompt_ids"])
    assert a["prompt_ids"].shape == (1, 9) and int((a["prompt_ids"] == 199).sum()) == 1
    assert np.linalg.norm(a["query"]) == pytest.approx(1.0, abs=1e-5)
