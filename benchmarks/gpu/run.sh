#!/usr/bin/env bash
# benchmarks/gpu/run.sh — memfit's prepared GPU session (issue 11): build with CUDA, run the
# CUDA tests and compute-sanitizer on them, then PyTorch's allocators against memfit on the GPU,
# and write $OUT/gpu-report.{md,json} plus the logs. Every step runs under its own timeout from
# the budget table below, and the whole session fits one device call of at most 8 minutes.
# --dry-run: the same steps on a CPU-only machine (no GPU, no network), at tiny sizes.
# See benchmarks/gpu/README.md.
#
# usage: bash benchmarks/gpu/run.sh [--dry-run] [--out DIR] [--build-dir DIR] [--no-build]
#            [--skip STEP,..] [--only STEP,..] [--total SECONDS] [--keep-work] [--list]
set -uo pipefail
export LC_ALL=C # EPOCHREALTIME and printf's %f with a decimal point, whatever the machine's locale

# ----------------------------------------------------------------------------- budget table
# step        gpu  dry  what it does (on the GPU; the dry run's stand-ins are in README.md)
# The gpu column is the device call's: it sums to at most TOTAL_GPU. The dry column sizes the
# same steps on a 2-core CPU machine (README.md: measured times), where the build is slower.
BUDGET_TABLE='
env            10   30  versions: nvidia-smi, driver, CUDA, torch, python, gcc, cmake, git; warms import torch
deps            5    5  GoogleTest and jansson: the system ones, else the .debs carried in benchmarks/gpu/deps
configure      20   30  cmake -DCMAKE_BUILD_TYPE=Release -DMEMFIT_CUDA=ON (dry run: AUTO)
build          45  150  cmake --build -j(cores): libraries, memfit-plan, memfit-replay, the gtests
autoload        5    5  memfit-autoload.pth into python3 site-packages, for PYTORCH_CUDA_ALLOC_CONF=backend:memfit
ctest-cuda     20   20  ctest -R Cuda: the cuda backend on the real GPU
sanitizer      35   10  compute-sanitizer --tool memcheck --leak-check full on the CUDA gtests
train-native   25   40  GPT-2-small decoder, bf16 autocast, AdamW, 5+20 steps, batch 8 x 1024: native allocator
train-memfit   30   40  the same under backend:memfit; torch.cuda.memory_* vs memfit; OOM under a capacity
train-async    25   10  the same under backend:cudaMallocAsync
cuda-findings  75   20  benchmarks/gpu/cuda_findings.py: issue 10 findings only a GPU shows, a process each
memory-runs    40   60  at once: varying length x {memfit, native, native expandable}, fixed native; snapshots
traces         20   20  snapshots to .mftrace, memfit-replay --compare native against native real reserved
plan-verify    70  120  memfit plan + verify of the GPT at 20 GiB, then 4 bisection probes of its largest batch
ctest-all      25   60  ctest but the host-memory stress tests (dry run: ctest -L emulated-cuda)
report          5   10  gpu-report.md and gpu-report.json
'
TOTAL_GPU=470 # the device call is 480 s at most: 10 s for packing and the shell's own time
TOTAL_DRY=600 # a dry run's cap (it takes well under 2 minutes with a built tree: README.md)

# ----------------------------------------------------------------------------- set-up
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
GPU_DIR="$(dirname "$SELF")"
REPO="$(cd "$GPU_DIR/../.." && pwd)"
DRIVER="$GPU_DIR/gpu_session.py"
declare -A BUDGET=() GPU_BUDGET=() DRY_BUDGET=() DESC=() STATUS=()
ORDER=()
while read -r name gpu dry desc; do
  [ -n "$name" ] || continue
  GPU_BUDGET[$name]=$gpu
  DRY_BUDGET[$name]=$dry
  DESC[$name]=$desc
  ORDER+=("$name")
done <<<"$BUDGET_TABLE"

now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --------------------------------------------------------------------- the shell steps
# Each runs as `bash run.sh __step NAME` under timeout; the environment carries the settings.
# Exit 0 ok, 77 skipped (reason in $STEP_SKIP), anything else failed.
skip() { printf '%s\n' "$*" >"$STEP_SKIP"; echo "skipped: $*"; exit 77; }

