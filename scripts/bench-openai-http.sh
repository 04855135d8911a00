#!/usr/bin/env bash
# The openai-http backend beside a plain concurrent client, against the same
# OpenAI-compatible server in the same run: tests/openai_server.py (MiniLM
# in numpy, one BLAS thread a request) on 127.0.0.1, the same texts, the
# same requests (TEXTS_PER_REQUEST texts each) and the same number in flight
# (CONCURRENCY). The client is Python threads posting and parsing the
# responses, as a hand-written batch script would; stook writes every
# vector to its output as well. Rounds alternate; the ratio is stook's
# texts/s over the client's, by median.
#
#   scripts/bench-openai-http.sh                  1,000 texts, 3 rounds
#   TEXTS=5000 ROUNDS=5 scripts/bench-openai-http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TEXTS=${TEXTS:-1000}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-8}
TEXTS_PER_REQUEST=${TEXTS_PER_REQUEST:-16}
WORK=${WORK:-bench-out/openai-http}
scripts/fetch-model.sh >/dev/null
scripts/pyarrow-env.sh
cargo build --release --locked --quiet --bin stook
PY=.venv-arrow/bin/python
rm -rf "$WORK" && mkdir -p "$WORK"
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "$PY" tests/openai_server.py models/all-MiniLM-L6-v2 "$PORT" >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
until "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT))" 2>/dev/null; do sleep 0.2; done
"$PY" - "$WORK/texts.jsonl" "$TEXTS" <<'EOF'
import json, sys
words = "the quick brown fox jumps over a lazy dog while stook reads every row once".split()
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        text = " ".join(words[(i * 7 + k) % len(words)] for k in range(6 + i % 9))
        f.write(json.dumps({"id": i, "text": f"{text} {i}"}) + "\n")
EOF
cat >"$WORK/job.toml" <<EOF
[input]
path = "texts.jsonl"
[output]
path = "out"
[model]
backend = "openai-http"
[model.options]
base_url = "http://127.0.0.1:$PORT/v1"
schema = "text"
model = "m"
max_concurrency = $((CONCURRENCY / 2))
texts_per_request = $TEXTS_PER_REQUEST
[batch]
size = $((CONCURRENCY / 2 * TEXTS_PER_REQUEST * 2))
num_actors = 2
EOF
client() {
  "$PY" - "$WORK/texts.jsonl" "$PORT" "$CONCURRENCY" "$TEXTS_PER_REQUEST" <<'EOF'
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
path, port, conc, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
texts = [json.loads(l)["text"] for l in open(path)]
groups = [texts[i:i + per] for i in range(0, len(texts), per)]
def post(group):
    body = json.dumps({"model": "m", "input": group, "encoding_format": "float"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return len(json.load(r)["data"])
t = time.time()
with ThreadPoolExecutor(conc) as pool:
    n = sum(pool.map(post, groups))
assert n == len(texts)
print(f"{n / (time.time() - t):.1f}")
EOF
}
stook() {
  rm -rf "$WORK/out"
  target/release/stook run "$WORK/job.toml" >/dev/null 2>"$WORK/stook.err"
  "$PY" -c "import json; r = json.load(open('$WORK/out/_report.json')); print(f\"{r['rows_per_second']:.1f}\")"
}
client >/dev/null # warm up the server
echo "openai-http: $TEXTS texts, $TEXTS_PER_REQUEST a request, $CONCURRENCY in flight, server tests/openai_server.py"
C=(); S=()
for r in $(seq "$ROUNDS"); do
  c=$(client); s=$(stook)
  C+=("$c"); S+=("$s")
  echo "round $r: plain client $c texts/s, stook $s texts/s"
done
"$PY" - "${C[*]}" "${S[*]}" <<'EOF'
import statistics, sys
c = statistics.median(map(float, sys.argv[1].split()))
s = statistics.median(map(float, sys.argv[2].split()))
print(f"median: plain client {c:.1f} texts/s, stook {s:.1f} texts/s, stook/client {s / c:.3f} (overhead {100 * (1 - s / c):.1f}%)")
EOF
