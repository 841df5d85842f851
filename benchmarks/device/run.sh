#!/usr/bin/env bash
# The GPU check in one command, on a machine that cannot download: install the wheelhouse that
# benchmarks/device/wheelhouse.py built (carried as .whl) into a scratch target, record the versions, run
# benchmarks/gpu.py within 9 minutes and write its figures to $OUT/gpu.txt.  From the repository root:
#
#   bash benchmarks/device/run.sh                                     # on the GPU machine (device run, carry .whl)
#   PYTHON=venv/bin/python WHEELHOUSE=/tmp/wh SITE=/tmp/site OUT=/tmp/out \
#     bash benchmarks/device/run.sh --device cpu --smoke-model DIR    # what the CPU test runs
#
# Arguments go to gpu.py.  The wheels are installed without their dependencies: the image holds the rest.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-.whl}
SITE=${SITE:-/tmp/peftsum-site}
OUT=${OUT:-/tmp/peftsum-out}
LIMIT=${LIMIT:-540}  # seconds for gpu.py: 9 minutes of a 10-minute device call
mkdir -p "$OUT"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$WHEELHOUSE"/*.whl
export PYTHONPATH="$SITE" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
(cd "$SITE" && "$PYTHON" - <<'PY') | tee "$OUT/versions.txt"  # not from the checkout: its peftsum/ would shadow
import importlib.metadata as md
import platform

import peftsum  # imports all the way down: what the image lacked is there
import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, peftsum from "
      f"{peftsum.__file__}")
for name in ("transformers", "accelerate", "peft", "datasets", "safetensors", "numpy", "nltk", "rouge-score", "optuna"):
    print(f"{name} {md.version(name)}")
PY
cd benchmarks
timeout "$LIMIT" "$PYTHON" gpu.py "$@" 2>&1 | tee "$OUT/gpu.txt"