step_env() { exec "$PY" "$DRIVER" env --out "$STEP_RESULT"; }

have_lib() { # name: a library in the usual places
  local d
  for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib /usr/local/lib64; do
    ls "$d"/"$1".* >/dev/null 2>&1 && return 0
  done
  return 1
}

step_deps() {
  local need=() root="$BUILD_DIR/carried-deps" d f
  : >"$WORK/cmake-args"
  if [ "${MEMFIT_GPU_USE_CARRIED:-0}" = 1 ]; then
    need=(gtest jansson)
  else
    { have_lib libgtest && { [ -e /usr/include/gtest/gtest.h ] || [ -e /usr/local/include/gtest/gtest.h ]; }; } ||
      need+=(gtest)
    { have_lib libjansson && { [ -e /usr/include/jansson.h ] || [ -e /usr/local/include/jansson.h ]; }; } ||
      need+=(jansson)
  fi
  if [ ${#need[@]} -eq 0 ]; then
    echo "GoogleTest and jansson: the system's"
    return 0
  fi
  echo "missing here: ${need[*]}; looking for carried .debs in $GPU_DIR/deps"
  local debs=("$GPU_DIR"/deps/*.deb)
  if [ ! -e "${debs[0]}" ]; then
    echo "no .debs in $GPU_DIR/deps (run benchmarks/gpu/prepare.sh first and carry that folder)"
    [[ " ${need[*]} " == *" gtest "* ]] && echo "-DMEMFIT_BUILD_TESTS=OFF" >>"$WORK/cmake-args"
    exit 1
  fi
  rm -rf "$root" && mkdir -p "$root"
  for f in "${debs[@]}"; do
    if command -v dpkg-deb >/dev/null 2>&1; then
      dpkg-deb -x "$f" "$root" || exit 1
    else # ar + tar: data.tar.* is the package's file tree
      d=$(mktemp -d) && (cd "$d" && ar x "$f" && tar -xf data.tar.* -C "$root") || exit 1
      rm -rf "$d"
    fi
    echo "unpacked $(basename "$f")"
  done
  # pkg-config files say prefix=/usr; CMake's pkg-config search takes them from CMAKE_PREFIX_PATH
  find "$root" -name '*.pc' -exec sed -i "s|^prefix=.*|prefix=$root/usr|" {} +
  echo "-DCMAKE_PREFIX_PATH=$root/usr" >>"$WORK/cmake-args"
  ls -d "$root"/usr/lib/*-linux-gnu 2>/dev/null | head -1 >"$WORK/ld-path"
  echo "carried deps under $root"
}

find_cuda_home() {
  local nvcc
  [ -n "${CUDA_HOME:-}" ] && [ -e "$CUDA_HOME/include/cuda.h" ] && { echo "$CUDA_HOME"; return; }
  nvcc=$(command -v nvcc 2>/dev/null) && [ -e "$(dirname "$nvcc")/../include/cuda.h" ] &&
    { (cd "$(dirname "$nvcc")/.." && pwd); return; }
  for d in /usr/local/cuda /usr/local/cuda-*; do
    [ -e "$d/include/cuda.h" ] && { echo "$d"; return; }
  done
}

step_configure() {
  local extra=() cuda=AUTO home
  [ "$MODE" = gpu ] && cuda=ON
  if [ "$MODE" = gpu ]; then
    home=$(find_cuda_home)
    [ -n "$home" ] && export CUDA_HOME="$home" && echo "CUDA_HOME=$home"
  fi
  [ -s "$WORK/cmake-args" ] && mapfile -t extra <"$WORK/cmake-args"
  set -x
  cmake -S "$REPO" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DMEMFIT_CUDA=$cuda -DMEMFIT_TORCH=AUTO \
    -DMEMFIT_PYTHON3="$PY" -DPython3_EXECUTABLE="$PY" "${extra[@]}"
}

# Three phases, so that a target that does not compile costs only what needs it: the
# libraries and tools (the comparisons need these), the gtest binary (ctest-cuda, sanitizer),
# then everything (ctest-all). Each phase that succeeds leaves a marker in $WORK.
step_build() {
  local libs=(memfit memfit_plan memfit-plan memfit-replay) targets t
  targets=$(cmake --build "$BUILD_DIR" --target help 2>/dev/null)
  for t in memfit_torch; do grep -qw "$t" <<<"$targets" && libs+=("$t"); done
  echo "== libraries: ${libs[*]}"
  cmake --build "$BUILD_DIR" -j"$JOBS" --target "${libs[@]}" || exit 1
  touch "$WORK/built-libs"
  if grep -qw memfit_tests <<<"$targets"; then
    echo "== memfit_tests"
    cmake --build "$BUILD_DIR" -j"$JOBS" --target memfit_tests && touch "$WORK/built-tests"
  fi
  echo "== everything"
  cmake --build "$BUILD_DIR" -j"$JOBS" || exit 1
  touch "$WORK/built-all"
}

step_autoload() {
  [ "$MODE" = gpu ] || skip "dry run: no CUDA allocator to switch; the CPU runs call memfit.install('cpu')"
  # It writes into the interpreter's site-packages (removed at exit): only on a GPU machine,
  # which is bare and given back after the session, never on a shared CPU one.
  [ "$HAVE_GPU" = 1 ] || skip "no GPU found (nvidia-smi -L, /dev/nvidia0): site-packages left alone"
  local site pth
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || exit 1
  if [ -e "$site/memfit-autoload.pth" ]; then
    echo "an installed memfit's .pth is already in $site"
  elif [ -d "$site" ] && [ -w "$site" ]; then
    pth="$site/memfit-gpu-session-autoload.pth"
    cp "$REPO/bindings/python/memfit-autoload.pth" "$pth" || exit 1
    echo "$pth" >"$WORK/autoload-pth"
    echo "installed $pth"
  else
    echo manual >"$WORK/autoload-manual"
    skip "$site is not writable: workers import memfit._autoload themselves before torch"
  fi
  PYTORCH_CUDA_ALLOC_CONF=backend:memfit PYTHONPATH="$REPO/bindings/python" "$PY" -c \
    'import sys; ok = "memfit._autoload" in sys.modules; print("autoload ran at start:", ok); sys.exit(0 if ok else 1)' ||
    { echo manual >"$WORK/autoload-manual"; exit 1; }
}

run_ctest() { # step-name, ctest args...
  local name=$1 rc junit=(); shift
  cd "$BUILD_DIR" || exit 1
  ctest --help 2>/dev/null | grep -q -- --output-junit && junit=(--output-junit "$STEP_DIR/junit.xml")
  ctest --output-on-failure --timeout 120 "${junit[@]}" "$@"
  rc=$?
  "$PY" "$DRIVER" ctest-summary --step "$name" --junit "$STEP_DIR/junit.xml" --log "$STEP_LOG" --rc $rc \
    --out "$STEP_RESULT" $([ "$MODE" = gpu ] && echo --require-gpu)
}

step_ctest_cuda() { run_ctest ctest-cuda -R Cuda; }
# The dry run's stand-in is the emulated-cuda label (the CUDA tests over tests/' emulated
# driver): CI already runs the whole suite on CPU, and on 2 cores it takes a minute or more.
# On the GPU it leaves out the host-memory stress tests: CPU work only, one of them alone ran
# 59 s here under load (README.md), and CI runs them on every change.
step_ctest_all() {
  if [ "${MEMFIT_GPU_FULL_CTEST:-0}" = 1 ]; then
    run_ctest ctest-all -j"$JOBS"
  elif [ "$MODE" = gpu ]; then
    echo "ctest without the host-memory stress tests (MEMFIT_GPU_FULL_CTEST=1: all of them)"
    run_ctest ctest-all -j"$JOBS" -E '^Stress[.]Host'
  else
    echo "dry run: ctest -L emulated-cuda (MEMFIT_GPU_FULL_CTEST=1: the whole suite)"
    run_ctest ctest-all -j"$JOBS" -L emulated-cuda
  fi
}

step_sanitizer() {
  [ -n "$SANITIZER" ] || skip "compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda*/bin)"
  [ "$MODE" = gpu ] || skip "no GPU (dry run); compute-sanitizer is at $SANITIZER"
  local bin="$BUILD_DIR/tests/memfit_tests" rc
  [ -x "$bin" ] || { echo "$bin is not built"; exit 1; }
  "$SANITIZER" --tool memcheck --leak-check full --error-exitcode 86 --print-limit 50 \
    "$bin" --gtest_filter='CudaTest.*:CudaBackend.*' --gtest_color=no
  rc=$?
  "$PY" "$DRIVER" sanitizer-summary --log "$STEP_LOG" --rc $rc --version "$SANITIZER_VERSION" --out "$STEP_RESULT"
}

if [ "${1:-}" = __step ]; then
  name=$2
  fn="step_${name//-/_}"
  "$fn"
  exit $?
fi

# --------------------------------------------------------------------------- options
MODE=gpu
OUT_DIR="${OUT:-./gpu-out}"
BUILD_DIR=""
NO_BUILD=0
SKIP_STEPS=","
ONLY_STEPS=""
TOTAL=""
KEEP_WORK=0
usage() { sed -n '2,10p' "$SELF" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) MODE=dry-run ;;
    --out) OUT_DIR=$2; shift ;;
    --out=*) OUT_DIR=${1#*=} ;;
    --build-dir) BUILD_DIR=$2; shift ;;
    --build-dir=*) BUILD_DIR=${1#*=} ;;
    --no-build) NO_BUILD=1 ;;
    --skip) SKIP_STEPS=",$2,"; shift ;;
    --only) ONLY_STEPS=",$2,"; shift ;;
    --total) TOTAL=$2; shift ;;
    --keep-work) KEEP_WORK=1 ;;
    --list)
      printf '%-14s %4s %4s  %s\n' step gpu dry what
      sum=0 dsum=0
      for n in "${ORDER[@]}"; do
        printf '%-14s %4s %4s  %s\n' "$n" "${GPU_BUDGET[$n]}" "${DRY_BUDGET[$n]}" "${DESC[$n]}"
        sum=$((sum + GPU_BUDGET[$n])) dsum=$((dsum + DRY_BUDGET[$n]))
      done
      printf '%-14s %4s %4s  (session limits: gpu %s s, dry run %s s)\n' total "$sum" "$dsum" "$TOTAL_GPU" "$TOTAL_DRY"
      exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for n in ${SKIP_STEPS//,/ } ${ONLY_STEPS//,/ }; do
  [ -n "${GPU_BUDGET[$n]:-}" ] || { echo "run.sh: unknown step $n (steps: ${ORDER[*]})" >&2; exit 2; }
done
[ -n "$BUILD_DIR" ] || { [ $MODE = gpu ] && BUILD_DIR="$REPO/build-gpu" || BUILD_DIR="$REPO/build-gpu-dry"; }
for n in "${ORDER[@]}"; do # MEMFIT_GPU_BUDGET_<STEP>=SECONDS changes one step's, for a rerun
  [ $MODE = gpu ] && BUDGET[$n]=${GPU_BUDGET[$n]} || BUDGET[$n]=${DRY_BUDGET[$n]}
  v="MEMFIT_GPU_BUDGET_$(tr 'a-z-' 'A-Z_' <<<"$n")"
  [ -n "${!v:-}" ] && BUDGET[$n]=${!v}
done
[ -n "$TOTAL" ] || { [ $MODE = gpu ] && TOTAL=$TOTAL_GPU || TOTAL=$TOTAL_DRY; }
mkdir -p "$OUT_DIR" "$BUILD_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
BUILD_DIR="$(cd "$BUILD_DIR" && pwd)"
PY="$(command -v "${PYTHON:-python3}")" || { echo "run.sh: no python3" >&2; exit 2; }
JOBS=$(nproc 2>/dev/null || echo 2)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/memfit-gpu.XXXXXX")
mkdir -p "$WORK/logs" "$WORK/results" "$WORK/snapshots" "$WORK/traces"
: >"$WORK/steps.tsv"
SANITIZER=$(command -v compute-sanitizer 2>/dev/null)
if [ -z "$SANITIZER" ]; then
  for d in "${CUDA_HOME:-/nonexistent}/bin" /usr/local/cuda/bin /usr/local/cuda-*/bin /opt/nvidia/compute-sanitizer; do
    [ -x "$d/compute-sanitizer" ] && { SANITIZER="$d/compute-sanitizer"; break; }
  done
fi
SANITIZER_VERSION=""
HAVE_GPU=0
smi=$(command -v nvidia-smi 2>/dev/null || ls /usr/local/nvidia/bin/nvidia-smi 2>/dev/null)
{ [ -n "$smi" ] && "$smi" -L 2>/dev/null | grep -q '^GPU'; } || [ -e /dev/nvidia0 ] && HAVE_GPU=1
if [ $MODE = gpu ] && [ $HAVE_GPU = 0 ]; then
  echo "run.sh: no GPU found (nvidia-smi -L, /dev/nvidia0); the GPU steps will fail. On a CPU machine: --dry-run" >&2
fi
[ -n "$SANITIZER" ] && SANITIZER_VERSION=$("$SANITIZER" --version 2>/dev/null | grep -io 'version [0-9.]*' | head -1)
export MODE BUILD_DIR WORK PY DRIVER REPO GPU_DIR JOBS SANITIZER SANITIZER_VERSION HAVE_GPU
export MEMFIT_GPU_MODE=$MODE MEMFIT_GPU_SANITIZER_VERSION="$SANITIZER_VERSION" MEMFIT_BUILD_DIR="$BUILD_DIR"
export PYTHONPATH="$REPO/bindings/python${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset PYTORCH_CUDA_ALLOC_CONF PYTORCH_ALLOC_CONF MEMFIT_CONF MEMFIT_INSTALL

START=$(now)
STARTED_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ)
END=$(awk -v a="$START" -v t="$TOTAL" 'BEGIN { printf "%.3f", a + t }')
RESERVE=$((BUDGET[report] + 5))

