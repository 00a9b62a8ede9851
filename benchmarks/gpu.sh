#!/usr/bin/env bash
# GPU benchmark at the real model sizes (see benchmarks/gpu.py); extra arguments pass through,
# e.g. `benchmarks/gpu.sh --budget-s 200` or `benchmarks/gpu.sh --smoke --out /tmp/gpu-smoke`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" benchmarks/gpu.py "$@"
