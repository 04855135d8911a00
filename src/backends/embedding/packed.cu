// Kernels of the packed encoder on NVIDIA GPUs (see packed.rs): the texts
// of a pass lie end to end as one (tokens × width) matrix, text s on rows
// starts[s] .. starts[s + 1], with no padding and no mask. Besides
// attention and pooling, the projections' epilogues: bias + GELU, and
// bias + residual + layer norm, each one pass over the activations.
// Arguments: inputs, then the output, then scalars. Arithmetic in f32.
//
// Built to PTX by build.rs with the `cuda` feature. The same file compiles
// as plain C++ with STOOK_EMULATE (tests/cuda/emulate.h runs each block's
// threads as OS threads): tests/cuda_kernels.rs checks the kernels that way
// on machines without a GPU.
#ifdef STOOK_EMULATE
#include "emulate.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

// Keys and values staged in shared memory this many tokens at a time.
#define TILE 32
// Threads of a layer norm block (a power of two), and the widest row.
#define NORM_THREADS 128
#define NORM_COLS 4096

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// Self-attention of one head over one text. qkv: (tokens × 3·hidden),
// query | key | value before their bias (3·hidden), head h at columns
// h·D .. (h+1)·D of each part; ctx: (tokens × hidden). Grid: (texts,
// heads); one thread per query token (blockDim.x tokens at a time); keys
// and values go through shared memory a tile at a time, as f32; softmax
// online (running maximum and sum), in f32, so scores are never stored.
template <typename T, int D>
__device__ void attention(const T* __restrict__ qkv, const T* __restrict__ bias,
                          const unsigned* __restrict__ starts, T* __restrict__ ctx, int hidden,
                          float scale) {
    __shared__ float ks[TILE][D];
    __shared__ float vs[TILE][D];
    const unsigned start = starts[blockIdx.x];
    const int len = (int)(starts[blockIdx.x + 1] - start);
    const size_t width = 3 * (size_t)hidden;
    const T* base = qkv + (size_t)start * width + (size_t)blockIdx.y * D;
    const T* b = bias + (size_t)blockIdx.y * D;
    // Every thread runs both loops the same number of times (they depend
    // on len and blockDim only): the barriers inside are reached by all.
    for (int r0 = 0; r0 < len; r0 += blockDim.x) {
        const int r = r0 + (int)threadIdx.x;
        const bool live = r < len;
        float q[D], o[D];
        float m = -INFINITY, l = 0.f;
#pragma unroll
        for (int c = 0; c < D; ++c) {
            q[c] = live ? (to_f32(base[(size_t)r * width + c]) + to_f32(b[c])) * scale : 0.f;
            o[c] = 0.f;
        }
        for (int k0 = 0; k0 < len; k0 += TILE) {
            const int n = min(TILE, len - k0);
            __syncthreads();  // the previous tile is no longer read
            for (int i = threadIdx.x; i < n * D; i += blockDim.x) {
                const T* row = base + (size_t)(k0 + i / D) * width + i % D;
                ks[i / D][i % D] = to_f32(row[hidden]) + to_f32(b[hidden + i % D]);
                vs[i / D][i % D] = to_f32(row[2 * hidden]) + to_f32(b[2 * hidden + i % D]);
            }
            __syncthreads();
            if (!live) continue;
            for (int j = 0; j < n; ++j) {
                float s = 0.f;
#pragma unroll
                for (int c = 0; c < D; ++c) s = fmaf(q[c], ks[j][c], s);
                if (s > m) {  // a new maximum: rescale what was summed
                    const float f = expf(m - s);
                    l *= f;
#pragma unroll
                    for (int c = 0; c < D; ++c) o[c] *= f;
                    m = s;
                }
                const float p = expf(s - m);
                l += p;
#pragma unroll
                for (int c = 0; c < D; ++c) o[c] = fmaf(p, vs[j][c], o[c]);
            }
        }
        if (live) {
            T* out = ctx + ((size_t)start + r) * hidden + (size_t)blockIdx.y * D;
            const float inv = 1.f / l;
#pragma unroll
            for (int c = 0; c < D; ++c) out[c] = from_f32<T>(o[c] * inv);
        }
    }
}

