# Sourced by the GPU scripts: PY is the checkout's .venv/bin/python when it imports torch, else
# python3 (a GPU machine's own torch), and the checkout's src/ goes on PYTHONPATH when
# `import dlrm` fails (a checkout without an install).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c "import torch" 2>/dev/null; then
  PY="$ROOT/.venv/bin/python"
else
  PY=python3
fi
$PY -c "import dlrm" 2>/dev/null || export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
