"""The runtime install (``pip install edgeprune``, no extras) runs engine sets without PyTorch.

A virtual environment gets the package's base dependencies only (installed once and cached: the
``dependencies`` list of pyproject.toml decides what is in it), then this tree's edgeprune with --no-deps.
A set exported here runs there through ``Runtime`` and ``edgeprune demo`` with an import hook, installed
at interpreter start-up (a .pth file) before edgeprune is imported, that records and refuses torch, timm,
transformers, onnxscript, torchvision and the export stages. An export there fails in one line naming the
``export`` extra, exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.conftest import export_tiny_set

ROOT = Path(__file__).resolve().parents[1]
VIDEO_DIR = ROOT.parent / "shared" / "data" / "video"


def _forbidden() -> tuple[str, ...]:
    """The torch-free contract's forbidden modules (.importlinter), so the hook follows the contract."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    names = config.get("importlinter:contract:torch-free-runtime", "forbidden_modules", fallback="").split()
    return tuple(dict.fromkeys(["torch", "torchvision", "timm", "transformers", "onnxscript", *names]))


FORBIDDEN = _forbidden()
EXPORT_STAGE = next(name for name in FORBIDDEN if name.startswith("edgeprune."))

# Imported at start-up by the .pth file below, so it is in place before anything imports edgeprune.
GUARD = '''import os, sys

_LOG = os.environ.get("EDGEPRUNE_FORBID_LOG")
_FORBIDDEN = %r


class _RefuseExport:
    """Records and refuses the modules a runtime install must never import."""

    def find_spec(self, name, path=None, target=None):
        if any(name == f or name.startswith(f + ".") for f in _FORBIDDEN):
            frame = sys._getframe(1)
            while frame is not None:  # require_extra asking whether the extra is here is no import
                if frame.f_code.co_filename.endswith(os.path.join("edgeprune", "core", "extras.py")):
                    return None
                frame = frame.f_back
            import traceback

            with open(_LOG, "a") as log:
                log.write(f"import of {name}:\\n{''.join(traceback.format_stack(limit=15)[:-1])}\\n")
            raise ModuleNotFoundError(f"{name} refused: the runtime install never imports it", name=name)
        return None


if _LOG:
    sys.meta_path.insert(0, _RefuseExport())
''' % (FORBIDDEN,)


def _cache_dir() -> Path:
    base = os.environ.get("EDGEPRUNE_TEST_VENV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeprune", "test-venvs")
    return Path(base)


def _base_dependencies() -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH or user site leaking the dev environment's packages into the venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1", COLUMNS="200", TERM="dumb", **extra)
    return env


def _run(cmd: list, *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _clean_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def _check(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _dependency_venv() -> Path:
    """A venv with the base dependencies only, made once per dependency list and Python (cached)."""
    deps = _base_dependencies()
    key = hashlib.sha256(json.dumps([deps, sys.version, sys.executable]).encode()).hexdigest()[:12]
    venv = _cache_dir() / f"runtime-deps-{key}"
    if (venv / "READY").is_file():
        return venv
    tmp = venv.with_name(f"{venv.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _check(_run([sys.executable, "-m", "venv", "--without-pip", tmp], cwd=tmp.parent), "python -m venv")
    # The dev environment's pip installs into the venv (pip --python), from the configured indexes.
    _check(_run([sys.executable, "-m", "pip", "--python", tmp / "bin" / "python", "install", "--no-input",
                 "--disable-pip-version-check", *deps], cwd=tmp.parent, timeout=900), "pip install (base dependencies)")
    (tmp / "READY").write_text(json.dumps(deps) + "\n")
    try:
        tmp.rename(venv)
    except OSError:  # another run made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return venv


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A fresh venv layered on the cached dependency venv, with this tree's edgeprune and the import guard."""
    pytest.importorskip("setuptools")  # builds edgeprune below (--no-build-isolation)
    deps = _dependency_venv()
    work = tmp_path_factory.mktemp("runtime_install")
    venv = work / "venv"
    _check(_run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work), "python -m venv")
    site = _site_packages(venv)
    (site / "_edgeprune_deps.pth").write_text(f"import site; site.addsitedir({str(_site_packages(deps))!r})\n")
    (site / "_edgeprune_guard.py").write_text(GUARD)
    (site / "00_edgeprune_guard.pth").write_text("import _edgeprune_guard\n")
    src = work / "src"  # a copy: the build writes egg-info and build/ beside the sources, not into the checkout
    shutil.copytree(ROOT / "edgeprune", src / "edgeprune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    # The wheel is built here (this environment has setuptools), then installed there without dependencies.
    _check(_run([sys.executable, "-m", "pip", "wheel", "--no-input", "--no-deps", "--no-build-isolation", "--no-index",
                 "--wheel-dir", work / "wheel", src], cwd=work), "pip wheel edgeprune")
    _check(_run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-input", "--no-deps",
                 "--no-index", *sorted((work / "wheel").glob("edgeprune-*.whl"))], cwd=work), "pip install edgeprune --no-deps")
    probe = _check(_run([venv / "bin" / "python", "-c", "import importlib.util as u, edgeprune; "
                         "print(edgeprune.__file__); print([m for m in ('torch', 'timm', 'transformers', 'onnxscript', "
                         "'torchvision') if u.find_spec(m)])"], cwd=work), "probe")
    where, present = probe.stdout.splitlines()[-2:]
    assert Path(where).resolve().is_relative_to(venv.resolve()), f"edgeprune came from {where}, not the venv"
    assert present == "[]", f"the runtime venv has {present} installed"
    sizes = {"runtime venv": _du(deps), "dev site-packages": _du(Path(sysconfig.get_paths()["purelib"]))}
    print(f"\nsizes: {sizes}")
    return venv


def _du(path: Path) -> str:
    try:
        return subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True, timeout=120).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


