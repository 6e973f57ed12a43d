#!/usr/bin/env bash
# Build libedgeprune.so (and its tests and example) into native/build (or $EDGEPRUNE_NATIVE_BUILD).
#
#   native/build.sh                 configure if needed, build, print the library path
#   BUILD_TYPE=Debug native/build.sh
#   EDGEPRUNE_NATIVE_BUILD=native/build-asan CMAKE_ARGS="-DEDGEPRUNE_SANITIZE=address" native/build.sh
#
# Third-party headers: ONNX Runtime's C/C++ API headers are in no wheel and in no Debian 12 package;
# Debian 13 (trixie) ships them as libonnxruntime-dev. They, nlohmann/json (nlohmann-json3-dev) and
# jsoncons (libjsoncons-dev, for its JSON Schema validator) are fetched once with `apt-get download`
# through a throw-away apt configuration (the system's apt setup is never touched) and unpacked into
# native/build/third_party, which git ignores: nothing third-party is committed. ORT_INCLUDE_DIR /
# NLOHMANN_INCLUDE_DIR / JSONCONS_INCLUDE_DIR use headers you already have. Nothing is linked: all
# three are headers only.
# Idempotent: a second run only lets cmake/make check timestamps (well under a second).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="${EDGEPRUNE_NATIVE_BUILD:-$here/build}"
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac
third="$here/build/third_party"   # shared by every build folder (sanitizer builds too)
jobs="${EDGEPRUNE_JOBS:-2}"

die() { echo "native/build.sh: error: $*" >&2; exit 1; }

for tool in cmake make; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found; install it (Debian: apt-get install cmake make)"
done
command -v "${CXX:-c++}" >/dev/null 2>&1 || die "no C++ compiler (${CXX:-c++}) found; install g++ (Debian: apt-get install g++)"
command -v "${CC:-cc}" >/dev/null 2>&1 || die "no C compiler (${CC:-cc}) found; install gcc"

# Debian packages fetched for their headers only, with `apt-get download` through a throw-away apt
# configuration: the system's apt sources, lists and caches are never touched. One `apt-get update`
# (about 2 s) serves every package of a run. $1: the Debian suite, rest: the packages; the .debs are
# left in "$debs" (a temporary folder removed when the script exits).
debs=""
override_hint="set ORT_INCLUDE_DIR / NLOHMANN_INCLUDE_DIR / JSONCONS_INCLUDE_DIR to headers you already have"
fetch_debs() {
  local suite="$1"; shift
  local what="$*"
  command -v apt-get >/dev/null 2>&1 || die "headers missing ($what) and apt-get is not available; $override_hint"
  command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (needed to unpack $what); $override_hint"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "$keyring missing (package debian-archive-keyring); $override_hint"
  local tmp; tmp="$(mktemp -d)"
  debs="$tmp"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  mkdir -p "$tmp/etc/sources.list.d" "$tmp/etc/preferences.d" "$tmp/state/lists/partial" "$tmp/cache/archives/partial"
  # The Debian mirror this machine's apt already uses (its main archive line), asked for $suite.
  local mirror
  mirror="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -n1)"
  [ -n "$mirror" ] || mirror="$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -n1)"
  [ -n "$mirror" ] || die "no Debian mirror found in this machine's apt sources; $override_hint"
  cat >"$tmp/etc/sources.list.d/$suite.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite
Components: main
Signed-By: $keyring
EOF
  cat >"$tmp/apt.conf" <<EOF
Dir::Etc "$tmp/etc";
Dir::Etc::sourcelist "/dev/null";
Dir::Etc::sourceparts "$tmp/etc/sources.list.d";
Dir::Etc::preferencesparts "$tmp/etc/preferences.d";
Dir::State "$tmp/state";
Dir::State::status "/var/lib/dpkg/status";
Dir::Cache "$tmp/cache";
APT::Architecture "$(dpkg --print-architecture)";
EOF
  echo "native/build.sh: fetching headers from Debian $suite: $what" >&2
  APT_CONFIG="$tmp/apt.conf" apt-get -qq update >"$tmp/update.log" 2>&1 \
    || die "apt-get update for $suite failed ($(tail -n1 "$tmp/update.log")); $override_hint"
  (cd "$tmp" && APT_CONFIG="$tmp/apt.conf" apt-get -qq download "$@" >"$tmp/download.log" 2>&1) \
    || die "apt-get download $what failed ($(tail -n1 "$tmp/download.log")); $override_hint"
}

