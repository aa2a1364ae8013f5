#!/usr/bin/env bash
# Create .venv and install the project with its test extras, pinned by constraints.txt.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
echo "setup: installing uad and its dependencies (first run downloads PyTorch, several GB)"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
# DVC's page template with Vega bundled in (.dvc/config names it): `dvc plots show` draws offline
.venv/bin/python -m uad.plots template | sed 's/^/setup: /'
.venv/bin/python -c "import uad, torch, timm, dvc, onnxruntime; print('setup: ok, torch', torch.__version__)"
