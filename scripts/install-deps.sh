#!/usr/bin/env bash
# Installs, on Debian or Ubuntu, what building and testing memfit needs, and only
# what is missing: a C/C++ toolchain, CMake, GoogleTest, jemalloc, jansson (the planner's
# JSON), clang with libFuzzer (the fuzz harnesses), Python 3.
set -euo pipefail

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
have_pkg libgtest-dev || missing+=(libgtest-dev)
have_pkg libjemalloc-dev || missing+=(libjemalloc-dev)
have_pkg libjansson-dev || missing+=(libjansson-dev)
# clang and its runtimes (libFuzzer, sanitizers): the fuzz harnesses (tests/fuzz/).
command -v clang >/dev/null 2>&1 || missing+=(clang)
have_pkg libclang-rt-dev || missing+=(libclang-rt-dev)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "memfit: installing missing packages: ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "memfit: apt-get not found; install these yourself: ${missing[*]}" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "memfit: run as root (or install sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
