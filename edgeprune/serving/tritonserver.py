"""Start and stop the Triton Inference Server that PyTriton's wheel bundles, on a model repository.

PyTriton (``nvidia-pytriton``) ships a real ``tritonserver`` with the Python backend, one backend stub
per Python version and the shared libraries they need. edgeprune runs that binary itself on a
repository it writes (see :mod:`edgeprune.serving.repository`) rather than through PyTriton's
``bind`` API, because a PyTriton callable can only fail a whole dynamic batch at once: one bad
request would take the good requests batched with it down too. A Python-backend model answers each
request on its own.

Two details make the bundled server work from any interpreter:
* the stub for *this* Python version is copied into a private backend folder, as PyTriton does;
* the stub links ``libpython3.X.so.1.0`` dynamically, and the loader must find this interpreter's
  own library first (a pyenv or uv Python next to an older system one otherwise loads the system's,
  and model loading fails with ``'_thread.RLock' object has no attribute '_recursion_count'``), so
  its ``LIBDIR`` goes first on ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from edgeprune.core.errors import EdgepruneError

STARTUP_TIMEOUT_S = 180.0


def bundled_server_root() -> Path:
    """The ``tritonserver`` folder inside the installed PyTriton wheel (a clear error if absent)."""
    try:
        import pytriton
    except ImportError:
        raise EdgepruneError("serving needs PyTriton's bundled Triton server: pip install 'edgeprune[serve]' "
                             "(installs nvidia-pytriton and tritonclient)") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise EdgepruneError(f"{root}: the PyTriton wheel has no bundled tritonserver binary")
    return root


def _libs_folder(root: Path) -> Path:
    """Where the wheel keeps the libraries the binary and stub need (``nvidia_pytriton.libs``)."""
    wheel_libs = root.parent.parent / "nvidia_pytriton.libs"
    return wheel_libs if wheel_libs.is_dir() else root / "external_libs"


def python_libdir() -> str:
    """This interpreter's own library folder (where its ``libpython3.X.so.1.0`` lives)."""
    return str(sysconfig.get_config_var("LIBDIR") or Path(sys.executable).resolve().parent.parent / "lib")


def server_environment(root: Path, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment for ``tritonserver``: this Python's LIBDIR first on LD_LIBRARY_PATH, then what
    was there, then the wheel's libraries; PYTHONPATH so model code imports edgeprune as this process does."""
    env = dict(os.environ if base is None else base)
    parts = [python_libdir(), *(p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p), str(_libs_folder(root))]
    env["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(parts))
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = ":".join(dict.fromkeys([*paths, *(p for p in env.get("PYTHONPATH", "").split(":") if p)]))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def prepare_backends(workspace: Path, root: Optional[Path] = None) -> Path:
    """A backend folder in ``workspace`` holding the Python backend with this interpreter's stub."""
    root = root or bundled_server_root()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise EdgepruneError(f"PyTriton has no Python backend stub for Python {version} (it ships "
                             f"{', '.join(sorted(p.name for p in (root / 'python_backend_stubs').iterdir()))})")
    backends = workspace / "backends"
    python = backends / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    shutil.copy2(stub, python / "triton_python_backend_stub")
    return backends


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the parent dies (Linux ``PR_SET_PDEATHSIG``), so a killed
    ``edgeprune serve`` or test never leaves a server holding its ports."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class ServerPorts:
    http: int
    grpc: int
    metrics: int
    host: str = "127.0.0.1"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics}/metrics"


def choose_ports(http: Optional[int] = None, grpc: Optional[int] = None, metrics: Optional[int] = None,
                 host: str = "127.0.0.1") -> ServerPorts:
    """The given ports (checked free, one clear error if not), free ones where ``None`` or 0."""
    chosen: list[int] = []
    for name, port in (("--http", http), ("--grpc", grpc), ("--metrics", metrics)):
        if port:
            if not 0 < port < 65536:
                raise EdgepruneError(f"{name} must be a TCP port (1-65535), got {port}")
            if port_in_use(port, host):
                raise EdgepruneError(f"{name} port {port} on {host} is already in use")
        else:
            port = free_port(host)
            while port in chosen:
                port = free_port(host)
        chosen.append(port)
    if len(set(chosen)) != 3:
        raise EdgepruneError(f"--http, --grpc and --metrics need three different ports, got {chosen}")
    return ServerPorts(*chosen, host=host)


@dataclass
class TritonProcess:
    """A running ``tritonserver``: its ports, process and log file."""

    process: subprocess.Popen
    ports: ServerPorts
    workspace: Path
    log_path: Path
    _own_workspace: bool = field(default=False, repr=False)

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Until ``/v2/health/ready`` answers 200; a clear error with the log's tail if the server exits
        or the time runs out."""
        url = f"http://{self.ports.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_alive():
                raise EdgepruneError(f"tritonserver exited with code {self.process.returncode} while starting; "
                                     f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise EdgepruneError(f"tritonserver was not ready within {timeout_s:.0f} s; log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> int:
        """Graceful stop: SIGTERM lets Triton finish the requests in flight (up to its exit timeout),
        then the process is killed if it still runs. Returns the exit code."""
        if self.is_alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._own_workspace:
            shutil.rmtree(self.workspace, ignore_errors=True)
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        if self.is_alive():
            self.process.kill()
            self.process.wait(10)


def start_server(repository: Path, ports: ServerPorts, *, workspace: Optional[Path] = None,
                 exit_timeout_s: int = 30, log_verbose: int = 0, extra_args: Sequence[str] = (),
                 load_models: Optional[Sequence[str]] = None, stdout_to_log: bool = True,
                 remove_workspace: Optional[bool] = None) -> TritonProcess:
    """Launch the bundled ``tritonserver`` on ``repository`` (returns at once; call ``wait_ready``).

    ``load_models``: explicit model-control mode loading only these (else every model in the repository).
    ``remove_workspace``: delete the workspace on :meth:`TritonProcess.stop` (default: only a temporary one).
    """
    root = bundled_server_root()
    own = workspace is None
    workspace = Path(tempfile.mkdtemp(prefix="edgeprune-triton-")) if own else Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    backends = prepare_backends(workspace, root)
    log_path = workspace / "tritonserver.log"
    args = [str(root / "bin" / "tritonserver"), f"--model-repository={repository}",
            f"--backend-directory={backends}", f"--cache-directory={root / 'caches'}",
            f"--http-address={ports.host}", f"--http-port={ports.http}",
            f"--grpc-address={ports.host}", f"--grpc-port={ports.grpc}",
            f"--metrics-address={ports.host}", f"--metrics-port={ports.metrics}",
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
            f"--exit-timeout-secs={exit_timeout_s}", f"--log-verbose={log_verbose}",
            "--strict-readiness=true", "--exit-on-error=false"]
    if load_models is not None:
        args += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in load_models)]
    args += list(extra_args)
    log = open(log_path, "ab")
    try:
        process = subprocess.Popen(args, env=server_environment(root), stdout=log if stdout_to_log else None,
                                   stderr=subprocess.STDOUT if stdout_to_log else None, cwd=workspace,
                                   start_new_session=True, preexec_fn=_die_with_parent)
    finally:
        log.close()
    return TritonProcess(process, ports, workspace, log_path, own if remove_workspace is None else remove_workspace)


__all__ = ["ServerPorts", "TritonProcess", "bundled_server_root", "choose_ports", "free_port", "prepare_backends",
           "python_libdir", "server_environment", "start_server"]
