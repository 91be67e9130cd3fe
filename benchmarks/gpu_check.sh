#!/usr/bin/env bash
# The GPU checks of issue 8 in one short run, for a session that is lent a GPU machine (the
# device tool): CUDA equals CPU for BraggNN and the batched fits, then the GPU rows of
# `braggtrack bench` (BraggNN, pvoigt and gauss on the GPU against the CPU). No GPU has been
# lent to this project yet, so the CUDA tests have only ever been skipped.
#
# On the lent machine (its python3 holds a CUDA build of PyTorch, numba, pandas, scipy,
# safetensors and onnxruntime; braggtrack runs from src/, nothing is installed):
#     bash benchmarks/gpu_check.sh            # ~2 minutes; prints the tests and the table
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
"$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_localize_torch.py tests/test_braggnn.py -k cuda
"$PY" - <<'PYEOF'
import pandas as pd
from braggtrack.bench import BenchSizes, bench_gpu, format_table
table = pd.DataFrame(bench_gpu(BenchSizes()))
table.attrs["machine"] = "GPU check"
print(format_table(table))
PYEOF