cleanup() {
  [ -f "$WORK/autoload-pth" ] && rm -f "$(cat "$WORK/autoload-pth")"
  [ $KEEP_WORK = 1 ] && echo "work folder kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

echo "memfit GPU session ($MODE): out $OUT_DIR, build $BUILD_DIR, python $PY, $JOBS cores, budget ${TOTAL}s"

dep_ok() { # what a step needs: a step that ended ok, or a build phase that succeeded
  case $1 in
    libs|tests|all) # with --no-build: what is in the build folder
      [ -f "$WORK/built-$1" ] && return 0
      [ $NO_BUILD = 1 ] || return 1
      case $1 in
        libs) [ -e "$BUILD_DIR/allocator/libmemfit.so" ] && [ -e "$BUILD_DIR/planner/libmemfit_plan.so" ] ;;
        *) [ -x "$BUILD_DIR/tests/memfit_tests" ] ;;
      esac ;;
    *) [ "${STATUS[$1]:-}" = ok ] ;;
  esac
}
dep_word() { # how a missing need reads in the step table
  case $1 in
    libs) echo "the libraries, which did not build (step build: ${STATUS[build]:-not run})" ;;
    tests) echo "memfit_tests, which did not build (step build: ${STATUS[build]:-not run})" ;;
    all) echo "the whole build, which did not finish (step build: ${STATUS[build]:-not run})" ;;
    *) echo "$1, which is ${STATUS[$1]:-not run}" ;;
  esac
}

