// emoji3d fused LPIPS layer term (our own): per pixel, the calibrated squared
// distance between two unit-normalised feature vectors,
//     term(n, y, x) = sum_c w_c (a_c / (|a| + eps) - b_c / (|b| + eps))^2,
// |.| the Euclidean norm over the pixel's C channels, eps = 1e-10 (the lpips
// package's normalize_tensor). The spatial mean and the sum over layers are
// left to torch (small tensors).
//
// Each pixel's channels are walked in passes: a first for the two norms, a
// second for the term (the forward) or for the dot products its gradient
// needs (the backward), a third writing the gradients. Two ways to share the
// work, chosen by the caller (engine/ops/lpips_layer.py) from the pixel count:
// * one thread per pixel, for large maps (VGG16's first layer at 256 px has
//   65,536 pixels of 64 channels): in NCHW a warp's threads read 32
//   neighbouring pixels of one channel, one transaction per channel;
// * one warp per pixel, for small maps with many channels (512 channels of
//   16 x 16 pixels would be 256 threads for the whole GPU): each lane takes
//   every 32nd channel and the sums are reduced across the warp with shuffles;
//   in channels-last the lanes read adjacent channels.
// Elements are addressed through their strides (n, c, y, x), so both layouts,
// and a b of one image compared with each of a's (batch stride 0), take the
// same code.
//
// Gradients, with u = a / (|a| + eps), v = b / (|b| + eps), the term's
// gradient s and d_c = 2 w_c (u_c - v_c) s:
//     dL/da_c =  d_c / (|a| + eps) - a_c (sum_i d_i a_i) / (|a| (|a| + eps)^2)
//     dL/db_c = -d_c / (|b| + eps) + b_c (sum_i d_i b_i) / (|b| (|b| + eps)^2)
// where a norm is zero the second part is taken as zero (its a_c or b_c are).
// Accumulation is in float; features are read, and gradients written, in their dtype.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

