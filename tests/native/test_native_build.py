"""The public header is plain C99, only edgeprune_* symbols leave the library, and the C tests pass."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def test_header_compiles_as_strict_c99(native_lib, tmp_path):
    from edgeprune.native.library import NATIVE_DIR

    source = tmp_path / "use.c"
    source.write_text('#include "edgeprune/edgeprune.h"\n'
                      "int main(void) {\n"
                      "  edgeprune_options o; edgeprune_result r; edgeprune_runtime* rt = 0;\n"
                      "  edgeprune_status* s;\n"
                      "  edgeprune_options_init(&o); edgeprune_result_init(&r);\n"
                      "  s = edgeprune_open(\"x\", &o, &rt);\n"
                      "  edgeprune_status_free(s);\n"
                      "  return (int)edgeprune_abi_version() - EDGEPRUNE_ABI_VERSION;\n"
                      "}\n")
    cc = shutil.which("cc") or shutil.which("gcc")
    proc = subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", str(NATIVE_DIR / "include"),
                           str(source), "-L", str(native_lib.parent), "-ledgeprune", "-o", str(tmp_path / "use")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_only_edgeprune_symbols_are_exported(native_lib):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    out = subprocess.run([nm, "-D", "--defined-only", str(native_lib)], capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert names and all(n.startswith("edgeprune_") for n in names), [n for n in names if not n.startswith("edgeprune_")][:5]


def test_ctest(native_lib, tiny_set, ort_library):
    if shutil.which("ctest") is None:
        pytest.skip("ctest not found")
    env = dict(os.environ, EDGEPRUNE_TEST_SET=str(tiny_set), EDGEPRUNE_ORT_LIBRARY=ort_library)
    proc = subprocess.run(["ctest", "--output-on-failure"], cwd=native_lib.parent, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "100% tests passed" in proc.stdout and "Not Run" not in proc.stdout


def test_c_example_runs_a_folder_of_ppm_frames(native_lib, tiny_set, ort_library, tmp_path):
    from tests.native.conftest import moving_clip

    for i, frame in enumerate(moving_clip(3, 40, 48)):
        (tmp_path / f"f{i:03d}.ppm").write_bytes(b"P6\n48 40\n255\n" + frame.tobytes())
    proc = subprocess.run([str(native_lib.parent / "edgeprune_run"), str(tiny_set), str(tmp_path), "--ort", ort_library,
                           "--target", "1000"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("frame 0 budget 1.00 engine b1.00 provider cpu")
