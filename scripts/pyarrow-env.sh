#!/usr/bin/env bash
# A Python environment with pyarrow and openai from PyPI, for the tests that
# check stook's Parquet and Arrow files against pyarrow's (tests/formats.rs)
# and its OpenAI Batch lines against the openai package's types
# (tests/openai.rs). Idempotent: does nothing when .venv-arrow has both.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-arrow
PYARROW=pyarrow==22.0.0
OPENAI=openai==2.8.1
if "$VENV/bin/python" -c "import pyarrow, openai" 2>/dev/null; then
  exit 0
fi
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$PYARROW" "$OPENAI"
"$VENV/bin/python" -c "import pyarrow, openai; print('pyarrow', pyarrow.__version__, 'openai', openai.__version__, 'in', '$VENV')"
