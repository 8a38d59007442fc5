#!/usr/bin/env bash
# ctest onnx_runtime: check_onnxruntime.py with the Python that has
# onnxruntime: $DEEPQSM_PYTHON, else scripts/setup.sh's venv
# ($DEEPQSM_PYENV, default ~/.cache/deepqsm/pyenv), else python3.
set -euo pipefail
py=${DEEPQSM_PYTHON:-}
venv=${DEEPQSM_PYENV:-$HOME/.cache/deepqsm/pyenv}
if [ -z "$py" ] && [ -x "$venv/bin/python" ]; then py=$venv/bin/python; fi
py=${py:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  echo "SKIP: no Python ($py) to run onnxruntime"
  exit 77
fi
exec "$py" "$(dirname "$0")/check_onnxruntime.py" "$@"
