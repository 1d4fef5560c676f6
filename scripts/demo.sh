#!/usr/bin/env bash
# The main job: build memfit, profile the built-in GPT-style model for a few real
# steps (on CUDA when PyTorch sees a GPU, else on CPU through memfit's CPU
# allocator), print where its memory goes and write the PNG timeline, plan the
# largest batch for a budget, apply the plan, train at that batch under memfit
# with the budget as capacity, and show predicted against measured peak.
# Usage: bash scripts/demo.sh [--budget 160MiB] [--device cpu|cuda] [--out-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/install-python-deps.sh

mkdir -p build-release
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DMEMFIT_BUILD_TESTS=OFF >build-release/configure.log 2>&1 ||
  { cat build-release/configure.log; exit 1; }
cmake --build build-release -j"$(nproc 2>/dev/null || echo 2)" >build-release/build.log 2>&1 ||
  { tail -50 build-release/build.log; exit 1; }

device=cpu
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && device=cuda
export MEMFIT_BUILD_DIR="$PWD/build-release"
export PYTHONPATH="$PWD/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m memfit demo --device "$device" "$@"