record() { # name status rc seconds limit reason
  local reason=${6//$'\t'/ } rc=${3:--}
  reason=${reason//$'\n'/ }
  STATUS[$1]=$2
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rc" "$4" "${BUDGET[$1]}" "$5" "${reason:0:300}" >>"$WORK/steps.tsv"
  printf '[%6.1fs] %-14s %-8s %6.1fs of %3ss%s\n' "$(since "$START")" "$1" "$2" "$4" "${BUDGET[$1]}" "${reason:+  $reason}"
}

step() { # name needs-list command...
  local name=$1 needs=$2 left limit t0 rc status reason log n
  shift 2
  if [[ -n $ONLY_STEPS && $ONLY_STEPS != *",$name,"* ]] || [[ $SKIP_STEPS == *",$name,"* ]]; then
    record "$name" skipped "" 0 0 "not asked for (--only/--skip)"
    return
  fi
  for n in $needs; do
    dep_ok "$n" || { record "$name" skipped "" 0 0 "needs $(dep_word "$n")"; return; }
  done
  left=$(awk -v e="$END" -v n="$(now)" -v r="$RESERVE" 'BEGIN { printf "%d", e - n - r }')
  limit=${BUDGET[$name]}
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 3 ]; then
    record "$name" skipped "" 0 0 "session budget spent (${left}s left)"
    return
  fi
  log="$WORK/logs/$name.log"
  mkdir -p "$WORK/$name"
  t0=$(now)
  STEP_NAME=$name STEP_DIR="$WORK/$name" STEP_SKIP="$WORK/$name/skip-reason" STEP_LOG="$log" \
    STEP_RESULT="$WORK/results/$name.json" STEP_LIMIT=$limit \
    timeout -k 5 "$limit" "$@" >"$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok; reason="" ;;
    77) status=skipped; reason=$(cat "$WORK/$name/skip-reason" 2>/dev/null || grep -m1 '^skipped: ' "$log" | cut -c10-) ;;
    124|137) status=timeout; reason="stopped at its limit of ${limit}s" ;;
    *) status=failed; reason=$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200) ;;
  esac
  record "$name" "$status" "$rc" "$(since "$t0")" "$limit" "$reason"
  if [[ $status == failed || $status == timeout ]]; then
    tail -n 6 "$log" | sed 's/^/      | /'
  fi
}