@pytest.fixture(scope="module")
def engine_set(tmp_path_factory) -> Path:
    """A calibrated engine set, exported here (the dev environment has the export extra)."""
    return export_tiny_set(tmp_path_factory.mktemp("set") / "SET", [1.0, 0.75], 4, [0.5] * 3, [0.25] * 3)


def _guarded(venv: Path, cmd: list, work: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the venv with the guard on; no forbidden import may have been tried."""
    log = work / "forbidden-imports.log"
    log.unlink(missing_ok=True)
    env = _clean_env(EDGEPRUNE_FORBID_LOG=str(log), EDGEPRUNE_CACHE_DIR=str(work / "cache"),
                     PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = _run(cmd, cwd=work, env=env, timeout=timeout)
    assert not log.exists(), f"the runtime install imported what it must not:\n{log.read_text()[:4000]}"
    return _check(proc, " ".join(map(str, cmd[:3])))


RUNTIME_SCRIPT = """
import sys
import numpy as np
from edgeprune.runtime import Runtime
from edgeprune.runtime.temporal import TemporalRuntime

assert TemporalRuntime
rt = Runtime(sys.argv[1], target_ms=30)
rng = np.random.default_rng(0)
results = [rt.infer(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(8)]
print("budgets", sorted({r.budget for r in results}), "shape", next(iter(results[-1].outputs.values())).shape)

from edgeprune.core.errors import EdgepruneError
from edgeprune.serving.serve import prepare_service

service = prepare_service(sys.argv[1], max_batch=1, rounds=3)  # serve --max-batch 1: no batch-N export
print("served", sorted(m["batch"] for m in service.members))
try:
    prepare_service(sys.argv[1], max_batch=2, rounds=3)
except EdgepruneError as exc:
    print("max-batch 2:", exc)
print("loaded", sorted(m for m in ("torch", "timm", "transformers", "onnxscript", "torchvision") if m in sys.modules))
"""


def test_runtime_without_torch(runtime_venv, engine_set, tmp_path):
    started = time.perf_counter()
    proc = _guarded(runtime_venv, [runtime_venv / "bin" / "python", "-c", RUNTIME_SCRIPT, engine_set], tmp_path)
    assert "budgets [" in proc.stdout and "loaded []" in proc.stdout, proc.stdout
    assert "served [1, 1]" in proc.stdout and "max-batch 2: serving at --max-batch 2" in proc.stdout, proc.stdout
    assert "'export' extra" in proc.stdout, proc.stdout
    print(f"Runtime in the runtime venv: {time.perf_counter() - started:.1f} s; {proc.stdout.strip()}")


def test_demo_without_torch(runtime_venv, engine_set, tmp_path):
    videos = sorted(VIDEO_DIR.glob("*.mp4"), key=lambda p: p.stat().st_size) if VIDEO_DIR.is_dir() else []
    if not videos:
        pytest.skip(f"no clips in {VIDEO_DIR}")
    out = tmp_path / "demo.mp4"
    started = time.perf_counter()
    proc = _guarded(runtime_venv, ["edgeprune", "demo", videos[0], "--model", engine_set, "--out", out,
                                   "--max-frames", "12", "--out-height", "240"], tmp_path)
    assert out.stat().st_size > 0
    metrics = json.loads(out.with_name("demo.metrics.json").read_text())
    assert metrics["summary"]["frames"] == 12 and metrics["kind"].startswith("engine set"), metrics["kind"]
    print(f"demo in the runtime venv: {time.perf_counter() - started:.1f} s")
    print((proc.stdout + proc.stderr).strip()[-600:])


@pytest.mark.parametrize("command", [["export", ROOT / "models" / "scene_seg"], ["demo"]], ids=["export", "default-demo"])
def test_export_needs_the_export_extra(runtime_venv, tmp_path, command):
    """`export`, and `demo`'s first-use export of the reference model: one line naming the extra, exit 2."""
    env = _clean_env(EDGEPRUNE_CACHE_DIR=str(tmp_path / "cache"))
    target = tmp_path / ("X.mp4" if command[0] == "demo" else "X")
    # from the checkout, where the demo finds models/scene_seg (the console script puts its bin folder on sys.path, not ".")
    proc = _run([runtime_venv / "bin" / "edgeprune", *command, "--out", target], cwd=ROOT, env=env)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and "'export' extra" in lines[0] and "edgeprune[export]" in lines[0], lines
    assert not target.exists()
    print(f"{command[0]} in the runtime venv: {lines[0]}")


def test_guard_records_a_forbidden_import(runtime_venv, tmp_path):
    """The hook itself works: an import of the export stages is refused and logged."""
    log = tmp_path / "forbidden-imports.log"
    proc = _run([runtime_venv / "bin" / "python", "-c", f"import {EXPORT_STAGE}"], cwd=tmp_path,
                env=_clean_env(EDGEPRUNE_FORBID_LOG=str(log)))
    assert proc.returncode != 0 and "refused" in proc.stderr, proc.stderr
    assert log.read_text().startswith(f"import of {EXPORT_STAGE}:"), log.read_text()
