#!/usr/bin/env bash
# Install what the tests need (keeping a suitable torch), lint, and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k hyena`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_install.sh --test
echo "[test] ruff check lcd_cli tests scripts" >&2
"$PY" -m ruff check lcd_cli tests scripts
echo "[test] pytest -q -rs $*" >&2
"$PY" -m pytest -q -rs "$@"
