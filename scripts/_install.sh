# Sourced by demo.sh (`source scripts/_install.sh`) and test.sh (`... --test`) from the checkout
# root: make sure lcd is installed, editable, from THIS checkout into $PYTHON (default python3),
# with every dependency pyproject.toml lists (--test: and the `test` extras), and install what is
# missing. What is checked is scripts/_install_check.py, run from `/` so that nothing imports
# from the checkout by accident. Missing anything: `pip install -e ".[test]"` (the demo installs
# the test extras too, so that test.sh has nothing left to install). Torch: an installed
# torch >= 2.4 is kept; with none (or an older one) torch==2.13.0 is installed first, so that pip
# never resolves an unpinned torch (a multi-GB CUDA build). LCD_REINSTALL=1 reinstalls lcd anyway.
PY=${PYTHON:-python3}
LCD_ROOT=$(pwd -P)
_lcd_check() { (cd / && "$PY" "$LCD_ROOT/scripts/_install_check.py" "$LCD_ROOT" "$@"); }

echo "[lcd] checking the install in $(command -v "$PY" || echo "$PY") for $LCD_ROOT" >&2
if _lcd_need=$(_lcd_check "$@") && [ "${LCD_REINSTALL:-0}" != 1 ]; then
  :
else
  [ "${LCD_REINSTALL:-0}" = 1 ] && echo "[lcd] LCD_REINSTALL=1: reinstalling" >&2
  _lcd_start=$SECONDS
  if [ "$_lcd_need" = torch ]; then
    echo "[lcd] installing torch==2.13.0 (no torch >= 2.4 found; an installed one is kept)" >&2
    "$PY" -m pip install -q "torch==2.13.0" || {
      echo "[lcd] could not install torch==2.13.0; install a torch >= 2.4 yourself (e.g. a CPU" \
        "build: pip install torch --index-url https://download.pytorch.org/whl/cpu), then rerun" >&2
      return 1 2>/dev/null || exit 1
    }
  fi
  echo "[lcd] installing lcd-cli from this checkout with its test extras: pip install -e \".[test]\"" >&2
  "$PY" -m pip install -q -e ".[test]" || { echo "[lcd] pip install failed" >&2; return 1 2>/dev/null || exit 1; }
  echo "[lcd] installed in $(( SECONDS - _lcd_start )) s; checking again" >&2
  _lcd_check "$@" >/dev/null || {
    echo "[lcd] still not usable after the install (above: what is wrong)" >&2
    return 1 2>/dev/null || exit 1
  }
fi
unset _lcd_need _lcd_start
