#!/usr/bin/env bash
# The python backend beside Ray Data's map_batches, same input, same run:
# an identity class (a pyarrow Table in, the same Table out) over ROWS rows
# of real text (the shared fortunes corpus, repeated), JSON Lines in and
# out, 2 actors, batches of BATCH rows, on this machine's cores.
#
#   Ray Data: read_json → map_batches(Identity, ActorPoolStrategy(size=2),
#             num_cpus=0.5: at Ray's default of 1 the read tasks starve on 2
#             cores) → write_json; Ray 2.60 from PyPI in .venv-ray.
#   stook:    backend = "python", the same class (with its output_schema),
#             2 actors; and stook's own `echo` backend, no Python at all.
#
# Each command runs under scripts/tree-memory.py, which samples its whole
# process tree (Ray's raylet, GCS and workers; stook's Python workers):
# peak RSS summed over the tree and peak PSS (shared memory divided among
# the processes mapping it). Rows/s are over each command's whole wall
# time; for Ray also without ray.init() (measured inside its script).
# Rounds alternate; medians are reported. Then a class whose results are
# ten times its input (TENFOLD_ROWS rows, a 16 MiB budget): its peak store
# against the budget.
#
#   scripts/bench-python.sh                         200,000 rows, 3 rounds
#   ROWS=1000000 ROUNDS=5 scripts/bench-python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-200000}
ROUNDS=${ROUNDS:-3}
BATCH=${BATCH:-1024}
WORK=${WORK:-bench-out/python}
RAY_VENV=${RAY_VENV:-.venv-ray}
scripts/pyarrow-env.sh
if ! "$RAY_VENV/bin/python" -c "import ray.data" 2>/dev/null; then
  python3 -m venv "$RAY_VENV"
  "$RAY_VENV/bin/pip" install --quiet --disable-pip-version-check "ray[data]==2.60.0" pyarrow==22.0.0 pandas==2.3.3 numpy==2.3.5
fi
cargo build --release --locked --quiet --bin stook
STOOK=$PWD/target/release/stook
PY=$PWD/.venv-arrow/bin/python
rm -rf "$WORK" && mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
"$PY" - "$WORK/in.jsonl" "$ROWS" /work/shared/data/fortunes-4000.jsonl.gz ../shared/data/fortunes-4000.jsonl.gz <<'EOF'
import gzip, json, os, sys
out, rows = sys.argv[1], int(sys.argv[2])
src = next(p for p in sys.argv[3:] if os.path.exists(p))
texts = [json.loads(l)["text"] for l in gzip.open(src, "rt")]
with open(out, "w") as f:
    for i in range(rows):
        f.write(json.dumps({"id": i, "text": texts[i % len(texts)]}) + "\n")
EOF
cat >"$WORK/identity.py" <<'EOF'
import pyarrow as pa

class Identity:
    output_schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    def __call__(self, batch):
        return batch
EOF
cat >"$WORK/ray_job.py" <<'EOF'
import json, sys, time
import ray

class Identity:
    def __call__(self, batch):
        return batch

inp, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
t0 = time.monotonic()
ds = ray.data.read_json(inp)
ds = ds.map_batches(Identity, batch_format="pyarrow", batch_size=batch,
                    compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
ds.write_json(out)
print(json.dumps({"seconds_after_init": time.monotonic() - t0}))
EOF
job() { # name backend [options]
  cat >"$WORK/$1.toml" <<EOF
[input]
path = "in.jsonl"
[output]
path = "out-$1"
[model]
backend = "$2"
$3
[batch]
size = $BATCH
num_actors = 2
[memory]
object_store = "64MiB"
EOF
}
job stook python "[model.options]
python = \"$PY\"
module = \"identity.py\"
class = \"Identity\""
job echo echo ""
# Results ten times their input and more: a 512-float vector (2,048 bytes
# of values, about 5 KB of JSON) for each ~160-byte row, under a 16 MiB
# budget.
cat >"$WORK/tenfold.py" <<'EOF'
import numpy as np
import pyarrow as pa

class Tenfold:
    output_schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), 512))])
    def __call__(self, batch):
        ids = batch["id"].to_numpy()
        v = ((ids % 7 + 1) / 7).astype(np.float32)
        return {"id": ids, "vector": np.repeat(v[:, None], 512, axis=1)}
