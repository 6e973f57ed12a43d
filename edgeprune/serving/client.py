"""A client for ``edgeprune serve`` (and any Triton serving the same model contract), HTTP or gRPC.

``Client("127.0.0.1:8001", protocol="grpc").infer(frame, deadline_ms=40)`` sends one RGB uint8 frame
and returns a :class:`ServedResult` (labels, budget and engine used, the server's timings and the
round trip measured here). Failures are split the way a camera loop must treat them:
:class:`RequestRejected` (the server answered with an error about this request: retrying the same
request cannot help) and :class:`ServerUnavailable` (no answer: connection refused or reset, a
timeout, a server shutting down: retry, see :meth:`Client.infer_with_retry`).

One client per thread: tritonclient's HTTP client is not thread-safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from edgeprune.core.errors import EdgepruneError

PROTOCOLS = ("http", "grpc")
# Statuses that mean "no answer from a working server", as opposed to an answer refusing the request
# (400 / INVALID_ARGUMENT) or a server-side failure (500 / INTERNAL).
UNAVAILABLE_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED",
                        "StatusCode.RESOURCE_EXHAUSTED", "503", "504")


class ServeError(EdgepruneError):
    """A request that got no result; ``str()`` is the reason."""


class RequestRejected(ServeError):
    """The server answered with an error about this request (bad input, unknown parameter, ...)."""


class ServerUnavailable(ServeError):
    """No answer (server down, restarting, overloaded past the timeout): worth retrying."""


@dataclass(frozen=True)
class ServedResult:
    labels: np.ndarray  # [N, h, w] uint8 for segmenters, [N, 1] int32 for classifiers
    logits: Optional[np.ndarray]
    budget: float
    engine: str
    engine_ms: float  # the server's engine run (of the whole batch this request was part of)
    service_ms: float  # the server's handling of this request, from its batch's start to its outputs
    batch_size: int  # how many images ran together on the server
    latency_ms: float  # round trip measured by the client
    attempts: int = 1


def _classify(exc: BaseException) -> ServeError:
    """Transport failures and unavailable statuses -> ServerUnavailable; answers -> RequestRejected."""
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return ServerUnavailable(f"{type(exc).__name__}: {exc}")
    message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    status = str(exc.status()) if callable(getattr(exc, "status", None)) else ""
    if status in UNAVAILABLE_STATUSES or (not status and "connect" in message.lower()):
        return ServerUnavailable(f"{status} {message}".strip())
    return RequestRejected((message or type(exc).__name__).strip())


class Client:
    """One connection to a served model (see the module docstring)."""

    def __init__(self, url: str, protocol: str = "grpc", model: str = "edgeprune", timeout_s: float = 10.0) -> None:
        if protocol not in PROTOCOLS:
            raise EdgepruneError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if "://" in url:
            raise EdgepruneError(f"give the server as host:port without a scheme, got {url!r}")
        self.url, self.protocol, self.model, self.timeout_s = url, protocol, model, float(timeout_s)
        try:
            if protocol == "http":
                import tritonclient.http as module
            else:
                import tritonclient.grpc as module
        except ImportError as exc:
            raise EdgepruneError(f"the client needs tritonclient[{protocol}] ({exc}); pip install 'edgeprune[serve]'") from None
        self._module = module
        self._client: Any = None

    def _connection(self) -> Any:
        if self._client is None:
            if self.protocol == "http":
                self._client = self._module.InferenceServerClient(self.url, connection_timeout=self.timeout_s,
                                                                  network_timeout=self.timeout_s)
            else:
                self._client = self._module.InferenceServerClient(self.url)
        return self._client

    def reconnect(self) -> None:
        """Drop the connection; the next call opens a new one (after a server restart, say)."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # a connection to a dead server may fail to close; it is dropped either way
                pass
        self._client = None

    def ready(self) -> bool:
        """Whether the server and this model answer ready (False when unreachable)."""
        try:
            client = self._connection()
            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            return bool(client.is_server_ready(**kwargs) and client.is_model_ready(self.model, **kwargs))
        except Exception:  # any transport failure means "not ready" here
            self.reconnect()
            return False

    def infer(self, image: Optional[np.ndarray] = None, *, pixels: Optional[np.ndarray] = None,
              deadline_ms: Optional[float] = None, budget: Optional[float] = None, logits: bool = False,
              parameters: Optional[dict[str, Any]] = None) -> ServedResult:
        """One request: an RGB uint8 frame [H, W, 3] (or a batch [N, H, W, 3]), or preprocessed ``pixels``
        [N, C, h, w]. ``parameters`` adds raw request parameters (for testing the server's checks)."""
        if (image is None) == (pixels is None):
            raise EdgepruneError("give an image or pixels")
        name, array = ("image", image) if image is not None else ("pixels", pixels)
        array = np.ascontiguousarray(array)
        if name == "image" and array.ndim == 3:
            array = array[None]
        params = dict(parameters or {})
        if deadline_ms is not None:
            params["deadline_ms"] = float(deadline_ms)
        if budget is not None:
            params["budget"] = float(budget)
        m = self._module
        tensor = m.InferInput(name, list(array.shape), "UINT8" if array.dtype == np.uint8 else
                              "FP32" if array.dtype == np.float32 else str(array.dtype).upper())
        tensor.set_data_from_numpy(array)
        wanted = ["labels", "budget", "engine", "timings_ms", "batch_size"] + (["logits"] if logits else [])
        outputs = [m.InferRequestedOutput(o) for o in wanted]
        start = time.perf_counter()
        try:
            client = self._connection()
            if self.protocol == "grpc":
                result = client.infer(self.model, [tensor], outputs=outputs, parameters=params or None,
                                      client_timeout=self.timeout_s)
            else:
                result = client.infer(self.model, [tensor], outputs=outputs, parameters=params or None)
        except Exception as exc:  # tritonclient raises its own exception plus transport errors
            error = _classify(exc)
            if isinstance(error, ServerUnavailable):
                self.reconnect()
            raise error from None
        latency_ms = (time.perf_counter() - start) * 1e3
        timings = result.as_numpy("timings_ms")
        engine = result.as_numpy("engine").ravel()[0]
        return ServedResult(result.as_numpy("labels"), result.as_numpy("logits") if logits else None,
                            round(float(result.as_numpy("budget").ravel()[0]), 6),  # sent as float32
                            engine.decode() if isinstance(engine, bytes) else str(engine),
                            float(timings[0, 0]), float(timings[0, 1]), int(result.as_numpy("batch_size").ravel()[0]),
                            latency_ms)

    def infer_with_retry(self, image: Optional[np.ndarray] = None, *, attempts: int = 5, backoff_s: float = 0.2,
                         **kwargs: Any) -> ServedResult:
        """:meth:`infer`, retrying :class:`ServerUnavailable` up to ``attempts`` times with doubling pauses
        (a server restarting comes back); :class:`RequestRejected` is raised at once."""
        last: Optional[ServerUnavailable] = None
        for attempt in range(1, max(1, attempts) + 1):
            try:
                result = self.infer(image, **kwargs)
                return ServedResult(**{**result.__dict__, "attempts": attempt})
            except ServerUnavailable as exc:
                last = exc
                if attempt < attempts:
                    time.sleep(backoff_s * 2 ** (attempt - 1))
        raise ServerUnavailable(f"no answer after {attempts} attempts: {last}")

    def close(self) -> None:
        self.reconnect()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Client", "PROTOCOLS", "RequestRejected", "ServeError", "ServedResult", "ServerUnavailable"]
