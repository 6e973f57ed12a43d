"""The docs/mllm.md walk-through, end to end: export a LLaVA folder with Script's selection, turn a
question into the query with the exported text tower, run both graphs in ONNX Runtime, and splice
the K visual tokens into ``generate`` of the same (config-built, random-weight) LLaVA model.

    python scripts/mllm_example.py [--work out/mllm_example] [--tokens 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "out" / "mllm_example")
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args(argv)

    import torch

    from edgeprune.cli.main import main as edgeprune
    from edgeprune.mllm.configs import save_llava, small_clip_query, small_llava
    from edgeprune.mllm.llava import load_llava
    from edgeprune.mllm.runtime import VisualEncoder
    from edgeprune.mllm.splice import expand_image_placeholders, splice_visual_tokens

    # 1. A LLaVA-1.5-layout model and the CLIP checkpoint its tower would come from (tiny, random).
    llava_dir, clip_dir, art = args.work / "llava", args.work / "clip", args.work / "script"
    if not llava_dir.exists():
        save_llava(small_llava("llava-clip"), llava_dir)
    if not clip_dir.exists():
        small_clip_query(clip_dir)

    # 2. edgeprune export LLAVA --method script --tokens K --query-tower CLIP --out ART
    code = edgeprune(["export", str(llava_dir), "--method", "script", "--tokens", str(args.tokens),
                      "--query-tower", str(clip_dir), "--out", str(art), "--force"])
    if code:
        return code

    # 3. Question -> query (text tower in ONNX Runtime) -> K visual tokens (vision graph in ONNX Runtime).
    pixels = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    question = "what is on the table?"
    with VisualEncoder(art) as encoder:
        query = encoder.query_encoder.encode([question])
        out = encoder.encode(pixels, query=query)
    print(f"query {query.shape}")
    for name, value in out.items():
        print(f"{name} {value.shape} {value.dtype}")
    print(f"kept patches {out['patch_index'][0].tolist()}")

    # 4. K placeholders in the prompt, the visual tokens spliced in, generate unchanged.
    model = load_llava(llava_dir)
    image = model.config.image_token_id
    prompt = [[1, 17, 23, image, 42, 43, 44]]  # <s> USER: <image> question ... (token ids of a real chat template)
    ids, mask = expand_image_placeholders(prompt, image, out["visual_tokens"].shape[1], pad_token_id=0)
    feed = splice_visual_tokens(ids, mask, out["visual_tokens"], model.get_input_embeddings(), image)
    with torch.inference_mode():
        new = model.generate(inputs_embeds=feed["inputs_embeds"], attention_mask=feed["attention_mask"],
                             max_new_tokens=4, do_sample=False)
    print(f"input_ids {tuple(ids.shape)} -> inputs_embeds {tuple(feed['inputs_embeds'].shape)}; generated {new.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
