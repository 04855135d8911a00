#!/usr/bin/env bash
# The tests' Python environment, from PyPI: pyarrow (stook's Parquet and
# Arrow files against pyarrow's, tests/formats.rs), openai (OpenAI Batch
# lines read with the openai package's types, tests/openai.rs), and numpy,
# tokenizers and safetensors (the OpenAI-compatible test server,
# tests/openai_server.py), pandas (the python backend's
# batch_format = "pandas", tests/python.rs) and sheaf-serve (the sheaf
# backend's workers, tests/python.rs; without its dependencies: the
# worker needs its request models and registry, which need only pydantic,
# not Ray), and moto's server (the S3-compatible store on 127.0.0.1 that
# tests/object_storage.rs reads from and writes to). Idempotent: does nothing when .venv-arrow has
# them all.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-arrow
PYARROW=pyarrow==22.0.0
PACKAGES=(openai==2.8.1 numpy==2.3.5 tokenizers==0.22.1 safetensors==0.7.0 pandas==2.3.3 "moto[server]==5.2.5")
if "$VENV/bin/python" -c "import pyarrow, openai, numpy, tokenizers, safetensors, pandas, sheaf.api.union, moto.server" 2>/dev/null; then
  exit 0
fi
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$PYARROW" "${PACKAGES[@]}"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps sheaf-serve==0.13.0
"$VENV/bin/python" -c "import pyarrow, openai, numpy; print('pyarrow', pyarrow.__version__, 'openai', openai.__version__, 'numpy', numpy.__version__, 'in', '$VENV')"
