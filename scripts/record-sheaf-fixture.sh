#!/usr/bin/env bash
# Records what sheaf-serve 0.13's own BatchRunner (on Ray 2.60) writes for
# tests/fixtures/sheaf-requests.jsonl with the user-defined backend of
# tests/sheaf_backends.py: tests/fixtures/sheaf-batchrunner.jsonl, which
# tests/python.rs compares stook's `sheaf` backend with, byte for byte.
# Re-run it to re-record (both files are committed); it installs Ray,
# sheaf-serve and the test model's packages into .venv-ray from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAY_VENV:-.venv-ray}
scripts/fetch-model.sh >/dev/null
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "ray[data]==2.60.0" sheaf-serve==0.13.0 \
  pyarrow==22.0.0 pandas==2.3.3 numpy==2.3.5 tokenizers==0.22.1 safetensors==0.7.0
"$VENV/bin/python" - <<'EOF'
import json, uuid
sentences = [json.loads(l)["text"] for l in open("tests/fixtures/sentences.jsonl")]
with open("tests/fixtures/sheaf-requests.jsonl", "w") as f:
    for i in range(40):
        texts = [sentences[(i * 5 + k) % len(sentences)] for k in range(1 + i % 3)]
        row = {
            "request_id": str(uuid.UUID(int=0x5EAF_0000_0000_4000_8000_0000_0000_0000 + i)),
            "model_type": "embedding",
            "model_name": "all-MiniLM-L6-v2",
            "texts": texts,
            "normalize": i % 4 != 3,
        }
        f.write(json.dumps(row) + "\n")
EOF
# Ray's workers import the backend's module by name: from tests/. One
# BLAS thread and OpenBLAS's Haswell kernels (any x86-64 with AVX2), so
# that the floats do not depend on the machine; tests/python.rs runs stook
# the same way.
export OPENBLAS_CORETYPE=Haswell OPENBLAS_NUM_THREADS=1
PYTHONPATH=$PWD/tests "$VENV/bin/python" - <<'EOF'
import os, sys
import sheaf_backends
from sheaf.batch.runner import BatchRunner
from sheaf.batch.spec import BatchSpec, JsonlSink, JsonlSource

spec = BatchSpec(
    name="minilm",
    model_type="embedding",
    backend="minilm-numpy",
    # Ray's workers do not see a backend registered in the driver: the
    # class goes in the spec (stook's `imports` run in each worker instead).
    backend_cls=sheaf_backends.MiniLMBackend,
    backend_kwargs={"model_dir": os.path.abspath("models/all-MiniLM-L6-v2")},
    source=JsonlSource(path="tests/fixtures/sheaf-requests.jsonl"),
    sink=JsonlSink(path="tests/fixtures/sheaf-batchrunner.jsonl"),
    batch_size=8,
    compute="actors",
    num_actors=2,
    num_cpus=0.5,
)
print("BatchRunner wrote", BatchRunner(spec).run(), "rows")
EOF
