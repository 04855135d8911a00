#!/usr/bin/env bash
# A Python environment with pyarrow from PyPI, for the tests that check
# stook's Parquet and Arrow files against pyarrow's (tests/formats.rs).
# Idempotent: does nothing when .venv-arrow already has it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-arrow
PYARROW=pyarrow==22.0.0
if "$VENV/bin/python" -c "import pyarrow" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$PYARROW"
"$VENV/bin/python" -c "import pyarrow; print('pyarrow', pyarrow.__version__, 'in', '$VENV')"