S=(bash "$SELF" __step)
D=("$PY" "$DRIVER")
R="$WORK/results"
step env "" "${S[@]}" env
step deps "" "${S[@]}" deps
[ -s "$WORK/ld-path" ] && export LD_LIBRARY_PATH="$(cat "$WORK/ld-path")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ $NO_BUILD = 1 ]; then
  record configure skipped "" 0 0 "--no-build: $BUILD_DIR as it is"
  record build skipped "" 0 0 "--no-build: $BUILD_DIR as it is"
else
  step configure "" "${S[@]}" configure
  step build "configure" "${S[@]}" build
fi
step autoload "" "${S[@]}" autoload
[ -f "$WORK/autoload-manual" ] && export MEMFIT_GPU_AUTOLOAD=manual
step ctest-cuda "tests" "${S[@]}" ctest-cuda
step sanitizer "tests" "${S[@]}" sanitizer
step train-native "" "${D[@]}" train --alloc native --out "$R/train-native.json"
step train-memfit "libs" "${D[@]}" train --alloc memfit --out "$R/train-memfit.json"
step train-async "" "${D[@]}" train --alloc async --out "$R/train-async.json"
step cuda-findings "libs" "${D[@]}" cuda-findings --out "$R/cuda-findings.json" --work "$WORK/cuda-findings" \
  --build-dir "$BUILD_DIR"
