#!/usr/bin/env bash
# The main job on a bundled example: make a HyenaDNA-layout checkpoint, inspect it, distill it
# into diagonal SSMs, and verify the recurrent path against the original convolution.
# Installs lcd from this checkout first where needed (scripts/_install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_install.sh
OUT=${OUT_DIR:-out/demo}
mkdir -p "$OUT"
step() { echo "[demo] $1" >&2; echo "[demo] \$ lcd ${*:2}" >&2; "$PY" -m lcd_cli "${@:2}"; }
step "1/4 write a small HyenaDNA-layout example checkpoint" \
  example hyenadna -o "$OUT/hyenadna.safetensors" --force
step "2/4 inspect it: its long-conv layers and how compressible each kernel is" \
  inspect "$OUT/hyenadna.safetensors"
step "3/4 distill each kernel into a diagonal SSM (smallest order <= 16 with rel. error <= 5e-2)" \
  distill "$OUT/hyenadna.safetensors" --tol 5e-2 --max-order 16 --force
step "4/4 verify the recurrent path against the original convolution" \
  verify "$OUT/hyenadna.lcd.safetensors" --reference "$OUT/hyenadna.safetensors"
echo "[demo] done in ${SECONDS} s: $OUT/hyenadna.lcd.safetensors and $OUT/hyenadna.lcd.report.yaml" >&2
