#!/usr/bin/env bash
# The CUDA 13.0 toolkit from PyPI wheels (no installer, no driver needed),
# for `cargo check/build --features cuda` on any x86-64 Linux machine.
# Installs pinned wheels under .venv-cuda (once), makes a link-time stub
# libcuda.so (the driver supplies the real one at run time) and prints the
# environment to use:   eval "$(scripts/cuda-toolkit.sh)"
# Pins: a newer nvvm/crt emits PTX that the 13.0 ptxas and a CUDA 13.0
# driver reject.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$PWD/.venv-cuda
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv/site"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$venv/site" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 >&2
  touch "$venv/.complete"
fi
cuda_home=$venv/site/nvidia/cu13
[ -x "$cuda_home/bin/nvcc" ] || { echo "cuda-toolkit: no nvcc under $cuda_home" >&2; exit 1; }
# Unversioned names for the libraries the wheels ship only versioned, and a
# stub libcuda.so.1 defining the driver symbols candle's cudarc calls.
stub=$venv/stub
if [ ! -f "$stub/libcuda.so" ]; then
  mkdir -p "$stub"
  for lib in "$cuda_home"/lib/lib*.so.*; do
    base=$(basename "$lib"); ln -sf "$lib" "$stub/${base%%.so.*}.so"
  done
  syms="cuCtxDestroy_v2 cuCtxGetCurrent cuCtxSetCurrent cuDevicePrimaryCtxRelease_v2
    cuDevicePrimaryCtxRetain cuDeviceGet cuDeviceGetAttribute cuDeviceGetCount cuDeviceGetName
    cuEventCreate cuEventDestroy_v2 cuEventRecord cuEventSynchronize cuEventElapsedTime
    cuGetErrorString cuGetErrorName cuInit cuLaunchKernel cuMemAllocAsync cuMemAlloc_v2
    cuMemFreeAsync cuMemFree_v2 cuMemcpyDtoDAsync_v2 cuMemcpyDtoHAsync_v2 cuMemcpyHtoDAsync_v2
    cuMemcpyPeerAsync cuMemsetD8Async cuMemGetInfo_v2 cuModuleGetFunction cuModuleLoad
    cuModuleLoadData cuModuleUnload cuStreamCreate cuStreamDestroy_v2 cuStreamSynchronize
    cuStreamWaitEvent cuStreamQuery cuCtxSynchronize cuDriverGetVersion cuFuncGetAttribute
    cuFuncSetAttribute cuOccupancyMaxPotentialBlockSize cuPointerGetAttribute cuMemHostAlloc
    cuMemFreeHost cuMemHostRegister_v2 cuMemHostUnregister cuDevicePrimaryCtxGetState cuCtxPushCurrent_v2
    cuCtxPopCurrent_v2 cuMemcpyDtoH_v2 cuMemcpyHtoD_v2 cuMemsetD32Async cuStreamCreateWithPriority
    cuStreamIsCapturing cuStreamBeginCapture_v2 cuStreamEndCapture cuGraphInstantiateWithFlags
    cuGraphLaunch cuGraphDestroy cuGraphExecDestroy cuStreamGetCaptureInfo_v2"
  { for s in $syms; do echo "int $s(void) { return 999; }"; done; } > "$stub/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
fi
echo "export CUDA_HOME='$cuda_home'"
echo "export PATH='$cuda_home/bin':\"\$PATH\""
echo "export LIBRARY_PATH='$stub':\"\${LIBRARY_PATH:-}\""
echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
echo "export CUDARC_CUDA_VERSION=13000"