step memory-runs "" "${D[@]}" memory-runs --out "$R/memory-runs.json" --work "$WORK/memory-runs" \
  --snapshots "$WORK/snapshots"
step traces "" "${D[@]}" traces --out "$R/traces.json" --snapshots "$WORK/snapshots" --traces "$WORK/traces" \
  --build-dir "$BUILD_DIR" --memory-result "$R/memory-runs.json"
step plan-verify "libs" "${D[@]}" plan-verify --out "$R/plan-verify.json" --work "$WORK/plan-verify"
step ctest-all "all" "${S[@]}" ctest-all

# ------------------------------------------------------------------------------ report
rm -f "$OUT_DIR/gpu-report.md" "$OUT_DIR/gpu-report.json" "$OUT_DIR/gpu-logs.tar.gz" "$OUT_DIR/gpu-traces.tar.gz"
if [ -n "$(ls -A "$WORK/traces" "$WORK/snapshots" 2>/dev/null | grep -v ':$' | grep -v '^$')" ]; then
  tar -czf "$OUT_DIR/gpu-traces.tar.gz" -C "$WORK" traces snapshots
  if [ "$(stat -c %s "$OUT_DIR/gpu-traces.tar.gz")" -gt $((15 * 1024 * 1024)) ]; then
    echo "gpu-traces.tar.gz is over 15 MiB: keeping the converted traces only" | tee "$WORK/logs/packing.log"
    tar -czf "$OUT_DIR/gpu-traces.tar.gz" -C "$WORK" traces
  fi
