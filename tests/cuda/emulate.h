// Just enough of CUDA to run packed.cu's kernels on the CPU, for tests:
// `launch` runs a grid's blocks one after another and each block's threads
// as OS threads, `__syncthreads` is a barrier, `__shared__` variables are
// function statics (one block runs at a time), and the half types are
// software ones with the GPU's rounding (to nearest, ties to even).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

using std::min;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline dim3 gridDim, blockDim, blockIdx;
inline thread_local dim3 threadIdx;
inline std::barrier<>* block_barrier = nullptr;

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

struct __half {
    _Float16 v;
};
inline float __half2float(__half h) { return (float)h.v; }
inline __half __float2half_rn(float f) { return {(_Float16)f}; }

struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return {(uint16_t)(u >> 16)};
}

// Runs `kernel` (a callable taking no arguments) over `grid` × `block`.
template <class F>
void launch(dim3 grid, dim3 block, F kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                std::barrier<> barrier(threads);
                block_barrier = &barrier;
                std::vector<std::thread> running;
                for (unsigned t = 0; t < threads; ++t)
                    running.emplace_back([&, t] {
                        threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
                        kernel();
                    });
                for (auto& t : running) t.join();
            }
}

inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