# Unpacks the downloaded package $1 and copies the include folder that holds $2 (a path relative to
# it, e.g. nlohmann/json.hpp) into $3/include; records the .deb's name and its copyright file.
unpack_headers() {
  local package="$1" header="$2" dest="$3"
  local deb; deb="$(ls "$debs/${package}"_*.deb 2>/dev/null | head -n1)"
  [ -n "$deb" ] || die "$package was not downloaded"
  rm -rf "$debs/x" && dpkg-deb -x "$deb" "$debs/x"
  local found; found="$(find "$debs/x" -path "*/$header" | head -n1)"
  [ -n "$found" ] || die "$package holds no $header"
  rm -rf "$dest" && mkdir -p "$dest/include"
  cp -R "${found%/"$header"}"/. "$dest/include/"
  basename "$deb" >"$dest/SOURCE"
  find "$debs/x" -path '*copyright*' -type f -exec cp {} "$dest/copyright" \; -quit
}

# Headers, unless given:
#   ORT_INCLUDE_DIR       a folder holding onnxruntime_c_api.h and onnxruntime_cxx_api.h
#   NLOHMANN_INCLUDE_DIR  a folder holding nlohmann/json.hpp (e.g. /usr/include with nlohmann-json3-dev)
#   JSONCONS_INCLUDE_DIR  a folder holding jsoncons_ext/jsonschema/jsonschema.hpp (jsoncons >= 1.0)
# All are fetched from Debian 13 (trixie): libonnxruntime-dev 1.21 (MIT; only its headers are used:
# its library needs glibc >= 2.38), nlohmann-json3-dev 3.11 (MIT, header-only; Debian 12's 3.11.2
# works as well) and libjsoncons-dev 1.3 (Boost Software License, header-only: its JSON Schema
# validator, Draft 2020-12; Debian 12 has no jsoncons).
ort_include="${ORT_INCLUDE_DIR:-}"
json_include="${NLOHMANN_INCLUDE_DIR:-}"
jsoncons_include="${JSONCONS_INCLUDE_DIR:-}"
wanted=()
if [ -n "$ort_include" ]; then
  [ -f "$ort_include/onnxruntime_cxx_api.h" ] || die "ORT_INCLUDE_DIR=$ort_include holds no onnxruntime_cxx_api.h"
else
  ort_include="$third/onnxruntime/include"
  [ -f "$ort_include/onnxruntime_cxx_api.h" ] || wanted+=(libonnxruntime-dev)
fi
if [ -n "$json_include" ]; then
  [ -f "$json_include/nlohmann/json.hpp" ] || die "NLOHMANN_INCLUDE_DIR=$json_include holds no nlohmann/json.hpp"
else
  json_include="$third/nlohmann-json/include"
  [ -f "$json_include/nlohmann/json.hpp" ] || wanted+=(nlohmann-json3-dev)
fi
if [ -n "$jsoncons_include" ]; then
  [ -f "$jsoncons_include/jsoncons_ext/jsonschema/jsonschema.hpp" ] \
    || die "JSONCONS_INCLUDE_DIR=$jsoncons_include holds no jsoncons_ext/jsonschema/jsonschema.hpp"
else
  jsoncons_include="$third/jsoncons/include"
  [ -f "$jsoncons_include/jsoncons_ext/jsonschema/jsonschema.hpp" ] || wanted+=(libjsoncons-dev)
fi
if [ "${#wanted[@]}" -gt 0 ]; then
  fetch_debs trixie "${wanted[@]}"
  for package in "${wanted[@]}"; do
    case "$package" in
      libonnxruntime-dev) unpack_headers "$package" onnxruntime_c_api.h "$third/onnxruntime" ;;
      nlohmann-json3-dev) unpack_headers "$package" nlohmann/json.hpp "$third/nlohmann-json" ;;
      libjsoncons-dev) unpack_headers "$package" jsoncons/json.hpp "$third/jsoncons" ;;
    esac
  done
