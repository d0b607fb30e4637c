# Sourced by demo.sh and test.sh: install lcd (and its test extras) into the current Python,
# keeping an installed torch >= 2.4 instead of pulling a multi-GB build.
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 4))' 2>/dev/null; then
  echo "[lcd] installing torch (none >= 2.4 found)" >&2
  # A pinned release resolves to a local CPU wheel where one is provided; else the registry's.
  "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.4"
fi
if ! "$PY" -c 'import lcd_cli, pytest, hypothesis' 2>/dev/null || [ "${LCD_REINSTALL:-0}" = 1 ]; then
  echo "[lcd] installing lcd-cli and its test extras" >&2
  "$PY" -m pip install -q -e ".[test]"
fi
