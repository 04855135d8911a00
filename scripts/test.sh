#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, unit,
# integration and property tests, and every shipped config run as it is.
# .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== model (scripts/fetch-model.sh)"
scripts/fetch-model.sh
echo "== pyarrow and openai for tests/formats.rs, tests/openai.rs (scripts/pyarrow-env.sh: pip install into .venv-arrow)"
scripts/pyarrow-env.sh
echo "== Slurm and munge for tests/slurm.rs (scripts/slurm-cluster.sh install: Debian packages, as root)"
scripts/slurm-cluster.sh install
echo "== cargo fmt --check"
cargo fmt --all -- --check
# One check build lints everything and checks the CUDA path (the code that
# is only built without the feature is none but a cfg_attr).
echo "== cargo clippy -D warnings, --features cuda (CUDA 13.0 toolkit from PyPI wheels: scripts/cuda-toolkit.sh), and --no-default-features"
(
  eval "$(scripts/cuda-toolkit.sh)"
  # candle's kernels are written empty: a check build only needs them to
  # exist (scripts/nvcc-check-stub.sh); stook's own go through the real nvcc.
  export NVCC=$PWD/scripts/nvcc-check-stub.sh
  CARGO_TARGET_DIR=target/cuda-check cargo clippy --workspace --all-targets --locked --features cuda -- -D warnings
  # A host that runs only its own models builds stook without the embedding
  # backend (no candle, tokenizers or gemm): that build must stay clean too.
  CARGO_TARGET_DIR=target/cuda-check cargo clippy -p stook --lib --bins --locked --no-default-features -- -D warnings
)
echo "== cargo test"
cargo test --workspace --locked