namespace {

constexpr float EPS = 1e-10f;
constexpr int THREADS = 256;
constexpr int WARP = 32;
constexpr int WARPS_PER_BLOCK = THREADS / WARP;

// Element strides of an [N, C, H, W] tensor.
struct Strides {
    int n, c, y, x;
};

Strides strides_of(const torch::Tensor& t) {
    // A b of one image serves every n (batch stride 0).
    return {t.size(0) == 1 ? 0 : (int)t.stride(0), (int)t.stride(1), (int)t.stride(2), (int)t.stride(3)};
}

__device__ __forceinline__ int pixel_offset(const Strides& s, int n, int y, int x) {
    return n * s.n + y * s.y + x * s.x;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// How the threads share the pixels. PER_WARP = false: a thread per pixel, walking all its channels.
// PER_WARP = true: a warp per pixel, each lane walking every 32nd channel from its own, the sums then
// reduced across the warp (the pixel loop is uniform across a warp, so all 32 lanes reach each shuffle).
template <bool PER_WARP>
struct Share {
    int lane;
    __device__ Share() : lane(PER_WARP ? threadIdx.x % WARP : 0) {}
    __device__ int first_pixel() const {
        return PER_WARP ? blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / WARP : blockIdx.x * blockDim.x + threadIdx.x;
    }
    __device__ int pixel_step() const { return PER_WARP ? gridDim.x * WARPS_PER_BLOCK : gridDim.x * blockDim.x; }
    __device__ int channel_step() const { return PER_WARP ? WARP : 1; }
    __device__ float total(float v) const { return PER_WARP ? warp_sum(v) : v; }
};

// One pixel of a and of b: where its channels lie, and the inverses of the two feature vectors'
// norms plus eps (every thread of a warp-per-pixel gets them).
template <typename scalar_t>
struct UnitPair {
    int n, y, x;  // the pixel
    const scalar_t* a;
    const scalar_t* b;
    int a_step, b_step;
    float na, nb, ia, ib;

    __device__ float va(int c) const { return (float)a[c * a_step]; }
    __device__ float vb(int c) const { return (float)b[c * b_step]; }
    // u_c - v_c: the difference of the unit-normalised features
    __device__ float diff(int c) const { return va(c) * ia - vb(c) * ib; }
};

// Pixel `idx` (n * H * W + y * W + x) of a and b, its norms taken (the first pass over its channels).
template <typename scalar_t, bool PER_WARP>
__device__ __forceinline__ UnitPair<scalar_t> unit_pair(const Share<PER_WARP>& share, const scalar_t* a, Strides sa,
                                                        const scalar_t* b, Strides sb, int idx, int C, int H, int W) {
    const int P = H * W, n = idx / P, p = idx - n * P, y = p / W, x = p - y * W;
    UnitPair<scalar_t> px{n, y, x, a + pixel_offset(sa, n, y, x), b + pixel_offset(sb, n, y, x), sa.c, sb.c};
    float ra = 0.f, rb = 0.f;
    for (int c = share.lane; c < C; c += share.channel_step()) {
        const float va = px.va(c), vb = px.vb(c);
        ra += va * va;
        rb += vb * vb;
    }
    px.na = sqrtf(share.total(ra));
    px.nb = sqrtf(share.total(rb));
    px.ia = 1.f / (px.na + EPS);
    px.ib = 1.f / (px.nb + EPS);
    return px;
}

template <typename scalar_t, bool PER_WARP>
__global__ void lpips_layer_forward_kernel(const scalar_t* __restrict__ a, Strides sa, const scalar_t* __restrict__ b,
                                           Strides sb, const float* __restrict__ weight, float* __restrict__ terms,
                                           int N, int C, int H, int W) {
    const Share<PER_WARP> share;
    for (int idx = share.first_pixel(); idx < N * H * W; idx += share.pixel_step()) {
        const auto px = unit_pair(share, a, sa, b, sb, idx, C, H, W);
        float acc = 0.f;
        for (int c = share.lane; c < C; c += share.channel_step()) {
            const float diff = px.diff(c);
            acc += weight[c] * diff * diff;
        }
        acc = share.total(acc);
        if (share.lane == 0) terms[idx] = acc;
    }
}

template <typename scalar_t, bool PER_WARP>
__global__ void lpips_layer_backward_kernel(const scalar_t* __restrict__ a, Strides sa, const scalar_t* __restrict__ b,
                                            Strides sb, const float* __restrict__ weight,
                                            const float* __restrict__ d_terms, scalar_t* __restrict__ grad_a,
                                            Strides sga, scalar_t* __restrict__ grad_b, Strides sgb, int N, int C,
                                            int H, int W) {
    const Share<PER_WARP> share;
    for (int idx = share.first_pixel(); idx < N * H * W; idx += share.pixel_step()) {
        const auto px = unit_pair(share, a, sa, b, sb, idx, C, H, W);
        const float twice_s = 2.f * d_terms[idx];
        float dot_a = 0.f, dot_b = 0.f;
        for (int c = share.lane; c < C; c += share.channel_step()) {
            const float d = twice_s * weight[c] * px.diff(c);
            dot_a += d * px.va(c);
            dot_b += d * px.vb(c);
        }
        dot_a = share.total(dot_a);
        dot_b = share.total(dot_b);
        const float ka = px.na > 0.f ? px.ia * px.ia / px.na * dot_a : 0.f;
        const float kb = px.nb > 0.f ? px.ib * px.ib / px.nb * dot_b : 0.f;
        scalar_t* ga = grad_a != nullptr ? grad_a + pixel_offset(sga, px.n, px.y, px.x) : nullptr;
        scalar_t* gb = grad_b != nullptr ? grad_b + pixel_offset(sgb, px.n, px.y, px.x) : nullptr;
        for (int c = share.lane; c < C; c += share.channel_step()) {
            const float d = twice_s * weight[c] * px.diff(c);
            if (ga != nullptr) ga[c * sga.c] = (scalar_t)(d * px.ia - px.va(c) * ka);
            if (gb != nullptr) gb[c * sgb.c] = (scalar_t)(-d * px.ib + px.vb(c) * kb);
        }
    }
}

// Blocks of THREADS threads for `pixels` pixels, a thread (or a warp) each.
int blocks_for(long pixels, bool thread_per_pixel) {
    const long per_block = thread_per_pixel ? THREADS : WARPS_PER_BLOCK;
    return (int)std::min<long>((pixels + per_block - 1) / per_block, 65535L);
}

}  // namespace

torch::Tensor lpips_layer_cuda_forward(torch::Tensor a, torch::Tensor b, torch::Tensor weight, bool thread_per_pixel) {
    const at::cuda::OptionalCUDAGuard guard(device_of(a));
    const int N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
    auto terms = torch::empty({N, H * W}, a.options().dtype(torch::kFloat));
    if (terms.numel() == 0) return terms;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "lpips_layer_forward", [&] {
        (thread_per_pixel ? lpips_layer_forward_kernel<scalar_t, false> : lpips_layer_forward_kernel<scalar_t, true>)
            <<<blocks_for(terms.numel(), thread_per_pixel), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
            a.data_ptr<scalar_t>(), strides_of(a), b.data_ptr<scalar_t>(), strides_of(b), weight.data_ptr<float>(),
            terms.data_ptr<float>(), N, C, H, W);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return terms;
}

std::vector<torch::Tensor> lpips_layer_cuda_backward(torch::Tensor a, torch::Tensor b, torch::Tensor weight,
                                                     torch::Tensor d_terms, bool need_a, bool need_b,
                                                     bool thread_per_pixel) {
    const at::cuda::OptionalCUDAGuard guard(device_of(a));
    const int N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
    // empty_like keeps a dense tensor's layout: NCHW gradients for NCHW features, channels-last for channels-last.
    torch::Tensor grad_a = need_a ? torch::empty_like(a) : torch::Tensor();
    torch::Tensor grad_b = need_b ? torch::empty_like(b) : torch::Tensor();
    if (!(need_a || need_b) || d_terms.numel() == 0) return {grad_a, grad_b};
    const Strides none{0, 0, 0, 0};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "lpips_layer_backward", [&] {
        (thread_per_pixel ? lpips_layer_backward_kernel<scalar_t, false>
                          : lpips_layer_backward_kernel<scalar_t, true>)
            <<<blocks_for(d_terms.numel(), thread_per_pixel), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
            a.data_ptr<scalar_t>(), strides_of(a), b.data_ptr<scalar_t>(), strides_of(b), weight.data_ptr<float>(),
            d_terms.data_ptr<float>(), need_a ? grad_a.data_ptr<scalar_t>() : nullptr,
            need_a ? strides_of(grad_a) : none, need_b ? grad_b.data_ptr<scalar_t>() : nullptr,
            need_b ? strides_of(grad_b) : none, N, C, H, W);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {grad_a, grad_b};
}
