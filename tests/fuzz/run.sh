#!/usr/bin/env bash
# tests/fuzz/run.sh — builds the libFuzzer harnesses with clang in a build
# directory of their own and runs each for a short fixed time over a scratch
# copy of its corpus; exits 1 if any crashes (README.md here). Without clang
# it prints a skip line and exits 0.
#   MEMFIT_FUZZ_SECONDS   seconds per fuzzer (default 20; 0: each corpus once)
#   MEMFIT_FUZZ_BUILD_DIR build directory (default build-fuzz)
#   MEMFIT_FUZZ_ONLY      run only these harnesses (e.g. "trace options")
#   MEMFIT_FUZZ_ARGS      more libFuzzer flags (e.g. "-jobs=2 -workers=2")
set -uo pipefail
cd "$(dirname "$0")/../.."

seconds=${MEMFIT_FUZZ_SECONDS:-20}
build=${MEMFIT_FUZZ_BUILD_DIR:-build-fuzz}
harnesses=${MEMFIT_FUZZ_ONLY:-profile trace options}
jobs=$(nproc 2>/dev/null || echo 2)
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
  echo "fuzz: MEMFIT_FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" >&2
  exit 2
fi

if ! command -v clang >/dev/null 2>&1 || ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz: skipped: clang not found (Debian 12: apt-get install clang libclang-rt-14-dev)"
  exit 0
fi
started=$(date +%s)

# clang without its runtime libraries (Debian: libclang-rt-N-dev) compiles
# but cannot link a fuzzer: say so instead of failing deep in the build.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
  >"$probe/probe.c"
if ! clang -fsanitize=fuzzer,address,undefined "$probe/probe.c" -o "$probe/probe" >"$probe/probe.log" 2>&1; then
  cat "$probe/probe.log" >&2
  version=$(clang -dumpversion | cut -d. -f1)
  echo "fuzz: clang cannot link -fsanitize=fuzzer: install libFuzzer (Debian: libclang-rt-$version-dev)" >&2
  exit 1
fi

mkdir -p "$build"
echo "fuzz: building the fuzzers in $build ($(clang --version | head -1))"
if ! CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEMFIT_SANITIZE=ON \
    -DMEMFIT_DEBUG=1 -DMEMFIT_FUZZ=ON -DMEMFIT_BUILD_BENCHMARKS=OFF -DMEMFIT_TORCH=OFF >"$build/configure.log" 2>&1; then
  cat "$build/configure.log"
  exit 1
fi
if ! cmake --build "$build" --target fuzzers -j"$jobs" >"$build/build.log" 2>&1; then
  tail -50 "$build/build.log"
  exit 1
fi

# Crash inputs are kept here (outside the source tree); the corpus the runs
# grow goes to a scratch directory and is thrown away.
artifacts=$build/fuzz-artifacts
mkdir -p "$artifacts"
crashed=0 total_execs=0
for name in $harnesses; do
  fuzzer=$build/tests/fuzz/fuzz_$name
  if [ ! -x "$fuzzer" ]; then
    echo "fuzz: $name: no fuzzer built at $fuzzer" >&2
    crashed=$((crashed + 1))
    continue
  fi
  work=$probe/$name
  mkdir -p "$work/corpus"
  cp -r tests/fuzz/corpus/"$name"/. "$work/corpus/"
  if [ "$seconds" -eq 0 ]; then limit=(-runs=0); else limit=(-max_total_time="$seconds"); fi
  # shellcheck disable=SC2086 # MEMFIT_FUZZ_ARGS is a list of flags
  "$fuzzer" "$work/corpus" "${limit[@]}" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
    -dict=tests/fuzz/"$name".dict -print_final_stats=1 -artifact_prefix="$artifacts/$name-" \
    ${MEMFIT_FUZZ_ARGS:-} >"$work/log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$work/log" | tail -1)
  corpus=$(find "$work/corpus" -type f | wc -l)
  total_execs=$((total_execs + ${execs:-0}))
  if [ $rc -eq 0 ]; then
    echo "fuzz: $name: ok, ${execs:-?} execs in ${secs:-?} s, corpus $corpus inputs"
  else
    crashed=$((crashed + 1))
    echo "fuzz: $name: CRASHED (exit $rc) after ${execs:-?} execs; the log's end:"
    grep -v '^#[0-9]' "$work/log" | tail -40
    cp "$work/log" "$artifacts/$name.log"
    echo "fuzz: $name: reproducer and log in $artifacts/ (reproduce: $fuzzer FILE)"
  fi
done
n=$(echo $harnesses | wc -w)
echo "fuzz: $n fuzzers, $crashed crashed, $total_execs execs, $(($(date +%s) - started)) s in all"
[ $crashed -eq 0 ]