fi
budget_json=$(for n in "${ORDER[@]}"; do printf '%s\t%s\t%s\t%s\n' "$n" "${GPU_BUDGET[$n]}" "${DRY_BUDGET[$n]}" "${DESC[$n]}"; done |
  "$PY" -c 'import json, sys; print(json.dumps([l.rstrip("\n").split("\t") for l in sys.stdin]))')
t0=$(now)
STEP_LIMIT=${BUDGET[report]} timeout -k 2 $((BUDGET[report] + 5)) "$PY" "$DRIVER" report --work "$WORK" \
  --out "$OUT_DIR" --budget-json "$budget_json" --total "$TOTAL" --started "$STARTED_UTC" \
  --wall "$(since "$START")" --build-dir "$BUILD_DIR" --options "mode=$MODE no_build=$NO_BUILD skip=$SKIP_STEPS only=$ONLY_STEPS" \
  >"$WORK/logs/report.log" 2>&1
rc=$?
if [ $rc -ne 0 ] || [ ! -s "$OUT_DIR/gpu-report.json" ]; then # the report's last resort: the step table alone
  echo "report failed (exit $rc); writing the step table alone" >&2
  tail -5 "$WORK/logs/report.log" >&2
  "$PY" - "$WORK/steps.tsv" "$OUT_DIR" "$MODE" <<'EOF' || printf '{"format":"memfit-gpu-report","version":1,"broken":true}\n' >"$OUT_DIR/gpu-report.json"
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
steps = [{"name": r[0], "status": r[1], "seconds": float(r[3]), "reason": r[6]} for r in rows]
json.dump({"format": "memfit-gpu-report", "version": 1, "mode": sys.argv[3], "report_failed": True, "steps": steps},
          open(sys.argv[2] + "/gpu-report.json", "w"), indent=1)
open(sys.argv[2] + "/gpu-report.md", "w").write("# memfit GPU session: report failed\n\n" + "\n".join(
    f"- {s['name']}: {s['status']} ({s['seconds']} s) {s['reason']}" for s in steps) + "\n")
EOF
  STATUS[report]=failed
else
  cat "$WORK/logs/report.log"
  STATUS[report]=ok
fi
printf 'report\t%s\t%s\t%s\t%s\t%s\t\n' "${STATUS[report]}" "$rc" "$(since "$t0")" "${BUDGET[report]}" "${BUDGET[report]}" >>"$WORK/steps.tsv"
tar --exclude=./snapshots --exclude=./traces -czf "$OUT_DIR/gpu-logs.tar.gz" -C "$WORK" .

echo
echo "== memfit GPU session ($MODE) done in $(since "$START")s (budget ${TOTAL}s); in $OUT_DIR:"
ls -l "$OUT_DIR" | tail -n +2 | awk '{ printf "   %10s  %s\n", $5, $9 }'
failed=0
while IFS=$'\t' read -r n st rc secs b lim why; do
  printf '   %-14s %-8s %6ss / %3ss  %s\n' "$n" "$st" "$secs" "$b" "${why:0:110}"
  [[ $st == failed || $st == timeout ]] && failed=$((failed + 1))
done <"$WORK/steps.tsv"
echo "   $failed step(s) failed or timed out"
[ "${STATUS[report]}" = ok ] # the exit status says whether the report was written; the steps' are in it
