// emoji3d fused weight (de)modulation kernel (our own).
// out[n, o, i, k] = W[o, i, k] * s[n, i] * d[n, o],  d[n, o] = rsqrt(sum_{i,k} (W s)^2 + eps)  (d = 1 without demod)
// One block per (n, o): pass 1 writes the modulated weights and reduces the
// squared norm in shared memory; pass 2 rescales the row in place (it is hot in L2).
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

template <int THREADS>
__global__ void modulate_kernel(const float* __restrict__ w, const float* __restrict__ s, float* __restrict__ out,
                                int O, int I, int K, bool demod, float eps) {
    const int o = blockIdx.x;
    const int n = blockIdx.y;
    const int IK = I * K;
    const float* wrow = w + (long)o * IK;
    const float* srow = s + (long)n * I;
    float* orow = out + ((long)n * O + o) * IK;
    float acc = 0.f;
    for (int j = threadIdx.x; j < IK; j += THREADS) {
        const float v = wrow[j] * srow[j / K];
        orow[j] = v;
        acc += v * v;
    }
    if (!demod) return;
    __shared__ float red[THREADS];
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
        __syncthreads();
    }
    const float d = rsqrtf(red[0] + eps);
    for (int j = threadIdx.x; j < IK; j += THREADS) orow[j] *= d;
}

torch::Tensor modulate_weights_cuda_forward(torch::Tensor weight, torch::Tensor styles, bool demodulate, double eps) {
    const at::cuda::OptionalCUDAGuard guard(device_of(weight));
    const int O = weight.size(0), I = weight.size(1), kh = weight.size(2), kw = weight.size(3);
    const int N = styles.size(0);
    auto out = torch::empty({N, O, I, kh, kw}, weight.options());
    if (out.numel() == 0) return out;
    TORCH_CHECK(N <= 65535, "modulate_weights: batch too large");
    constexpr int THREADS = 256;
    dim3 grid(O, N);
    modulate_kernel<THREADS><<<grid, THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
        weight.data_ptr<float>(), styles.data_ptr<float>(), out.data_ptr<float>(), O, I, kh * kw, demodulate, (float)eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
