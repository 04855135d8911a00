#!/usr/bin/env bash
# Input and output formats side by side: the echo backend over the same rows
# as JSON Lines (plain, gzip, zstd), Parquet and Arrow IPC, each run its own
# process (so peak RSS is its own), every output checked equal to the
# JSON Lines run's. Figures come from each run's _report.json; the ratio is
# against the plain JSON Lines run of the same invocation.
#
#   scripts/bench-formats.sh            2,000,000 rows of about 200 bytes
#   ROWS=500000 ROUNDS=3 scripts/bench-formats.sh   (5 rounds by default: one run
#                                       of 2 s swings by ±10% on a busy machine)
#   STOOK=/path/to/stook scripts/bench-formats.sh   times that binary (another
#                                       build, to compare two) instead of building
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-2000000}
ROUNDS=${ROUNDS:-5}
WORK=${WORK:-bench-out/formats}
scripts/pyarrow-env.sh
if [ -z "${STOOK:-}" ]; then
  cargo build --release --locked --quiet --bin stook
  STOOK=target/release/stook
fi
PY=.venv-arrow/bin/python
# The data is made once per row count (pyarrow; about 3 minutes for 2M rows).
if [ "$(cat "$WORK/rows" 2>/dev/null)" != "$ROWS" ]; then
rm -rf "$WORK" && mkdir -p "$WORK"
"$PY" - "$WORK" "$ROWS" <<'EOF'
import gzip, json, os, sys
import pyarrow as pa, pyarrow.feather as feather, pyarrow.parquet as pq
d, n = sys.argv[1], int(sys.argv[2])
words = "the quick brown fox jumps over a lazy dog while stook reads every row once".split()
ids = pa.array(range(n), pa.int64())
text = pa.array([" ".join(words[(i * 7 + k) % len(words)] for k in range(8 + i % 17)) + " é" for i in range(n)])
score = pa.array([i / 8 for i in range(n)], pa.float64())
t = pa.table({"id": ids, "text": text, "score": score})
pq.write_table(t, os.path.join(d, "in.parquet"), row_group_size=100_000)
feather.write_feather(t, os.path.join(d, "in.arrow"), compression="uncompressed", chunksize=100_000)
with open(os.path.join(d, "in.jsonl"), "w", encoding="utf-8") as f:
    for r in t.to_pylist():
        f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
raw = open(os.path.join(d, "in.jsonl"), "rb").read()
with gzip.open(os.path.join(d, "in.jsonl.gz"), "wb", compresslevel=6) as f:
    f.write(raw)
with pa.CompressedOutputStream(os.path.join(d, "in.jsonl.zst"), "zstd") as f:
    f.write(raw)
EOF
echo "$ROWS" > "$WORK/rows"
fi
rm -rf "$WORK"/out-*

run() { # name input output-format
  local out="$WORK/out-$1"
  rm -rf "$out"
  cat > "$WORK/$1.toml" <<EOF
[input]
path = "$(basename "$2")"
[output]
path = "out-$1"
format = "$3"
[model]
backend = "echo"
[batch]
size = 4096
[checkpoint]
shard_rows = 500000
EOF
  "$STOOK" run "$WORK/$1.toml" >/dev/null 2>"$WORK/$1.log" || { cat "$WORK/$1.log"; exit 1; }
  "$PY" - "$out" "$3" "$1" "$WORK/$2" <<'EOF'
import json, os, sys
out, fmt, name, inp = sys.argv[1:5]
r = json.load(open(os.path.join(out, "_report.json")))
size = sum(os.path.getsize(os.path.join(inp, f)) for f in os.listdir(inp)) if os.path.isdir(inp) else os.path.getsize(inp)
print("%s\t%.0f\t%.1f\t%.1f\t%.1f" % (name, r["rows_per_second"], r["peak_rss_bytes"] / 2**20, size / 2**20, r["bytes_written"] / 2**20))
EOF
}

dump() { # out-dir format → one line per result
  "$PY" - "$1" "$2" <<'EOF'
import os, sys, hashlib
import pyarrow.parquet as pq, pyarrow.ipc as ipc, pyarrow as pa
out, fmt = sys.argv[1:3]
h = hashlib.sha256()
for p in sorted(f for f in os.listdir(out) if f.startswith("part-")):
    p = os.path.join(out, p)
    if fmt == "jsonl":
        h.update(open(p, "rb").read())
    else:
        t = pq.read_table(p) if fmt == "parquet" else ipc.open_file(pa.memory_map(p)).read_all()
        if t.schema.names == ["result"]:
            rows = t.column("result").to_pylist()
        else:  # a table's rows, typed: as the JSON Lines input holds them
            import json
            rows = [json.dumps({k: v for k, v in r.items() if v is not None}, ensure_ascii=False,
                               separators=(",", ":")) for r in t.to_pylist()]
        for s in rows:
            h.update(s.encode() + b"\n")
print(h.hexdigest())
EOF
}

echo "echo backend, $ROWS rows, batch 4096, 2 actors, $(nproc) cores; each run its own process;"
echo "$ROUNDS rounds, the formats alternating within each; rows/s is the median over the rounds"
specs=("jsonl:in.jsonl:jsonl" "jsonl.gz:in.jsonl.gz:jsonl" "jsonl.zst:in.jsonl.zst:jsonl"
       "parquet:in.parquet:jsonl" "arrow:in.arrow:jsonl"
       "jsonl-to-parquet:in.jsonl:parquet" "jsonl-to-arrow:in.jsonl:arrow"
       "parquet-to-parquet:in.parquet:parquet" "arrow-to-arrow:in.arrow:arrow")
: > "$WORK/rounds.tsv"
for round in $(seq "$ROUNDS"); do
  for spec in "${specs[@]}"; do
    IFS=: read -r name input fmt <<<"$spec"
    run "$name" "$input" "$fmt" >> "$WORK/rounds.tsv"
    if [ "$round" = 1 ]; then
      sum=$(dump "$WORK/out-$name" "$fmt")
      [ -z "${want:-}" ] && want=$sum
      [ "$sum" = "$want" ] || { echo "$name: results differ from the jsonl run's"; exit 1; }
    fi
  done
done
"$PY" - "$WORK/rounds.tsv" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, rps, rss, insize, outsize = line.split("\t")
    runs.setdefault(name, []).append((float(rps), float(rss), float(insize), float(outsize)))
base = statistics.median(r[0] for r in runs["jsonl"])
print("%-22s %12s %8s %12s %12s %12s" % ("run", "rows/s", "vs jsonl", "peak RSS", "input MiB", "output MiB"))
for name, rs in runs.items():
    rps = statistics.median(r[0] for r in rs)
    print("%-22s %12.0f %7.2fx %8.1f MiB %12.1f %12.1f" % (
        name, rps, rps / base, max(r[1] for r in rs), rs[0][2], rs[0][3]))
EOF
echo "every run's results are identical to the plain JSON Lines run's (sha256 of the result rows)"
