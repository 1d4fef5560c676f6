#!/usr/bin/env bash
# Installs, with pip, what memfit's Python side needs, and only what is missing:
# PyTorch (pinned, and only when no torch is importable: an installed torch is
# never replaced), pytest, jsonschema, matplotlib, numpy.
set -euo pipefail
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${MEMFIT_TORCH_VERSION:-2.13.0}

missing=()
"$PYTHON" -c "import torch" >/dev/null 2>&1 || missing+=("torch==$TORCH_VERSION")
for module in pytest jsonschema matplotlib numpy; do
  "$PYTHON" -c "import $module" >/dev/null 2>&1 || missing+=("$module")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "memfit: installing missing Python packages: ${missing[*]}"
"$PYTHON" -m pip install --quiet "${missing[@]}"
