#!/usr/bin/env bash
# Build libedgeprune.so (and its tests and example) into native/build (or $EDGEPRUNE_NATIVE_BUILD).
#
#   native/build.sh                 configure if needed, build, print the library path
#   BUILD_TYPE=Debug native/build.sh
#   EDGEPRUNE_NATIVE_BUILD=native/build-asan CMAKE_ARGS="-DEDGEPRUNE_SANITIZE=address" native/build.sh
#
# ONNX Runtime's C header is in no wheel and in no Debian 12 package; Debian 13 (trixie) ships it as
# libonnxruntime-dev. It is fetched once with `apt-get download` through a throw-away apt
# configuration (the system's apt setup is never touched) and unpacked into the build folder, which
# git ignores: nothing third-party is committed. Set ORT_INCLUDE_DIR to use headers you already have.
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

fetch_ort_headers() {
  local dest="$third/onnxruntime"
  [ -f "$dest/include/onnxruntime_c_api.h" ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "ONNX Runtime headers missing and apt-get is not available; set ORT_INCLUDE_DIR to a folder holding onnxruntime_c_api.h"
  command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (needed to unpack libonnxruntime-dev); set ORT_INCLUDE_DIR instead"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "$keyring missing (package debian-archive-keyring); set ORT_INCLUDE_DIR instead"
  local tmp; tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  mkdir -p "$tmp/etc/sources.list.d" "$tmp/etc/preferences.d" "$tmp/state/lists/partial" "$tmp/cache/archives/partial"
  # The Debian mirror this machine's apt already uses (its main archive line), asked for trixie.
  local mirror
  mirror="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -n1)"
  [ -n "$mirror" ] || mirror="$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -n1)"
  [ -n "$mirror" ] || die "no Debian mirror found in this machine's apt sources; set ORT_INCLUDE_DIR to a folder holding onnxruntime_c_api.h"
  cat >"$tmp/etc/sources.list.d/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie
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
  echo "native/build.sh: fetching ONNX Runtime headers (Debian trixie libonnxruntime-dev)" >&2
  APT_CONFIG="$tmp/apt.conf" apt-get -qq update >"$tmp/update.log" 2>&1 \
    || die "apt-get update for trixie failed ($(tail -n1 "$tmp/update.log")); set ORT_INCLUDE_DIR instead"
  (cd "$tmp" && APT_CONFIG="$tmp/apt.conf" apt-get -qq download libonnxruntime-dev >"$tmp/download.log" 2>&1) \
    || die "apt-get download libonnxruntime-dev failed ($(tail -n1 "$tmp/download.log")); set ORT_INCLUDE_DIR instead"
  local deb; deb="$(ls "$tmp"/libonnxruntime-dev_*.deb 2>/dev/null | head -n1)"
  [ -n "$deb" ] || die "libonnxruntime-dev was not downloaded"
  dpkg-deb -x "$deb" "$tmp/x"
  local header; header="$(find "$tmp/x" -name onnxruntime_c_api.h | head -n1)"
  [ -n "$header" ] || die "libonnxruntime-dev holds no onnxruntime_c_api.h"
  mkdir -p "$dest/include"
  cp "$(dirname "$header")"/*.h "$dest/include/"
  basename "$deb" >"$dest/SOURCE"
  find "$tmp/x" -path '*copyright*' -exec cp {} "$dest/copyright" \; -quit
}

if [ -n "${ORT_INCLUDE_DIR:-}" ]; then
  [ -f "$ORT_INCLUDE_DIR/onnxruntime_c_api.h" ] || die "ORT_INCLUDE_DIR=$ORT_INCLUDE_DIR holds no onnxruntime_c_api.h"
  ort_include="$ORT_INCLUDE_DIR"
else
  fetch_ort_headers
  ort_include="$third/onnxruntime/include"
fi

build_type="${BUILD_TYPE:-Release}"
mkdir -p "$build"
if [ ! -f "$build/Makefile" ] || [ "$build/CMakeCache.txt" -ot "$here/CMakeLists.txt" ]; then
  # shellcheck disable=SC2086
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE="$build_type" -DORT_INCLUDE_DIR="$ort_include" \
    ${CMAKE_ARGS:-} >"$build/configure.log" 2>&1 \
    || die "cmake configure failed: $(grep -m1 -i 'error' "$build/configure.log" || tail -n1 "$build/configure.log") (log: $build/configure.log)"
fi
if ! make -C "$build" -j"$jobs" --no-print-directory >"$build/build.log" 2>&1; then
  die "compile failed: $(grep -m1 -E 'error|Error' "$build/build.log" || tail -n1 "$build/build.log") (log: $build/build.log)"
fi
echo "$build/libedgeprune.so"