EOF
job tenfold python "[model.options]
python = \"$PY\"
module = \"tenfold.py\"
class = \"Tenfold\"
result_bytes_per_row = 2100"
sed -i 's/object_store = "64MiB"/object_store = "16MiB"/; s/^size = .*/size = 256/; s/path = "in.jsonl"/path = "in-tenfold.jsonl"/' "$WORK/tenfold.toml"
for r in $(seq 1 "$ROUNDS"); do
  for which in ray stook echo; do
    rm -rf "$WORK/out-$which"
    case $which in
      ray) "$PY" scripts/tree-memory.py "$WORK/$which-$r.json" -- \
             "$RAY_VENV/bin/python" "$WORK/ray_job.py" "$WORK/in.jsonl" "$WORK/out-ray" "$BATCH" \
             >"$WORK/ray-$r.out" 2>"$WORK/ray-$r.log" ;;
      *) "$PY" scripts/tree-memory.py "$WORK/$which-$r.json" -- "$STOOK" run "$WORK/$which.toml" 2>"$WORK/$which-$r.log" ;;
    esac
  done
  # The outputs hold the same rows (Ray writes them in its own files and order).
  "$PY" - "$WORK" "$ROWS" <<'EOF'
import glob, json, sys
work, rows = sys.argv[1], int(sys.argv[2])
def ids(pattern):
    return sorted(json.loads(l)["id"] for p in glob.glob(pattern) for l in open(p))
want = list(range(rows))
for name, pattern in [("ray", "out-ray/*.json"), ("stook", "out-stook/part-*.jsonl"), ("echo", "out-echo/part-*.jsonl")]:
    assert ids(f"{work}/{pattern}") == want, f"{name}: rows missing or repeated"
EOF
done
TENFOLD_ROWS=${TENFOLD_ROWS:-200000}
head -n "$TENFOLD_ROWS" "$WORK/in.jsonl" >"$WORK/in-tenfold.jsonl"
rm -rf "$WORK/out-tenfold"
"$STOOK" run "$WORK/tenfold.toml" 2>"$WORK/tenfold.log"
"$PY" - "$WORK" <<'EOF'
import glob, json, os, sys
work = sys.argv[1]
r = json.load(open(f"{work}/out-tenfold/_report.json"))
inp = os.path.getsize(f"{work}/in-tenfold.jsonl")
out = sum(os.path.getsize(p) for p in glob.glob(f"{work}/out-tenfold/part-*"))
MiB = 1 << 20
values = r["rows"] * 512 * 4
print(f"tenfold: {r['rows']} rows, {inp / MiB:.1f} MiB in, results {values / MiB:.1f} MiB of floats "
      f"({values / inp:.1f}x the input), {out / MiB:.1f} MiB of JSON Lines ({out / inp:.1f}x), "
      f"{r['rows_per_second']:.0f} rows/s, peak store {r['peak_store_bytes'] / MiB:.2f} MiB of "
      f"{r['store_budget_bytes'] / MiB:.0f} MiB "
      f"({'within' if r['peak_store_bytes'] <= r['store_budget_bytes'] else 'OVER'} the budget)")
EOF
"$PY" - "$WORK" "$ROWS" "$ROUNDS" <<'EOF'
import json, statistics, sys
work, rows, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def load(which, r):
    m = json.load(open(f"{work}/{which}-{r}.json"))
    if which == "ray":
        m["after_init"] = json.loads(open(f"{work}/ray-{r}.out").read().strip().splitlines()[-1])["seconds_after_init"]
    return m
runs = {w: [load(w, r) for r in range(1, rounds + 1)] for w in ["ray", "stook", "echo"]}
med = lambda w, k: statistics.median(m[k] for m in runs[w])
MiB = 1 << 20
for w in runs:
    print(f"{w:6} rows/s {rows / med(w, 'wall_seconds'):9.0f}   peak RSS (tree) {med(w, 'peak_rss_bytes') / MiB:7.1f} MiB"
          f"   peak PSS (tree) {med(w, 'peak_pss_bytes') / MiB:7.1f} MiB   processes {max(m['peak_processes'] for m in runs[w])}")
print(f"ray    rows/s {rows / med('ray', 'after_init'):9.0f}   (after ray.init)")
s, r, e = (rows / med(w, "wall_seconds") for w in ["stook", "ray", "echo"])
print(f"median of {rounds}: stook/ray rows/s {s / r:.2f}x ({s / (rows / med('ray', 'after_init')):.2f}x after ray.init); "
      f"peak RSS stook/ray {med('stook', 'peak_rss_bytes') / med('ray', 'peak_rss_bytes'):.3f}, "
      f"peak PSS stook/ray {med('stook', 'peak_pss_bytes') / med('ray', 'peak_pss_bytes'):.3f}; "
      f"python/echo rows/s {s / e:.2f}")
EOF
