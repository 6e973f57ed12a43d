"""The Triton Python-backend model ``edgeprune serve`` runs: copied as ``<repo>/<model>/1/model.py``.

Triton imports this file in a backend stub process per model instance, with
``triton_python_backend_utils`` on its path, so nothing here runs outside a server. Every decision
is :class:`edgeprune.serving.service.Service`'s; this adapter only moves tensors and parameters in
and out, and answers each request on its own: a request the service refuses gets an error response
naming the problem while the rest of its batch runs.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend stub

from edgeprune.serving.service import RequestError, Service, ServiceConfig


def _tensor(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _error(message, code=None):
    """An error response for one request: INVALID_ARG (HTTP 400) for a refused request, INTERNAL
    (HTTP 500) for a failure of the server's own."""
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class ServiceModel:
    """Requests in, responses out, around ``self.service`` (set by ``initialize``); the scheduler model of
    ``export-triton`` subclasses it with engines reached through BLS."""

    service: Service
    name: str

    def execute(self, requests):
        jobs, slots, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                parameters = json.loads(request.parameters() or "{}")
                jobs.append(self.service.parse(_tensor(request, "image"), _tensor(request, "pixels"), parameters))
                slots.append(i)
            except RequestError as exc:
                responses[i] = _error(f"{self.name}: {exc}", pb_utils.TritonError.INVALID_ARG)
        if jobs:
            try:
                results = self.service.run(jobs)
            except Exception as exc:  # an engine failure fails this batch, not the server
                message = f"{self.name}: inference failed: {type(exc).__name__}: {exc}"
                results = None
                for i in slots:
                    responses[i] = _error(message)
            if results is not None:
                for i, result in zip(slots, results):
                    wanted = set(requests[i].requested_output_names())
                    tensors = result.tensors()
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(value))
                                        for name, value in tensors.items() if not wanted or name in wanted])
        return responses

    def finalize(self):
        self.service = None


class TritonPythonModel(ServiceModel):
    """``edgeprune serve``'s model: every budget's batch-N engines run by ONNX Runtime in this instance."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = config["parameters"]["edgeprune_service"]["string_value"]
        self.service = Service(ServiceConfig.read(path))
        self.name = args["model_name"]


__all__ = ["ServiceModel", "TritonPythonModel"]
