#!/usr/bin/env bash
# Builds memfit and runs every test: the GoogleTest suite, the memfit-replay and
# memfit-plan command-line tests through ctest, once in a normal build and once
# under AddressSanitizer + UndefinedBehaviorSanitizer with the allocator's debug
# asserts (MEMFIT_DEBUG=1; MEMFIT_SKIP_ASAN=1 skips the second), then each
# libFuzzer harness of tests/fuzz/ for a short time (MEMFIT_FUZZ_SECONDS, default
# 20; MEMFIT_SKIP_FUZZ=1 skips them), then the Python package's pytest suite
# against the normal build with a real PyTorch on CPU, one worker per core (each
# test file in one worker: its module fixtures are measured once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/install-python-deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
status=0
SECONDS=0
took() { echo "== $1 took $SECONDS s in all so far =="; }

run_suite() { # build-dir, extra cmake args...
  local dir=$1; shift
  mkdir -p "$dir"
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >"$dir/configure.log" 2>&1 ||
    { cat "$dir/configure.log"; return 1; }
  cmake --build "$dir" -j"$jobs" >"$dir/build.log" 2>&1 || { tail -50 "$dir/build.log"; return 1; }
  (cd "$dir" && ctest --output-on-failure -j"$jobs" --timeout 600)
}

echo "== memfit tests (RelWithDebInfo) =="
run_suite build || status=1
took "the RelWithDebInfo suite"
if [ "${MEMFIT_SKIP_ASAN:-0}" != "1" ]; then
  echo "== memfit tests (AddressSanitizer + UndefinedBehaviorSanitizer) =="
  ASAN_OPTIONS=detect_leaks=1 run_suite build-asan -DMEMFIT_SANITIZE=ON -DMEMFIT_DEBUG=1 || status=1
  took "the sanitizer suite"
fi
if [ "${MEMFIT_SKIP_FUZZ:-0}" != "1" ]; then
  echo "== memfit fuzzers (libFuzzer, ${MEMFIT_FUZZ_SECONDS:-20} s each) =="
  bash tests/fuzz/run.sh || status=1
  took "the fuzzers"
fi
echo "== memfit Python tests (pytest, PyTorch on CPU) =="
MEMFIT_BUILD_DIR="$PWD/build" PYTHONPATH="$PWD/bindings/python${PYTHONPATH:+:$PYTHONPATH}" \
  python3 -m pytest tests/python -q -p no:cacheprovider -n "$jobs" --dist loadfile || status=1
took "the Python tests"
exit $status
