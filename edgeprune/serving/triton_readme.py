"""``README.md`` of a repository ``edgeprune export-triton`` writes: how to start Triton on it, what is in it,
and what was and was not run here (:func:`readme_text`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from edgeprune.serving.service import SERVICE_FILE, ServiceConfig

SCRIPT_FILE = "build_plans.sh"  # builds the TensorRT plans on the target
README_FILE = "README.md"
NOT_RUN = "not run on this project's machines yet"


def readme_text(repo: Any, service: ServiceConfig, engine_set: Any,
                calibration: Optional[dict[str, Any]] = None) -> str:
    """``README.md`` of the repository ``repo`` (a ``production.ProductionRepository``): how to run it, what is in it, and what was not run here. ``calibration``
    is the one the latency priors came from (default: the set's ONNX Runtime calibration)."""
    from edgeprune.measure.calibrate import engine_of

    o, (c, h, w) = repo.options, service.input_size
    calibration = calibration if calibration is not None else (engine_set.calibration or {})
    machine = calibration.get("machine", {})
    timed_on = engine_of(calibration).describe() if calibration else "ONNX Runtime"
    rows = "\n".join(f"| `{m.name}` | {m.member} | {m.budget:g} | {m.p50_ms:.3f} | {m.p95_ms:.3f} |" for m in repo.models)
    kind = ("TensorRT plans (`platform: tensorrt_plan`)" if o.backend == "tensorrt" else
            f"Triton's OpenVINO backend on CPU ({o.precision}; `model.onnx`, read by OpenVINO directly)"
            if o.backend == "openvino" else
            f"ONNX Runtime on {o.device.upper()}{' with its TensorRT provider' if o.accelerator == 'tensorrt' else ''}")
    plans = ("" if o.backend != "tensorrt" else "\n## TensorRT plans\n\nBuilt on this machine's GPU: they load only on "
             "the same GPU model and TensorRT version.\n" if repo.plans_built else
             f"\n## TensorRT plans must be built on the target\n\nThe plans are **not built** ({NOT_RUN}): each budget "
             f"model holds `model.onnx` and an empty `1/`. On the target, with the TensorRT version of the Triton image "
             f"that will serve this repository, run `./{SCRIPT_FILE}` (trtexec, dynamic-batch profile 1..{o.max_batch}; "
             "`TRTEXEC=` picks another binary). Triton cannot load the budget models before that.\n")
    return f"""# Triton model repository `{repo.name}` (written by `edgeprune export-triton`)

Engine set `{Path(engine_set.path).name}`: {len(repo.models)} budget models on {kind}, max batch {o.max_batch}, and
the scheduler model `{repo.name}`. Every `config.pbtxt` was checked against Triton's `model_config.proto`.

## Start Triton

```
docker run --rm --gpus all -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/{repo.path.name}:/models \\
    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models
```

(`--gpus all` needs the NVIDIA container toolkit; CPU-only repositories do without.) The scheduler imports
`edgeprune` in Triton's Python backend, so install it there first, e.g. an image `FROM
nvcr.io/nvidia/tritonserver:<yy.mm>-py3` with `RUN pip install edgeprune`. That pulls torch and onnxruntime too;
the scheduler itself needs only numpy, pillow and opencv: `pip install --no-deps edgeprune && pip install
'numpy<2' pillow 'opencv-python-headless<4.12'`. Alternatively pack such an environment with `conda-pack` (the
Python version of the backend stub) and name it in the scheduler's `EXECUTION_ENV_PATH` parameter
(`edgeprune export-triton --execution-env '$$TRITON_MODEL_DIRECTORY/env.tar.gz'`).
{plans}
## Models

| model | member | budget | p50 ms (batch 1) | p95 ms |
|---|---|---|---|---|
{rows}

- `{repo.name}` (Python backend, {o.scheduler_instances} instance(s)) is **the model clients call**: it checks each
  request, batches rows (sizes {', '.join(map(str, repo.sizes))}), picks a budget per batch with a deadline policy
  and sends the batch to that budget's model through BLS.
- `{repo.name}_b*`: one budget's graph each, dynamic batch axis (1..{o.max_batch}), input `pixel_values` FP32
  [{c}, {h}, {w}], output `logits`; callable directly too (no deadline logic).

The latencies above and in `{repo.name}/{SERVICE_FILE}` are **this machine's CPU calibration** ({machine.get('cpu', '?')},
{machine.get('cores', '?')} cores, {timed_on}), scaled linearly by batch size: only a prior. The deadline policy
rescales its predictions from the latencies it measures on the target and adapts within a few batches.

## Requests (model `{repo.name}`)

- Inputs, exactly one: `image` UINT8 [N, H, W, 3] (RGB, any size; resized to {h}x{w} and normalised as in
  training) or `pixels` FP32 [N, {c}, {h}, {w}] (normalised); N <= {o.max_batch}.
- Parameters, optional, one of: `deadline_ms` (the largest budget predicted to fit; default {o.target_ms:g} ms)
  or `budget` ({', '.join(f'{b:g}' for b in service.budgets)}).
- Outputs: `labels` ({f'UINT8 [N, {h}, {w}]' if service.dense else 'INT32 [N, 1]'}), `logits` FP32, `budget` FP32 [N, 1],
  `engine` BYTES [N, 1] (the member that ran), `timings_ms` FP32 [N, 2] (budget model call, whole request),
  `batch_size` INT32 [N, 1]. A bad request gets an error response naming the problem.

```python
import numpy as np, tritonclient.http as httpclient
client = httpclient.InferenceServerClient("localhost:8000")
image = httpclient.InferInput("image", [1, {h}, {w}, 3], "UINT8")
image.set_data_from_numpy(np.zeros((1, {h}, {w}, 3), np.uint8))
result = client.infer("{repo.name}", [image], parameters={{"deadline_ms": 20}})
print(result.as_numpy("budget"), result.as_numpy("labels").shape)
```

## What was and was not run

- Here: each budget's ONNX re-exported with a dynamic batch axis, checked against eager PyTorch at batch 1 and 2
  and against the set's own member at batch 1; the scheduler loads in the Triton server PyTriton bundles
  (`--check-load`; Python backend only). edgeprune's tests also route requests through the scheduler by BLS to
  Python-backend stand-ins running the same ONNX.
- Not here: the ONNX Runtime, OpenVINO and TensorRT backends, GPU instances and the TensorRT settings were {NOT_RUN}
  (the OpenVINO budget models' configs and files were checked against the backend's documented layout only).
"""


__all__ = ["NOT_RUN", "README_FILE", "SCRIPT_FILE", "readme_text"]
