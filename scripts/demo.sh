#!/usr/bin/env bash
# The main job on a bundled example: make a HyenaDNA-layout checkpoint, inspect it, distill it
# into diagonal SSMs, and verify the recurrent path against the original convolution.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_install.sh
OUT=${OUT_DIR:-out/demo}
mkdir -p "$OUT"
set -x
"$PY" -m lcd_cli example hyenadna -o "$OUT/hyenadna.safetensors" --force
"$PY" -m lcd_cli inspect "$OUT/hyenadna.safetensors"
"$PY" -m lcd_cli distill "$OUT/hyenadna.safetensors" --tol 5e-2 --max-order 32 --force
"$PY" -m lcd_cli verify "$OUT/hyenadna.lcd.safetensors" --reference "$OUT/hyenadna.safetensors"
