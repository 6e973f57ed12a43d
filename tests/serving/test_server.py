"""``edgeprune serve`` for real: the bundled Triton on free loopback ports, HTTP and gRPC clients."""

from __future__ import annotations

import threading
import urllib.request

import numpy as np
import pytest

from edgeprune.serving.client import Client, RequestRejected, ServerUnavailable
from tests.serving.test_service import local_labels

pytest.importorskip("tritonclient.grpc", reason="serving needs edgeprune[serve] (tritonclient)")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_results_equal_the_local_runtime(server, served_set, frames, protocol):
    url = server.ports.http_url if protocol == "http" else server.ports.grpc_url
    with Client(url, protocol) as client:
        assert client.ready()
        for budget in (1.0, 0.5):
            for image in frames(3, 60, 80):
                result = client.infer(image, budget=budget, logits=True)
                assert result.engine == ("b1.00" if budget == 1.0 else "b0.50") and result.budget == budget
                assert result.labels.shape == (1, 32, 32) and result.logits.shape == (1, 5, 32, 32)
                assert (result.labels[0] == local_labels(served_set, budget, image)).mean() >= 0.9999
                assert result.latency_ms > 0 and result.engine_ms > 0 and result.batch_size >= 1
        # the deadline policy picks a served budget
        chosen = client.infer(frames(1)[0], deadline_ms=40)
        assert chosen.budget in (1.0, 0.5)


def _bad_requests(client):
    """Each bad request and the words its error must contain."""
    import tritonclient.grpc as grpc

    image = np.random.default_rng().integers(0, 256, (40, 50, 3), dtype=np.uint8)
    yield "wrong dtype", lambda: client.infer(image.astype(np.float32)), "data-type"
    yield "wrong rank", lambda: client.infer(pixels=np.ones((3, 32, 32), np.float32)), "unexpected shape"
    yield "empty image", lambda: client.infer(np.zeros((0, 5, 3), np.uint8)), "image is empty"
    yield "oversized image", lambda: client.infer(np.zeros((9000, 1, 3), np.uint8)), "larger than this server's limit"
    yield "unknown parameter", lambda: client.infer(image, parameters={"speed": 3}), "unknown parameter 'speed'"
    yield "negative deadline", lambda: client.infer(image, deadline_ms=-1), "deadline_ms must be > 0"
    yield "unserved budget", lambda: client.infer(image, budget=0.3), "budget 0.3 is not served"
    del grpc


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_errors_while_others_are_served(server, frames, protocol):
    """Bad requests get an error naming the problem; a good client sending meanwhile loses nothing."""
    url = server.ports.http_url if protocol == "http" else server.ports.grpc_url
    stop, answered, failures = threading.Event(), [], []

    def good_camera():
        with Client(url, protocol) as good:
            image = frames(1)[0]
            while not stop.is_set():
                try:
                    answered.append(good.infer(image, deadline_ms=50).budget)
                except Exception as exc:  # any failure of a good request fails the test below
                    failures.append(exc)

    thread = threading.Thread(target=good_camera)
    thread.start()
    try:
        with Client(url, protocol) as client:
            for what, send, words in _bad_requests(client):
                with pytest.raises(RequestRejected) as caught:
                    send()
                assert words in str(caught.value), (what, str(caught.value))
    finally:
        stop.set()
        thread.join(30)
    assert not failures and len(answered) > 0


def test_health_and_metrics(server):
    with urllib.request.urlopen(f"http://{server.ports.http_url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://{server.ports.http_url}/v2/models/edgeprune/ready", timeout=5) as r:
        assert r.status == 200
    text = urllib.request.urlopen(server.ports.metrics_url, timeout=5).read().decode()
    assert 'nv_inference_request_success{model="edgeprune",version="1"}' in text
    assert "nv_inference_exec_count" in text


def test_instances_read_the_queue_wait_from_tritons_statistics(server, frames):
    """The served model is told where Triton's statistics are, and reads their real format."""
    import json

    from edgeprune.serving.service import ServiceConfig, queue_totals

    config = ServiceConfig.read(server.triton.workspace / "repository" / "edgeprune" / "service.json")
    assert config.stats_url == f"http://{server.ports.http_url}/v2/models/edgeprune/stats"
    with Client(server.ports.grpc_url, "grpc") as client:
        client.infer(frames(1)[0])
    count, ns = queue_totals(json.loads(urllib.request.urlopen(config.stats_url, timeout=5).read()))
    assert count >= 1 and ns > 0


def test_a_dead_server_is_unavailable_not_rejected(frames):
    from edgeprune.serving.tritonserver import free_port

    with Client(f"127.0.0.1:{free_port()}", "grpc", timeout_s=2) as client:
        assert not client.ready()
        with pytest.raises(ServerUnavailable):
            client.infer(frames(1)[0])
        with pytest.raises(ServerUnavailable, match="after 2 attempts"):
            client.infer_with_retry(frames(1)[0], attempts=2, backoff_s=0.01)
    with Client(f"127.0.0.1:{free_port()}", "http", timeout_s=2) as client:
        with pytest.raises(ServerUnavailable):
            client.infer(frames(1)[0])
