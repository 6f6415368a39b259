#!/usr/bin/env bash
# The GPU check, prepared for a short allocation: under 8 minutes on one H100/H200, one table, OUT/gpu_check.json.
#
#   bench/gpu_check.sh [--out runs/gpu-check] [--inception-weights FILE] [--peak-tflops 989]
#   srun --gres=gpu:1 --time=10 bench/gpu_check.sh --out runs/gpu-check      # on a cluster node
#
# Without CUDA it says so in one line, runs the GPU tests (which skip, naming why) and finishes.
# What it runs: bench/gpu_check.py's docstring. PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
