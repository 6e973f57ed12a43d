#!/usr/bin/env bash
# The main job on built-in inputs: export the shipped reference ViT (models/mnist_vit) unreduced and
# with every reduction method at half the MACs, each checked against PyTorch, then benchmark them
# interleaved at batch 1 and show one plan. Writes into out/quickstart (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/quickstart}"
model_dir=models/mnist_vit

name=$(python -c "import json; print(json.load(open('$model_dir/config.json'))['timm_name'])")
mapfile -t args < <(python -c "
import json
for k, v in json.load(open('$model_dir/config.json'))['model_args'].items():
    print('--model-arg'); print(f'{k}={v!r}' if isinstance(v, str) else f'{k}={v}')
")
common=("$name" "${args[@]}" --checkpoint "$model_dir/model.safetensors" --force)

edgeprune export "${common[@]}" --method none --out "$out/none"
for method in tome evit gsp; do
  edgeprune export "${common[@]}" --method "$method" --flops 0.5 --out "$out/$method"
done
edgeprune bench "$out/none" "$out/tome" "$out/evit" "$out/gsp" --rounds 100 --json "$out/bench.json" --plot "$out/bench.png"
edgeprune inspect "$out/tome"
