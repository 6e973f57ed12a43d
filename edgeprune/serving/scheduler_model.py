"""The scheduler model of ``edgeprune export-triton``: copied as ``<repo>/<name>/1/model.py``.

It is :mod:`edgeprune.serving.triton_model`'s model (whose request handling it inherits) with one difference: the engines are not ONNX Runtime
sessions inside this process but the repository's budget models (``<name>_b1.00``, ...), run by
Triton's ONNX Runtime or TensorRT backend and reached through BLS (business logic scripting).
Request checking, batching and the per-batch deadline policy are
:class:`edgeprune.serving.service.Service`'s, unchanged.

Triton imports this file in a Python-backend stub process with ``triton_python_backend_utils`` on
its path, so nothing here runs outside a server. ``service.json`` is found relative to this model's
folder (``args["model_repository"]``), so the repository can be moved or mounted anywhere.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend stub

from edgeprune.serving.service import Service, ServiceConfig
from edgeprune.serving.triton_model import ServiceModel

DEFAULT_ENGINE_INPUT = "pixel_values"
DEFAULT_ENGINE_OUTPUT = "logits"


def _parameter(config, key, default=None):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value else default


def _service_path(args, config):
    """The service file: absolute as written, else relative to this model's folder. Triton passes the
    model's folder as ``model_repository``; the repository root joined with the model name is tried too,
    in case a server passes the root instead."""
    path = _parameter(config, "edgeprune_service", "service.json")
    if os.path.isabs(path):
        return path
    folder = args["model_repository"]
    for candidate in (os.path.join(folder, path), os.path.join(folder, args["model_name"], path)):
        if os.path.isfile(candidate):
            return candidate
    raise pb_utils.TritonModelException(f"{args['model_name']}: no {path} in {folder}")


def bls_runner(input_name, output_name):
    """``make_runner`` for :class:`Service`: each engine is the Triton model of that name, run by BLS."""

    def make(model_name, _threads):
        def run(pixels):
            request = pb_utils.InferenceRequest(
                model_name=model_name, requested_output_names=[output_name],
                inputs=[pb_utils.Tensor(input_name, np.ascontiguousarray(pixels, dtype=np.float32))])
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"model {model_name}: {response.error().message()}")
            return pb_utils.get_output_tensor_by_name(response, output_name).as_numpy()

        return run

    return make


class TritonPythonModel(ServiceModel):
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        runner = bls_runner(_parameter(config, "edgeprune_engine_input", DEFAULT_ENGINE_INPUT),
                            _parameter(config, "edgeprune_engine_output", DEFAULT_ENGINE_OUTPUT))
        self.service = Service(ServiceConfig.read(_service_path(args, config)), make_runner=runner)


__all__ = ["TritonPythonModel", "bls_runner"]
