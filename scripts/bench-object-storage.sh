#!/usr/bin/env bash
# Object storage against local files, same input, same run: a JSON Lines
# file of SIZE_MB MiB (real text: the shared fortunes corpus, repeated)
# through the `echo` backend with a 64 MiB budget (memory.object_store),
# local file → local directory, and the same bytes as an object in an
# S3-compatible store → a prefix in the same store (moto's server from
# PyPI, on 127.0.0.1; stook reads by ranged GETs and uploads each part).
# Rounds alternate; medians are reported: rows/s over each run's wall time
# (validation, run, merge and uploads included) and the stook process's
# peak RSS (from its report), with the difference against the target of
# 64 MiB. The store runs on the same cores, so the bucket's rows/s are a
# floor for a real S3 endpoint, not a figure for one; the script also times
# the store alone serving one pass of 8 MiB ranged GETs and one upload,
# with boto3.
#
#   scripts/bench-object-storage.sh                  1 GiB, 3 rounds
#   SIZE_MB=256 ROUNDS=1 scripts/bench-object-storage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-3}
WORK=${WORK:-bench-out/object-storage}
scripts/pyarrow-env.sh
cargo build --release --locked --quiet --bin stook
STOOK=$PWD/target/release/stook
PY=$PWD/.venv-arrow/bin/python
rm -rf "$WORK" && mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
"$PY" - "$WORK/in.jsonl" "$SIZE_MB" /work/shared/data/fortunes-4000.jsonl.gz ../shared/data/fortunes-4000.jsonl.gz <<'PYEOF'
import gzip, json, os, sys
out, size = sys.argv[1], int(sys.argv[2]) << 20
src = next(p for p in sys.argv[3:] if os.path.exists(p))
texts = [json.loads(l)["text"] for l in gzip.open(src, "rt")]
with open(out, "w") as f:
    i = 0
    while f.tell() < size:
        f.write(json.dumps({"id": i, "text": texts[i % len(texts)]}) + "\n")
        i += 1
PYEOF
PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
"$PWD/.venv-arrow/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null || true' EXIT
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
"$PY" - "$WORK/in.jsonl" <<'PYEOF'
import os, sys, time, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
for _ in range(100):
    try:
        s3.create_bucket(Bucket="bench")
        break
    except Exception:
        time.sleep(0.2)
s3.upload_file(sys.argv[1], "bench", "in.jsonl")
print("uploaded", s3.head_object(Bucket="bench", Key="in.jsonl")["ContentLength"], "bytes")
PYEOF
job() { # name input output
  cat >"$WORK/$1.toml" <<TOML
[input]
path = "$2"
[output]
path = "$3"
staging = "$WORK/staging"
[model]
backend = "echo"
[batch]
size = 1024
num_actors = 2
[memory]
object_store = "64MiB"
[checkpoint]
shard_rows = 102400
TOML
}
job local "$WORK/in.jsonl" "$WORK/out-local"
job s3 "s3://bench/in.jsonl" "s3://bench/out"
for r in $(seq 1 "$ROUNDS"); do
  for kind in local s3; do
    "$STOOK" run "$WORK/$kind.toml" --fresh --json >"$WORK/$kind-$r.json" 2>"$WORK/$kind-$r.log"
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"round $r $kind: {r['rows']} rows, {r['wall_seconds']:.1f} s, {r['rows_per_second']:.0f} rows/s, peak RSS {r['peak_rss_bytes']/2**20:.1f} MiB, peak store {r['peak_store_bytes']/2**20:.1f} MiB\")" "$WORK/$kind-$r.json"
  done
done
# The store alone: one pass over the object in 8 MiB ranged GETs (boto3),
# and one upload of it; a bucket run reads the object twice (the check
# before the model loads, then the run) and uploads as much.
"$PY" - "$WORK/in.jsonl" >"$WORK/floor.txt" <<'PYEOF'
import os, sys, time, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
size = os.path.getsize(sys.argv[1])
t = time.time()
for off in range(0, size, 8 << 20):
    s3.get_object(Bucket="bench", Key="in.jsonl", Range=f"bytes={off}-{off + (8 << 20) - 1}")["Body"].read()
read = time.time() - t
t = time.time()
s3.upload_file(sys.argv[1], "bench", "copy.jsonl")
print(f"{read:.1f} {time.time() - t:.1f}")
PYEOF
read -r FLOOR_READ FLOOR_PUT <"$WORK/floor.txt"
echo "the store alone: one read pass in 8 MiB ranged GETs ${FLOOR_READ} s, one upload ${FLOOR_PUT} s"
"$PY" - "$WORK" "$ROUNDS" <<'PYEOF'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def med(kind, key):
    return statistics.median(json.load(open(f"{work}/{kind}-{r}.json"))[key] for r in range(1, rounds + 1))
lr, sr = med("local", "rows_per_second"), med("s3", "rows_per_second")
lm, sm = med("local", "peak_rss_bytes") / 2**20, med("s3", "peak_rss_bytes") / 2**20
print(f"median of {rounds}: local {lr:.0f} rows/s, bucket {sr:.0f} rows/s (bucket/local {sr/lr:.2f}x); "
      f"peak RSS local {lm:.1f} MiB, bucket {sm:.1f} MiB: +{sm-lm:.1f} MiB "
      f"({'within' if sm - lm <= 64 else 'over'} the 64 MiB target)")
PYEOF
