"""Load an exported repository in the Triton server PyTriton bundles, as far as its backends allow.

The bundled server has only the Python backend: the scheduler model loads and becomes ready, the
ONNX Runtime / TensorRT budget models cannot; :func:`check_load` reports both, with the server's
own reason for each model.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from edgeprune.core.errors import EdgepruneError, first_line


@dataclass
class LoadReport:
    """What the bundled server loaded from a repository."""

    scheduler: str
    backend: str  # the budget models' backend
    budget_errors: dict[str, str]  # model -> why it did not load ("" = it loaded)

    @property
    def summary(self) -> str:
        failed = [m for m, e in self.budget_errors.items() if e]
        text = f"scheduler model {self.scheduler} loaded in the bundled server"
        if failed:
            text += f"; {len(failed)} budget models need the {self.backend} backend (not in PyTriton's wheel)"
        return text


def _http(url: str, method: str = "GET", body: Optional[bytes] = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        return 0, str(exc)


def check_load(repository: str | Path, name: str, budget_models: Sequence[str], backend: str = "onnxruntime",
               timeout_s: float = 120.0) -> LoadReport:
    """Start the bundled ``tritonserver`` on ``repository`` (explicit model control, free loopback ports), load the
    scheduler ``name`` and try each budget model; always stops the server. Raises if the scheduler does not load."""
    from edgeprune.serving.tritonserver import choose_ports, start_server

    cache = Path(repository) / name / "1" / "__pycache__"
    had_cache = cache.exists()
    triton = start_server(Path(repository).resolve(), choose_ports(), load_models=[name])  # a temporary workspace
    base = f"http://{triton.ports.http_url}"
    try:
        deadline = time.monotonic() + timeout_s
        # Triton loads --load-model models before its endpoints answer: once live, the scheduler is loaded or failed.
        while _http(f"{base}/v2/health/live")[0] != 200:
            if not triton.is_alive() or time.monotonic() > deadline:
                raise EdgepruneError(f"tritonserver did not start (log {triton.log_path}):\n{triton.log_tail()}")
            time.sleep(0.2)
        if _http(f"{base}/v2/models/{name}/ready")[0] != 200:
            index = json.loads(_http(f"{base}/v2/repository/index", "POST", b"{}")[1] or "[]")
            reason = next((e.get("reason", "") for e in index if e.get("name") == name), "")
            raise EdgepruneError(f"scheduler model {name} did not load in the bundled server: {reason or 'not ready'}; "
                                 f"log tail:\n{triton.log_tail()}")
        errors = {}
        for model in budget_models:
            status, text = _http(f"{base}/v2/repository/models/{model}/load", "POST", b"{}")
            try:
                message = json.loads(text).get("error", "") if text else ""
            except json.JSONDecodeError:
                message = text
            errors[model] = "" if status == 200 else first_line(RuntimeError(message or f"HTTP {status}"))
        return LoadReport(name, backend, errors)
    finally:
        triton.stop()
        if not had_cache:  # the stub's import of model.py wrote it; the repository stays as exported
            shutil.rmtree(cache, ignore_errors=True)


__all__ = ["LoadReport", "check_load"]
