#!/usr/bin/env bash
# Installs, with pip, what memfit's Python side needs, and only what is missing:
# PyTorch (pinned, and only when no torch is importable: an installed torch is
# never replaced), pytest, pytest-xdist, jsonschema, matplotlib, numpy, and scikit-build-core
# (pinned: the build backend of pyproject.toml, for `pip install
# --no-build-isolation .` offline); then, for the tests of
# the trial-based batch-size finders (tests/python/test_trial_finders.py) and of
# real models (tests/python/test_real_models.py, models built from config),
# Accelerate, Lightning and transformers, pinned, with the torch in place held
# by a pip constraint so that none can replace it. Those are optional: if pip
# cannot install them (offline, or no build beside this torch) the script says
# so and the tests that need them skip.
set -euo pipefail
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${MEMFIT_TORCH_VERSION:-2.13.0}
ACCELERATE_VERSION=${MEMFIT_ACCELERATE_VERSION:-1.15.0}
LIGHTNING_VERSION=${MEMFIT_LIGHTNING_VERSION:-2.6.6}
TRANSFORMERS_VERSION=${MEMFIT_TRANSFORMERS_VERSION:-5.24.0}
SCIKIT_BUILD_CORE_VERSION=${MEMFIT_SCIKIT_BUILD_CORE_VERSION:-1.1.2}

missing=()
"$PYTHON" -c "import torch" >/dev/null 2>&1 || missing+=("torch==$TORCH_VERSION")
for module in pytest jsonschema matplotlib numpy; do
  "$PYTHON" -c "import $module" >/dev/null 2>&1 || missing+=("$module")
done
"$PYTHON" -c "import scikit_build_core" >/dev/null 2>&1 || missing+=("scikit-build-core==$SCIKIT_BUILD_CORE_VERSION")
"$PYTHON" -c "import xdist" >/dev/null 2>&1 || missing+=("pytest-xdist")  # test.sh runs pytest on every core
if [ ${#missing[@]} -ne 0 ]; then
  echo "memfit: installing missing Python packages: ${missing[*]}"
  "$PYTHON" -m pip install --quiet "${missing[@]}"
fi

optional=()
for pair in "accelerate:accelerate==$ACCELERATE_VERSION" "lightning:lightning==$LIGHTNING_VERSION" \
            "transformers:transformers==$TRANSFORMERS_VERSION"; do
  module=${pair%%:*}
  # Looked up, not imported: importing lightning takes seconds.
  "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" ||
    optional+=("${pair#*:}")
done
if [ ${#optional[@]} -eq 0 ]; then
  exit 0
fi
# The torch now installed (2.13.0+cpu and the like), as a constraint: pip then
# keeps it, or fails, rather than resolve another one for a package's sake.
torch_installed=$("$PYTHON" -c "import torch; print(torch.__version__)")
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_installed" > "$constraints"
for requirement in "${optional[@]}"; do
  echo "memfit: installing missing Python package: $requirement (keeping torch $torch_installed)"
  if ! "$PYTHON" -m pip install --quiet -c "$constraints" "$requirement"; then
    echo "memfit: $requirement could not be installed beside torch $torch_installed; the tests that need it skip"
  fi
done
after=$("$PYTHON" -c "import torch; print(torch.__version__)")
if [ "$after" != "$torch_installed" ]; then
  echo "memfit: torch changed from $torch_installed to $after while installing packages" >&2
  exit 1
fi
