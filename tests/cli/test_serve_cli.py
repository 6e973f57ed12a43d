"""``edgeprune serve`` as a user runs it: a subprocess on free ports, stopped by SIGTERM with a request in flight."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edgeprune.cli.main import main
from tests.serving.conftest import served_set, service_config  # noqa: F401  (fixtures shared with tests/serving)

pytest.importorskip("pytriton", reason="serving needs edgeprune[serve] (nvidia-pytriton)")


def _ports(process, timeout_s=180):
    """Read the serve banner from stdout until the ports line appears."""
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(r"HTTP (\S+)\s+gRPC (\S+)\s+metrics (\S+)", line)
        if match:
            return match.groups()
    raise AssertionError(f"no ports line from edgeprune serve; stdout: {''.join(seen)}; "
                         f"stderr: {process.stderr.read() if process.poll() is not None else ''}")


@pytest.mark.heavy  # a subprocess starting Triton: ~15 s
def test_serve_stops_on_sigterm_after_finishing_requests_in_flight(service_config, served_set):
    from edgeprune.serving.client import Client

    # Same --max-batch and --threads as the session's service, so its cached batch-N exports are reused.
    # A long batching delay keeps the request queued when SIGTERM arrives.
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeprune.cli.main", "serve", str(served_set), "--http", "0", "--grpc", "0",
         "--metrics", "0", "--max-batch", "4", "--threads", "1", "--queue-delay-us", "800000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        http, grpc, _metrics = _ports(process)
        outcome = {}

        def in_flight():
            with Client(grpc, "grpc", timeout_s=30) as client:
                try:
                    outcome["result"] = client.infer(np.full((20, 30, 3), 77, np.uint8), budget=1.0)
                except Exception as exc:  # recorded and asserted below
                    outcome["error"] = exc

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert "error" not in outcome, outcome
        assert outcome["result"].engine == "b1.00"
        assert process.wait(60) == 0
        stderr = process.stderr.read()
        assert "SIGTERM: finishing requests in flight" in stderr and "exit code 0" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_refuses_bad_input_in_one_line(tmp_path, capsys, served_set):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(["serve", str(tmp_path / "folder")]) == 2
    assert "neither an engine set" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(served_set), "--http", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"--http port {port} on 127.0.0.1 is already in use" in err and "Traceback" not in err