fi

# The JSON Schemas of the manifests the library reads; CMake compiles them into it (src/schema.cpp).
schema_dir="${EDGEPRUNE_SCHEMA_DIR:-$(dirname "$here")/edgeprune/artifacts/schemas}"
[ -f "$schema_dir/engine-set.schema.json" ] || die "no manifest schemas (engine-set.schema.json ...) in $schema_dir; set EDGEPRUNE_SCHEMA_DIR"

# OpenVINO's C headers, for the OpenVINO backend: the openvino wheel's own (site-packages/openvino/include),
# found without importing it (importing loads its libraries: a second or more). OPENVINO_INCLUDE_DIR
# names a folder holding openvino/c/openvino.h instead; OPENVINO_INCLUDE_DIR=none builds without the
# backend. Without the wheel the library is built without it ("openvino" engines are refused, naming
# the package) and every other backend works: nothing of OpenVINO is ever linked.
ov_include="${OPENVINO_INCLUDE_DIR:-}"
if [ "$ov_include" = none ]; then
  ov_include=""
elif [ -n "$ov_include" ]; then
  [ -f "$ov_include/openvino/c/openvino.h" ] || die "OPENVINO_INCLUDE_DIR=$ov_include holds no openvino/c/openvino.h"
else
  python="${PYTHON:-$(command -v python3 || command -v python || true)}"
  if [ -n "$python" ]; then
    ov_package="$("$python" -c 'import importlib.util as u; s = u.find_spec("openvino"); print(s.submodule_search_locations[0] if s and s.submodule_search_locations else "")' 2>/dev/null || true)"
    [ -n "$ov_package" ] && [ -f "$ov_package/include/openvino/c/openvino.h" ] && ov_include="$ov_package/include"
  fi
  [ -n "$ov_include" ] || echo "native/build.sh: note: no openvino package (pip install openvino): building without the OpenVINO backend" >&2
fi

build_type="${BUILD_TYPE:-Release}"
mkdir -p "$build"
# Configure when never done, when CMakeLists.txt changed, or when a header folder moved.
if [ ! -f "$build/Makefile" ] || [ "$build/CMakeCache.txt" -ot "$here/CMakeLists.txt" ] \
   || ! grep -qxF "ORT_INCLUDE_DIR:PATH=$ort_include" "$build/CMakeCache.txt" \
   || ! grep -qxF "NLOHMANN_INCLUDE_DIR:PATH=$json_include" "$build/CMakeCache.txt" \
   || ! grep -qxF "JSONCONS_INCLUDE_DIR:PATH=$jsoncons_include" "$build/CMakeCache.txt" \
   || ! grep -qxF "EDGEPRUNE_SCHEMA_DIR:PATH=$schema_dir" "$build/CMakeCache.txt" \
   || ! grep -qxF "OPENVINO_INCLUDE_DIR:PATH=$ov_include" "$build/CMakeCache.txt"; then
  # shellcheck disable=SC2086
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE="$build_type" -DORT_INCLUDE_DIR="$ort_include" \
    -DNLOHMANN_INCLUDE_DIR="$json_include" -DJSONCONS_INCLUDE_DIR="$jsoncons_include" -DEDGEPRUNE_SCHEMA_DIR="$schema_dir" \
    -DOPENVINO_INCLUDE_DIR="$ov_include" ${CMAKE_ARGS:-} >"$build/configure.log" 2>&1 \
    || die "cmake configure failed: $(grep -m1 -i 'error' "$build/configure.log" || tail -n1 "$build/configure.log") (log: $build/configure.log)"
fi
if ! make -C "$build" -j"$jobs" --no-print-directory >"$build/build.log" 2>&1; then
  die "compile failed: $(grep -m1 -E 'error|Error' "$build/build.log" || tail -n1 "$build/build.log") (log: $build/build.log)"
fi
echo "$build/libedgeprune.so"
