#!/usr/bin/env bash
# The device checks of one GPU session, in one go (issue 18's CUDA table): the CUDA tests,
# `lcd bench --device cuda`, and the fitter's channels/s at L = 8192 and 65536 for N = 16 and 32
# with the Evo-1 projection. Results go to $OUT (default ./gpu-results).
#   bash scripts/gpu_check.sh            # about 5-8 min on one H100/H200
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
python - <<'PY' | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0))
PY
# The files that hold the CUDA checks (skipped on a CPU-only machine), whole.
python -m pytest -q -rs tests/test_bench.py tests/test_fit.py tests/test_ssm.py \
    tests/test_verify_core.py 2>&1 | tail -20 | tee "$OUT/cuda_tests.txt"
lcd bench --device cuda -o "$OUT/bench_cuda.json" 2>&1 | tail -40 | tee "$OUT/bench_cuda.txt"
for n in 16 32; do
    python scripts/fit_throughput.py --device cuda --no-baseline --rows hyenadna:8192 hyenadna:65536 \
        --channels 1024 --big-channels 0 --order "$n" --json "$OUT/fit_cuda_n$n.json" \
        2>&1 | tail -6 | tee "$OUT/fit_cuda_n$n.md"
done
