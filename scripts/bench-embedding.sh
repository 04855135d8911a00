#!/usr/bin/env bash
# stook's embedding backend against sentence-transformers, in one run, on
# the same corpus (../shared/data/fortunes-4000.jsonl.gz, or $CORPUS):
# sentence-transformers `encode` (PyTorch CPU, 2 threads, batch 64) and
# `stook run` end to end (JSONL in, JSONL out) with its default of two
# actors of one thread each on 2 cores, and with one actor of two threads;
# and each model's forward alone (pre-tokenized). Prints sentences/s, the
# ratios, and peak RSS. Installs sentence-transformers from PyPI
# into .venv-st the first time (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${CORPUS:-../shared/data/fortunes-4000.jsonl.gz}
work=bench-out/embedding
mkdir -p "$work"
scripts/fetch-model.sh
if [ ! -x .venv-st/bin/python ]; then
  python3 -m venv .venv-st
  .venv-st/bin/pip install --quiet --disable-pip-version-check sentence-transformers
fi
cargo build --release --locked --quiet
case "$corpus" in *.gz) gzip -dc "$corpus" > "$work/input.jsonl" ;; *) cp "$corpus" "$work/input.jsonl" ;; esac
n=$(wc -l < "$work/input.jsonl")

HF_HUB_OFFLINE=1 .venv-st/bin/python - "$work/input.jsonl" > "$work/st.json" <<'PY'
import json, resource, sys, time
import torch
torch.set_num_threads(2)
from sentence_transformers import SentenceTransformer
texts = [json.loads(l)["text"] for l in open(sys.argv[1], encoding="utf-8")]
m = SentenceTransformer("models/all-MiniLM-L6-v2", device="cpu")
m.encode(texts[:64], batch_size=64)  # warm-up
t = time.perf_counter()
m.encode(texts, batch_size=64)
s = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# The model's forward alone: pre-tokenized, length-sorted batches of 64.
tok, bert = m.tokenizer, m[0].auto_model.eval()
order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
batches = [tok([texts[i] for i in order[k:k + 64]], padding=True, truncation=True,
               max_length=256, return_tensors="pt") for k in range(0, len(texts), 64)]
with torch.inference_mode():
    t = time.perf_counter()
    for b in batches:
        bert(**b)
    f = time.perf_counter() - t
print(json.dumps({"seconds": s, "rows": len(texts), "forward_seconds": f, "peak_rss_bytes": rss}))
PY

cat > "$work/job.toml" <<TOML
[input]
path = "input.jsonl"
[output]
path = "stook-out"
[model]
backend = "embedding"
[model.options]
path = "../../models/all-MiniLM-L6-v2"
[batch]
size = ${BATCH:-1024}
[memory]
object_store = "256MiB"
TOML
# The defaults (two actors on 2 cores, threads = cores / actors = 1), then
# one actor with every core.
./target/release/stook run --fresh --json "$work/job.toml" > "$work/stook.json"
sed 's/^\[batch\]$/[batch]\nnum_actors = 1/' "$work/job.toml" > "$work/job-1.toml"
./target/release/stook run --fresh --json "$work/job-1.toml" > "$work/stook-1.json"
./target/release/stook bench stages --json --input "$work/input.jsonl" --batch "${BATCH:-1024}" \
  > "$work/stages.json"

python3 - "$work" "$n" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
st = json.load(open(f"{work}/st.json"))
sk = json.load(open(f"{work}/stook.json"))
sk1 = json.load(open(f"{work}/stook-1.json"))
sg = json.load(open(f"{work}/stages.json"))
st_rate = st["rows"] / st["seconds"]
sk_rate = sk["rows_per_second"]
floor = 480.0  # the 2-core compute floor for this model and corpus (see README)
print(f"corpus: {n} sentences")
print("| system | sentences/s | × sentence-transformers | × compute floor (480/s) | peak RSS |")
print("| --- | ---: | ---: | ---: | ---: |")
print(f"| sentence-transformers encode (PyTorch CPU, 2 threads, batch 64) | {st_rate:.0f} | 1.00 | {st_rate/floor:.2f} | {st['peak_rss_bytes']/2**20:.0f} MiB |")
print(f"| stook run, embedding backend (end to end; 2 actors × 1 thread, the default) | {sk_rate:.0f} | {sk_rate/st_rate:.2f} | {sk_rate/floor:.2f} | {sk['peak_rss_bytes']/2**20:.0f} MiB |")
r1 = sk1["rows_per_second"]
print(f"| stook run, 1 actor × 2 threads | {r1:.0f} | {r1/st_rate:.2f} | {r1/floor:.2f} | {sk1['peak_rss_bytes']/2**20:.0f} MiB |")
pf = st["rows"] / st["forward_seconds"]
print(f"| PyTorch forward alone (pre-tokenized, sorted, batch 64) | {pf:.0f} | {pf/st_rate:.2f} | {pf/floor:.2f} | |")
sf = sg["texts"] / sg["forward"]
print(f"| stook forward alone (stook bench stages) | {sf:.0f} | {sf/st_rate:.2f} | {sf/floor:.2f} | |")
print(f"stook stages: tokenize {sg['tokenize']:.2f} s, forward {sg['forward']:.2f} s, format {sg['format']:.2f} s")
PY
