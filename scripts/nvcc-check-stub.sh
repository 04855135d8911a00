#!/usr/bin/env bash
# nvcc for the lint step of scripts/test.sh only (`cargo clippy --features
# cuda`, a check build: nothing is linked or run). candle's build script
# compiles candle's own CUDA kernels (PTX and a static library of MoE and
# quantised-matmul kernels: about 9 of the step's 14 minutes on 2 cores);
# a check build needs only that those files exist. Through NVCC (which
# candle's build reads first) this writes each output empty; any other call
# goes to the real nvcc. stook's own kernels (build.rs, packed.cu) are
# compiled by the real nvcc still, and scripts/gpu-kit.sh builds everything
# with it for a GPU.
set -euo pipefail
real="${CUDA_HOME:?CUDA_HOME is not set}/bin/nvcc"
mode="" out="" outdir="" src=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --ptx) mode=ptx ;;
    -c) mode=obj ;;
    --lib | -lib) mode=lib ;;
    -o) out="${args[i + 1]}" ;;
    --output-directory) outdir="${args[i + 1]}" ;;
    *.cu) src="${args[i]}" ;;
  esac
done
case "$mode" in
  ptx) : >"$outdir/$(basename "$src" .cu).ptx" ;;
  obj) : >"$out" ;;
  lib) printf '!<arch>\n' >"$out" ;;
  *) exec "$real" "$@" ;;
esac
