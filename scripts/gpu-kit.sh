#!/usr/bin/env bash
# Builds what scripts/bench-gpu.sh needs on a GPU machine, here, on any
# x86-64 Linux machine (no GPU, no driver): a stripped `--features cuda`
# release binary (toolkit from PyPI: scripts/cuda-toolkit.sh), the model's
# weights in f16 (half the size of f32) and the benchmark corpus, in $KIT.
set -euo pipefail
cd "$(dirname "$0")/.."
kit=${KIT:-.gpu}
corpus=${CORPUS:-../shared/data/fortunes-4000.jsonl.gz}
eval "$(scripts/cuda-toolkit.sh)"
scripts/fetch-model.sh
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda} cargo build --release --features cuda --bin stook
mkdir -p "$kit/model/1_Pooling"
# Compressed: the binary embeds candle's kernels (about 55 MB stripped).
strip -o "$kit/stook" "${CARGO_TARGET_DIR:-target-cuda}/release/stook"
xz -T0 -6 -f "$kit/stook"
src=models/all-MiniLM-L6-v2
for f in config.json tokenizer.json modules.json sentence_bert_config.json 1_Pooling/config.json; do
  cp "$src/$f" "$kit/model/$f"
done
[ -x .venv-st/bin/python ] || { python3 -m venv .venv-st && .venv-st/bin/pip install --quiet safetensors numpy; }
.venv-st/bin/python - "$src/model.safetensors" "$kit/model/model.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file, save_file
w = load_file(sys.argv[1])
save_file({k: v.astype("float16") if v.dtype.kind == "f" else v for k, v in w.items()}, sys.argv[2])
PY
gzip -dc "$corpus" > "$kit/input.jsonl"
du -sh "$kit"
