#!/usr/bin/env bash
# Sanitizer acceptance runs of libedgeprune (issue 12), each in its own build folder:
#   ASan+LSan  native/build-asan  1000 frames and 100 open/close cycles: no leak, no memory error
#   TSan       native/build-tsan  4 threads x 4 streams on one runtime: no data race
#   UBSan      native/build-ubsan the quick workload and the C API tests: no undefined behaviour
# ASan and UBSan also run the JSON/schema and SHA-256 tests of the internals (test_json, test_sha256)
# and, where localedef can build de_DE.UTF-8 and ps_AF.UTF-8 into a temporary LOCPATH, the locale test.
# Runs on an engine set and a temporal artifact: SET and TEMPORAL arguments, or exported from
# models/scene_seg into a temporary folder. Where the openvino wheel is installed (and the library has
# its backend), the set is also built for OpenVINO (`edgeprune build SET --backend openvino`) and each
# sanitizer runs it too (runs named *-openvino). Exits non-zero on any finding.
#   EDGEPRUNE_SANITIZER_RUNS=REGEX   run only the runs whose name matches (e.g. openvino); the builds
#                                    are made all the same
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
die() { echo "ci_sanitizers.sh: error: $*" >&2; exit 1; }

ort="${EDGEPRUNE_ORT_LIBRARY:-$(python -c 'from edgeprune.native import default_ort_library as f; print(f() or "")')}"
[ -n "$ort" ] || die "no ONNX Runtime library (install the onnxruntime wheel or set EDGEPRUNE_ORT_LIBRARY)"
export EDGEPRUNE_ORT_LIBRARY="$ort"

# The CLI through the interpreter: works from a checkout whatever the console script's state.
edgeprune() { (cd "$root" && python -m edgeprune.cli.main "$@"); }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
set_dir="${1:-}"
temporal_dir="${2:-}"
if [ -z "$set_dir" ]; then
  set_dir="$work/set"
  (cd "$root" && edgeprune export models/scene_seg --budgets 1.0,0.5 --out "$set_dir" >/dev/null \
    && edgeprune calibrate "$set_dir" --rounds 10 >/dev/null) || die "could not export the engine set"
fi
if [ -z "$temporal_dir" ]; then
  temporal_dir="$work/t25"
  (cd "$root" && edgeprune export models/scene_seg --temporal 0.25 --out "$temporal_dir" >/dev/null) \
    || die "could not export the temporal artifact"
fi

# The set's OpenVINO engines, when the wheel is there and the (plain) library was built with its backend.
ov_engines=""
ov="${EDGEPRUNE_OPENVINO_LIBRARY:-$(python -c 'from edgeprune.native import default_openvino_library as f; print(f() or "")')}"
if [ -n "$ov" ] && grep -qx "EDGEPRUNE_OPENVINO:INTERNAL=ON" "$here/build/CMakeCache.txt" 2>/dev/null; then
  export EDGEPRUNE_OPENVINO_LIBRARY="$ov"
  ov_engines="$work/ov"
  edgeprune build "$set_dir" --backend openvino --precision fp32 --device CPU --out "$ov_engines" >/dev/null \
    || die "could not build the set's OpenVINO engines"
  # oneTBB (OpenVINO's threading) dlopens its libtbbbind with RTLD_DEEPBIND, which every sanitizer
  # runtime refuses (google/sanitizers#611: the process dies at the first inference); this is oneTBB's
  # documented switch to load it without (uxlfoundation.github.io/oneTBB/main/intro/limitations.html).
  export TBB_ENABLE_SANITIZERS=1
else
  echo "ci_sanitizers.sh: note: no openvino wheel, or native/build has no OpenVINO backend: the OpenVINO runs are skipped"
fi

# Locales with a decimal comma (de_DE) and a multibyte separator (ps_AF), for test_locale.
locales=()
if command -v localedef >/dev/null 2>&1; then
  mkdir -p "$work/locales"
  for name in de_DE.UTF-8 ps_AF.UTF-8; do
    localedef -i "${name%%.*}" -f UTF-8 "$work/locales/$name" >/dev/null 2>&1 || true
    [ -f "$work/locales/$name/LC_NUMERIC" ] && locales+=("$name")
  done
