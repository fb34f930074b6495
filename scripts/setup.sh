#!/usr/bin/env bash
# Create .venv with PyTorch first (the CPU wheel by default), then visionfm-core and its test tools.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip() {  # pip, minus this machine's noisy "location is ignored" warnings; still fails when pip fails
  local log status=0
  log=$(mktemp)
  .venv/bin/python -m pip "$@" >"$log" 2>&1 || status=$?
  grep -v "is ignored" "$log" || true
  rm -f "$log"
  return "$status"
}
# torch before anything else, so no later package can pull a multi-GB CUDA build onto a CPU machine
pip install -q "torch==${TORCH_VERSION:-2.13.0}"
pip install -q -e ".[dev]"
# timm is only the reference ViT for tests and benchmarks; --no-deps keeps its torchvision pin out (README, Limits)
pip install -q --no-deps "timm==1.0.31"
.venv/bin/python -c "import torch, monai, visionfm_core; print('ready: torch', torch.__version__, '| monai', monai.__version__, '| visionfm-core', visionfm_core.__version__)"
