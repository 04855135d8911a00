#!/usr/bin/env bash
# Builds stook and runs the demo job on the shipped sample, then shows the
# run report. Run from anywhere; needs only cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
./target/release/stook backends
./target/release/stook validate config/demo.toml
./target/release/stook run --fresh config/demo.toml
echo "--- out/demo/_report.json"
cat out/demo/_report.json
