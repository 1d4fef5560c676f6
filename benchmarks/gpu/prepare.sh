#!/usr/bin/env bash
# benchmarks/gpu/prepare.sh — run on this (CPU) machine before the device call. The device
# image has CUDA, PyTorch, CMake and a compiler but maybe not GoogleTest and jansson, and it
# cannot download: this puts their Debian packages into benchmarks/gpu/deps/ (ignored by git;
# name it in the device call's carry), where run.sh unpacks them into the build folder if the
# system lacks them. It also stamps the commit, since the device's copy has no .git.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p deps
rm -f deps/*.deb
(cd deps && apt-get download libgtest-dev libjansson-dev libjansson4)
commit=$(git -C ../.. rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git -C ../.. status --porcelain --untracked-files=no 2>/dev/null | wc -l)
printf '{"commit": "%s", "dirty_files": %s, "stamped_utc": "%s"}\n' "$commit" "$dirty" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >deps/commit.json
ls -l deps
du -sh deps
