// The fused GroupNorm (+ SiLU) on CUDA: one thread block per (batch, group), which is one
// contiguous run of channels_per_group * spatial elements of an NCHW tensor.
//
// Three passes over the block's elements: the mean, the mean of squared deviations (two passes,
// as torch's biased variance, so a large mean does not cancel digits), then normalize + affine
// (+ SiLU). Statistics are f32 per thread, reduced in a fixed tree order: a block's result does
// not depend on the batch size or on the number of blocks, so it is the same bit for bit whatever
// the batch (the determinism the engine relies on).
//
// weight and bias are f32 (the host converts them); x and the output share one storage type.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace {

__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(__half v) { return __half2float(v); }
__device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T store(float v);
template <> __device__ __forceinline__ float store<float>(float v) { return v; }
template <> __device__ __forceinline__ __half store<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

constexpr unsigned FULL_WARP = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(FULL_WARP, v, offset);
    }
    return v;
}

// Sum of every thread's `v`, returned to all threads. blockDim.x must be a multiple of 32 and at
// most 1024. `scratch` holds one float per warp plus the total.
__device__ float block_sum(float v, float* scratch) {
    const unsigned lane = threadIdx.x % 32;
    const unsigned warp = threadIdx.x / 32;
    const unsigned warps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        float partial = lane < warps ? scratch[lane] : 0.0f;
        partial = warp_sum(partial);
        if (lane == 0) {
            scratch[32] = partial;
        }
    }
    __syncthreads();
    const float total = scratch[32];
    // Keeps the next call from overwriting scratch before every thread has read the total.
    __syncthreads();
    return total;
}

template <typename T>
__device__ void group_norm(const T* __restrict__ x, T* __restrict__ out,
                           const float* __restrict__ weight, const float* __restrict__ bias,
                           unsigned channels_per_group, unsigned long long spatial,
                           unsigned num_groups, float eps, int silu) {
    __shared__ float scratch[33];
    const unsigned long long elements = channels_per_group * spatial;
    const unsigned long long start = blockIdx.x * elements;
    const T* src = x + start;
    T* dst = out + start;

    float sum = 0.0f;
    for (unsigned long long i = threadIdx.x; i < elements; i += blockDim.x) {
        sum += load(src[i]);
    }
    const float mean = block_sum(sum, scratch) / static_cast<float>(elements);

    float squares = 0.0f;
    for (unsigned long long i = threadIdx.x; i < elements; i += blockDim.x) {
        const float d = load(src[i]) - mean;
        squares += d * d;
    }
    const float variance = block_sum(squares, scratch) / static_cast<float>(elements);
    const float inv_std = 1.0f / sqrtf(variance + eps);

    const unsigned first_channel = (blockIdx.x % num_groups) * channels_per_group;
    for (unsigned c = 0; c < channels_per_group; ++c) {
        const float scale = inv_std * weight[first_channel + c];
        const float shift = bias[first_channel + c];
        const T* row = src + c * spatial;
        T* out_row = dst + c * spatial;
        for (unsigned long long s = threadIdx.x; s < spatial; s += blockDim.x) {
            float y = (load(row[s]) - mean) * scale + shift;
            if (silu) {
                y = y / (1.0f + expf(-y));
            }
            out_row[s] = store<T>(y);
        }
    }
}

}  // namespace

#define GROUP_NORM_ENTRY(NAME, T)                                                            \
    extern "C" __global__ void NAME(const T* x, T* out, const float* weight, const float* bias, \
                                    unsigned channels_per_group, unsigned long long spatial,   \
                                    unsigned num_groups, float eps, int silu) {                \
        group_norm<T>(x, out, weight, bias, channels_per_group, spatial, num_groups, eps,    \
                      silu);                                                                 \
    }

GROUP_NORM_ENTRY(imago_group_norm_f32, float)
GROUP_NORM_ENTRY(imago_group_norm_f16, __half)
GROUP_NORM_ENTRY(imago_group_norm_bf16, __nv_bfloat16)