// One vector per text: the mean of its token vectors, or its first
// token's (cls != 0), in f32. x: (tokens × hidden); out: (texts × hidden).
// Grid: texts; threads over the hidden columns.
template <typename T>
__device__ void pool(const T* __restrict__ x, const unsigned* __restrict__ starts,
                     float* __restrict__ out, int hidden, int cls) {
    const unsigned start = starts[blockIdx.x];
    const int len = (int)(starts[blockIdx.x + 1] - start);
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float v = 0.f;
        if (len > 0 && cls) {
            v = to_f32(x[(size_t)start * hidden + c]);
        } else if (len > 0) {
            for (int t = 0; t < len; ++t) v += to_f32(x[((size_t)start + t) * hidden + c]);
            v /= (float)len;
        }
        out[(size_t)blockIdx.x * hidden + c] = v;
    }
}

// y + bias, then GELU (exact, with erf). y, out: (rows × cols).
// Grid-stride over the elements.
template <typename T>
__device__ void bias_gelu(const T* __restrict__ y, const T* __restrict__ bias, T* __restrict__ out,
                          int rows, int cols) {
    const size_t n = (size_t)rows * cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = to_f32(y[i]) + to_f32(bias[i % cols]);
        out[i] = from_f32<T>(0.5f * v * (1.f + erff(v * 0.70710678118654752f)));
    }
}

// The sum of every thread's v (blockDim.x a power of two), through red.
__device__ float block_sum(float v, float* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    const float total = red[0];
    __syncthreads();  // red is written again by the next call
    return total;
}

// out = layer_norm(y + bias + residual) · gamma + beta, row by row, as
// PyTorch's LayerNorm (mean, then the mean squared distance to it).
// params: bias | gamma | beta (3 × cols). Grid: rows; NORM_THREADS
// threads; cols at most NORM_COLS.
template <typename T>
__device__ void bias_residual_norm(const T* __restrict__ y, const T* __restrict__ residual,
                                   const T* __restrict__ params, T* __restrict__ out, int cols,
                                   float eps) {
    __shared__ float row[NORM_COLS];
    __shared__ float red[NORM_THREADS];
    const size_t base = (size_t)blockIdx.x * cols;
    float sum = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = to_f32(y[base + c]) + to_f32(params[c]) + to_f32(residual[base + c]);
        row[c] = v;
        sum += v;
    }
    const float mean = block_sum(sum, red) / cols;
    float squares = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = row[c] - mean;
        squares += d * d;
    }
    const float inv = rsqrtf(block_sum(squares, red) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[base + c] = from_f32<T>((row[c] - mean) * inv * to_f32(params[cols + c]) +
                                    to_f32(params[2 * cols + c]));
}

#define ATTENTION(NAME, T, D)                                                               \
    extern "C" __global__ void NAME(const T* qkv, const T* bias, const unsigned* starts, T* ctx, \
                                    int hidden, float scale) {                              \
        attention<T, D>(qkv, bias, starts, ctx, hidden, scale);                             \
    }
ATTENTION(attention_f32_d32, float, 32)
ATTENTION(attention_f16_d32, __half, 32)
ATTENTION(attention_bf16_d32, __nv_bfloat16, 32)
ATTENTION(attention_f32_d64, float, 64)
ATTENTION(attention_f16_d64, __half, 64)
ATTENTION(attention_bf16_d64, __nv_bfloat16, 64)

#define POOL(NAME, T)                                                                       \
    extern "C" __global__ void NAME(const T* x, const unsigned* starts, float* out, int hidden, \
                                    int cls) {                                              \
        pool<T>(x, starts, out, hidden, cls);                                               \
    }
POOL(pool_f32, float)
POOL(pool_f16, __half)
POOL(pool_bf16, __nv_bfloat16)

#define BIAS_GELU(NAME, T)                                                                  \
    extern "C" __global__ void NAME(const T* y, const T* bias, T* out, int rows, int cols) { \
        bias_gelu<T>(y, bias, out, rows, cols);                                             \
    }
BIAS_GELU(bias_gelu_f32, float)
BIAS_GELU(bias_gelu_f16, __half)
BIAS_GELU(bias_gelu_bf16, __nv_bfloat16)

#define NORM(NAME, T)                                                                         \
    extern "C" __global__ void NAME(const T* y, const T* residual, const T* params, T* out,    \
                                    int cols, float eps) {                                    \
        bias_residual_norm<T>(y, residual, params, out, cols, eps);                           \
    }
NORM(bias_residual_norm_f32, float)
NORM(bias_residual_norm_f16, __half)
NORM(bias_residual_norm_bf16, __nv_bfloat16)
