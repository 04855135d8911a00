#!/usr/bin/env bash
# The embedding backend on an NVIDIA GPU, beside sentence-transformers
# `encode` and a raw PyTorch forward (SDPA attention), in one run, on the
# same sentences; stook's packed passes (the default) beside padded ones.
# Runs on the GPU machine, from a kit that
# scripts/gpu-kit.sh builds on any machine (a `--features cuda` stook
# binary, the model in f16, the corpus):
#   KIT=.gpu scripts/bench-gpu.sh
# Needs python3 with torch, transformers and sentence-transformers (the
# GPU machine's own), and the CUDA 13 libraries (found through torch's
# `nvidia` package).
set -euo pipefail
cd "$(dirname "$0")/.."
kit=${KIT:-.gpu}
work=${WORK:-/tmp/stook-gpu}
reps=${REPS:-32}
rm -rf "$work" && mkdir -p "$work"
stook=$kit/stook
if [ -f "$kit/stook.xz" ]; then  # the kit's binary travels compressed
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$kit/stook.xz" "$work/stook"
  chmod +x "$work/stook" && stook=$work/stook
fi
lib=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for _ in $(seq "$reps"); do cat "$kit/input.jsonl"; done > "$work/input.jsonl"
n=$(wc -l < "$work/input.jsonl")
echo "corpus: $n sentences ($reps × $(wc -l < "$kit/input.jsonl"))"
model=$(realpath "$kit/model")
# Each of stook's packed kernels against its CPU version first: if one
# disagrees, the runs below fall back to padded passes (and say so).
"$stook" bench kernels --device cuda:0 || echo "bench kernels: some kernels disagree (see above)"
run() { # name dtype actors [attention [micro_batch]]
  cat > "$work/$1.toml" <<TOML
[input]
path = "input.jsonl"
[output]
path = "out-$1"
[model]
backend = "embedding"
[model.options]
path = "$model"
dtype = "$2"
attention = "${4:-packed}"
${5:+micro_batch = $5}
[batch]
size = 4096
num_actors = $3
device = "cuda:0"
[memory]
object_store = "1GiB"
TOML
  "$stook" run --fresh --json "$work/$1.toml" > "$work/$1.json"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"stook {sys.argv[2]:<10} {r['rows']} rows {r['wall_seconds']:.2f} s {r['rows_per_second']:.0f} sentences/s devices {r['devices']} peak RSS {r['peak_rss_bytes']/2**20:.0f} MiB\")" "$work/$1.json" "$1"
}
for attention in packed padded; do
  "$stook" bench stages --input "$work/input.jsonl" --model "$model" --device cuda:0 --dtype f16 \
    --batch 4096 --attention $attention
done
run f16-1 f16 1
run f16-2 f16 2
run f16-4 f16 4
run f16-2-padded f16 2 padded
run f16-2-rows2048 f16 2 packed 2048  # packed passes are bounded by real tokens: try more rows
run bf16-2 bf16 2
run f32-2 f32 2
python3 - "$work" "$model" "$kit/input.jsonl" <<'PY'
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer
work, model, small = sys.argv[1:4]
texts = [json.loads(l)["text"] for l in open(f"{work}/input.jsonl", encoding="utf-8")]
dev = "cuda"
def timed(f):
    torch.cuda.synchronize(); t = time.perf_counter(); r = f(); torch.cuda.synchronize()
    return r, time.perf_counter() - t
st = SentenceTransformer(model, device=dev).half()
st.encode(texts[:1024], batch_size=256)
_, s = timed(lambda: st.encode(texts, batch_size=256, convert_to_numpy=True))
print(f"sentence-transformers encode f16 batch 256: {len(texts)/s:.0f} sentences/s")
tok = AutoTokenizer.from_pretrained(model)
raw = AutoModel.from_pretrained(model, attn_implementation="sdpa", dtype=torch.float16).to(dev).eval()
order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
batches = [tok([texts[i] for i in order[k:k+256]], padding=True, truncation=True, max_length=256, return_tensors="pt").to(dev)
           for k in range(0, len(texts), 256)]
with torch.inference_mode():
    for b in batches[:4]: raw(**b)
    def fwd():
        for b in batches:
            h = raw(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    _, s = timed(fwd)
print(f"PyTorch raw forward f16 SDPA batch 256, pre-tokenized, pooled: {len(texts)/s:.0f} sentences/s")
# Agreement: stook on the GPU against sentence-transformers f32 on the GPU.
st32 = SentenceTransformer(model, device=dev).float()
few = [json.loads(l)["text"] for l in open(small, encoding="utf-8")]
ref = torch.tensor(st32.encode(few, batch_size=256))
for name in ["f16-1", "f16-2", "f16-2-padded", "bf16-2", "f32-2"]:
    got = []
    with open(f"{work}/out-{name}/part-00000.jsonl") as f:
        for l in f:
            got.append(json.loads(l)["embedding"])
            if len(got) == len(few): break
    g = torch.tensor(got)
    cos = torch.nn.functional.cosine_similarity(g, ref.to(g.dtype), dim=1)
    print(f"stook {name} vs sentence-transformers f32: min cosine {cos.min().item():.6f}, mean {cos.mean().item():.7f}, all finite {bool(torch.isfinite(g).all())}")
PY