fi
[ "${#locales[@]}" -gt 0 ] || echo "ci_sanitizers.sh: note: localedef could not build de_DE/ps_AF locales; test_locale not run"
export LOCPATH="$work/locales"

build() {  # $1 = sanitizer, $2 = folder
  EDGEPRUNE_NATIVE_BUILD="$here/$2" BUILD_TYPE=RelWithDebInfo CMAKE_ARGS="-DEDGEPRUNE_SANITIZE=$1" \
    "$here/build.sh" >/dev/null
}

status=0
run() {  # $1 = label, rest = command; its output is kept in $work/<label>.log
  local label="$1"; shift
  [[ "$label" =~ ${EDGEPRUNE_SANITIZER_RUNS:-.} ]] || return 0
  if "$@" >"$work/$label.log" 2>&1; then
    echo "ok      $label"
  else
    echo "FAILED  $label (exit $?):"
    grep -m5 -E "ERROR|WARNING|runtime error|leak|FAILED|SUMMARY" "$work/$label.log" | sed 's/^/    /' || tail -n5 "$work/$label.log"
    status=1
  fi
}

unit_tests() {  # $1 = label prefix, $2 = build folder: the C API, JSON, SHA-256 and locale tests
  local prefix="$1" dir="$here/$2" name target
  run "$prefix-c-api" env EDGEPRUNE_TEST_SET="$set_dir" "$dir/test_c_api"
  [ -z "$ov_engines" ] || run "$prefix-c-api-openvino" env EDGEPRUNE_TEST_SET="$set_dir" EDGEPRUNE_TEST_OPENVINO_ENGINES="$ov_engines" "$dir/test_c_api"
  run "$prefix-json" env EDGEPRUNE_TEST_SET="$set_dir" EDGEPRUNE_TEST_TEMPORAL="$temporal_dir" "$dir/test_json"
  run "$prefix-sha256" "$dir/test_sha256"
  for name in "${locales[@]}"; do
    for target in "$set_dir" "$temporal_dir"; do
      run "$prefix-locale-$name-$(basename "$target")" "$dir/test_locale" "$target" "$name"
    done
  done
}

build address build-asan
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=23"
# ONNX Runtime is loaded with dlopen and not instrumented; LSan still sees its allocations, and any
# block it reports as definitely lost fails the run.
for target in "$set_dir" "$temporal_dir"; do
  name="$(basename "$target")"
  run "asan-leaks-$name" env EDGEPRUNE_TEST_SET="$target" "$here/build-asan/test_stress" leaks
done
# OpenVINO's libraries are not instrumented either; LSan needs no suppression for them (none reported).
[ -z "$ov_engines" ] || run asan-leaks-openvino env EDGEPRUNE_TEST_SET="$set_dir" EDGEPRUNE_TEST_ENGINES="$ov_engines" \
  "$here/build-asan/test_stress" leaks
unit_tests asan build-asan
unset ASAN_OPTIONS

build thread build-tsan
export TSAN_OPTIONS="halt_on_error=1:exitcode=24:suppressions=$here/tests/tsan.supp"
for target in "$set_dir" "$temporal_dir"; do
  run "tsan-races-$(basename "$target")" env EDGEPRUNE_TEST_SET="$target" "$here/build-tsan/test_stress" races
done
[ -z "$ov_engines" ] || run tsan-races-openvino env EDGEPRUNE_TEST_SET="$set_dir" EDGEPRUNE_TEST_ENGINES="$ov_engines" \
  "$here/build-tsan/test_stress" races
unset TSAN_OPTIONS

build undefined build-ubsan
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=25"
for target in "$set_dir" "$temporal_dir"; do
  run "ubsan-$(basename "$target")" env EDGEPRUNE_TEST_SET="$target" "$here/build-ubsan/test_stress" quick
done
[ -z "$ov_engines" ] || run ubsan-openvino env EDGEPRUNE_TEST_SET="$set_dir" EDGEPRUNE_TEST_ENGINES="$ov_engines" \
  "$here/build-ubsan/test_stress" quick
unit_tests ubsan build-ubsan

[ "$status" -eq 0 ] && echo "ci_sanitizers.sh: all sanitizer runs clean"
exit "$status"
