#!/usr/bin/env bash
# libFuzzer run of manifest reading (native/fuzz/fuzz_manifest.cpp: the JSON reader, the embedded JSON
# Schemas and every document check of the loaders), built with clang's
# -fsanitize=fuzzer,address,undefined into native/build-fuzz.
#
#   native/fuzz.sh [SECONDS] [SET] [TEMPORAL] [BUILT]
#
# Runs for SECONDS (default 60; -max_total_time) and exits non-zero on any finding (crash, leak,
# undefined behaviour, an exception that is not a status, a timeout or running out of memory); what
# libFuzzer found is kept in native/build-fuzz/findings/. The seed corpus is the committed tiny seeds
# (native/fuzz/seeds) plus the manifests of a real engine set, its built engines and a temporal
# artifact, copied into a temporary corpus at run time (SET / TEMPORAL / BUILT, or exported and built
# here from models/scene_seg with the edgeprune CLI; nothing exported is committed). Needs clang with libFuzzer
# (Debian: apt-get install -y clang); installs nothing itself.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
die() { echo "fuzz.sh: error: $*" >&2; exit 2; }

seconds="${1:-60}"
case "$seconds" in ''|*[!0-9]*) die "SECONDS must be a whole number, got '$seconds'" ;; esac
set_dir="${2:-}"
temporal_dir="${3:-}"
built="${4:-}"

cc="${FUZZ_CC:-clang}"
cxx="${FUZZ_CXX:-clang++}"
if ! command -v "$cxx" >/dev/null 2>&1 || ! command -v "$cc" >/dev/null 2>&1; then
  die "$cxx not found: the fuzz target needs clang with libFuzzer (Debian: apt-get install -y clang)"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' >"$work/probe.cpp"
"$cxx" -fsanitize=fuzzer "$work/probe.cpp" -o "$work/probe" >/dev/null 2>&1 \
  || die "$cxx cannot link -fsanitize=fuzzer (libFuzzer missing; Debian's clang package ships it)"

build="$here/build-fuzz"
EDGEPRUNE_NATIVE_BUILD="$build" CC="$cc" CXX="$cxx" BUILD_TYPE=RelWithDebInfo CMAKE_ARGS="-DEDGEPRUNE_FUZZ=ON" \
  "$here/build.sh" >/dev/null
[ -x "$build/fuzz_manifest" ] || die "no $build/fuzz_manifest after the build (see $build/build.log)"

# Seed corpus: the committed seeds and the real manifests, each under its own name.
corpus="$work/corpus"
mkdir -p "$corpus"
cp "$here"/fuzz/seeds/*.json "$corpus/"
if [ -z "$set_dir" ] || [ -z "$temporal_dir" ]; then
  if command -v edgeprune >/dev/null 2>&1; then
    if [ -z "$set_dir" ]; then
      set_dir="$work/set"
      (cd "$root" && edgeprune export models/scene_seg --budgets 1.0,0.5 --out "$set_dir" >/dev/null 2>&1 \
        && edgeprune calibrate "$set_dir" --rounds 3 >/dev/null 2>&1) || { echo "fuzz.sh: warning: could not export an engine set; seeding without one" >&2; set_dir=""; }
    fi
    if [ -z "$temporal_dir" ]; then
      temporal_dir="$work/t25"
      (cd "$root" && edgeprune export models/scene_seg --temporal 0.25 --out "$temporal_dir" >/dev/null 2>&1) \
        || { echo "fuzz.sh: warning: could not export a temporal artifact; seeding without one" >&2; temporal_dir=""; }
    fi
  else
    echo "fuzz.sh: warning: no edgeprune CLI to export real manifests; seeding with native/fuzz/seeds only" >&2
  fi
fi
copy_members() {  # $1 = folder, $2 = file name in each member folder, $3 = label in the corpus
  local file
  for file in "$1"/*/"$2"; do
    cp "$file" "$corpus/real-$3-$(basename "$(dirname "$file")").json"
  done
}
if [ -n "$set_dir" ]; then
  [ -f "$set_dir/set.json" ] || die "$set_dir holds no set.json"
  cp "$set_dir/set.json" "$corpus/real-set.json"
  copy_members "$set_dir" manifest.json member
  if [ -z "$built" ] && command -v edgeprune >/dev/null 2>&1; then
    built="$work/built"
    if edgeprune build "$set_dir" --out "$built" >/dev/null 2>&1; then
      edgeprune calibrate "$set_dir" --engines "$built" --rounds 3 >/dev/null 2>&1 || true
    else
      echo "fuzz.sh: warning: could not build the set's engines; seeding without engines.json" >&2
      built=""
    fi
  fi
fi
if [ -n "$built" ]; then
  [ -f "$built/engines.json" ] || die "$built holds no engines.json"
  cp "$built/engines.json" "$corpus/real-engines.json"
  copy_members "$built" engine.json engine
fi
if [ -n "$temporal_dir" ]; then
  [ -f "$temporal_dir/manifest.json" ] || die "$temporal_dir holds no manifest.json"
  cp "$temporal_dir/manifest.json" "$corpus/real-temporal.json"
fi
echo "fuzz.sh: seed corpus: $(ls "$corpus" | wc -l) files ($(ls "$corpus" | grep -c '^real-' || true) real manifests); fuzzing for ${seconds} s"

findings="$build/findings"
rm -rf "$findings" && mkdir -p "$findings"
largest="$(wc -c "$corpus"/* | sort -n | tail -n2 | head -n1 | awk '{print $1}')"
max_len=$(( largest > 65536 ? largest : 65536 ))
status=0
# -timeout: one input taking 10 s is a finding; -rss_limit_mb: so is one needing 2 GiB.
"$build/fuzz_manifest" "$corpus" -dict="$here/fuzz/manifest.dict" -max_total_time="$seconds" -max_len="$max_len" \
  -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$findings/" >"$work/fuzz.log" 2>&1 || status=$?
grep -E "^(INFO: Seed|#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb|Done)" "$work/fuzz.log" || true
if [ "$status" -ne 0 ] || [ -n "$(ls -A "$findings")" ]; then
  cp "$work/fuzz.log" "$findings/fuzz.log"
  grep -m20 -E "ERROR|runtime error|SUMMARY|threw|deadly|Test unit written|fuzz_manifest:" "$work/fuzz.log" | sed 's/^/    /' || tail -n20 "$work/fuzz.log"
  echo "fuzz.sh: FINDING (libFuzzer exit $status); inputs and log kept in $findings" >&2
  echo "fuzz.sh: reproduce with: $build/fuzz_manifest $findings/<file>" >&2
  exit 1
fi
rm -rf "$findings"
echo "fuzz.sh: no finding in ${seconds} s"
