"""libedgeprune gives the same results whatever C locale its host process runs in. The C program
native/tests/test_locale.c opens a set (or a temporal artifact) in the "C" locale and runs frames,
switches with setlocale(LC_ALL, LOCALE) and must get identical engines, reasons and labels. The
locales are built with localedef into a temporary LOCPATH folder: nothing on the system changes.

de_DE.UTF-8 has a decimal comma (the library used to refuse every set there: "corrupt set.json
(malformed number at byte 859)"); ps_AF.UTF-8's decimal separator is multibyte (U+066B), which
nlohmann/json's own locale handling gets wrong ("0.485" read as 0), hence the C-locale scope in
native/src/json.cpp."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

LOCALES = ("de_DE.UTF-8", "ps_AF.UTF-8")


@pytest.fixture(scope="session")
def locpath(tmp_path_factory):
    localedef = shutil.which("localedef")
    if localedef is None:
        pytest.skip("localedef not found: it builds the test locales (Debian: apt-get install locales)")
    missing = [n for n in LOCALES if not os.path.isfile(f"/usr/share/i18n/locales/{n.split('.')[0]}")]
    if missing:
        why = f"the locale sources of {', '.join(missing)} are not installed (Debian: apt-get install locales)"
        if os.environ.get("CI"):  # .ci/run installs them: in CI this check must run, never skip
            pytest.fail(why)
        pytest.skip(why)
    root = tmp_path_factory.mktemp("locales")
    for name in LOCALES:
        source, charmap = name.split(".")
        # localedef exits 1 on mere warnings; the compiled folder is what counts.
        proc = subprocess.run([localedef, "-i", source, "-f", charmap, str(root / name)], capture_output=True, text=True)
        assert (root / name / "LC_NUMERIC").is_file(), (
            f"localedef could not build {name} (exit {proc.returncode}: {proc.stderr.strip()[-300:]}); its source comes "
            f"with glibc's locale data (Debian: apt-get install locales)")
    return root


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("target", ["tiny_set", "tiny_temporal"])
def test_same_results_in_any_locale(native_lib, ort_library, locpath, locale, target, request):
    path = request.getfixturevalue(target)
    env = dict(os.environ, LOCPATH=str(locpath), EDGEPRUNE_ORT_LIBRARY=ort_library)
    proc = subprocess.run([str(native_lib.parent / "test_locale"), str(path), locale], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"identical in C and {locale}" in proc.stdout
