// emoji3d fused tri-plane sampling (our own): the mean over the three planes of
// their bilinear samples, as the EG3D decoder reads them.
//
// Layouts: planes [N, 3, H, W, C] float32 (channels last, so the C features of
// one texel are adjacent), grid [N, 3, M, 2] float32 (x, y in [-1, 1], as
// grid_sample with align_corners=False: pixel centres at (i + 0.5) / size * 2 - 1;
// texels outside the plane read as zero), out [N, M, C] float32.
//
// One thread per (n, m, c); a warp covers one sample's channels when C = 32, so
// its reads of a texel's features and, in the backward pass, its atomic adds into
// the plane gradient touch one 128-byte line per corner instead of 32 lines
// C x H x W floats apart (grid_sample's backward on [N, C, H, W] planes).
// The backward pass scatters dy / 3 with bilinear weights; the grid gets no
// gradient (the renderer's sample positions are constants of the step).
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

// Calls visit(offset, weight) for each corner of the bilinear footprint of plane
// coordinates (gx, gy) that lies on the plane: offset = (y * W + x) * C, the
// texel's first feature in a channels-last plane. Nothing for a sample whose
// corners all lie outside, or whose coordinates are not finite.
template <typename Visit>
__device__ __forceinline__ void for_each_corner(float gx, float gy, int H, int W, int C, Visit visit) {
    const float ix = ((gx + 1.f) * W - 1.f) / 2.f;
    const float iy = ((gy + 1.f) * H - 1.f) / 2.f;
    const float fx = floorf(ix), fy = floorf(iy);
    if (!(fx >= -1.f && fx < (float)W && fy >= -1.f && fy < (float)H)) return;
    const int x0 = (int)fx, y0 = (int)fy;
    const float wx[2] = {1.f - (ix - fx), ix - fx}, wy[2] = {1.f - (iy - fy), iy - fy};
#pragma unroll
    for (int dy = 0; dy < 2; ++dy) {
        const int y = y0 + dy;
        if (y < 0 || y >= H) continue;
#pragma unroll
        for (int dx = 0; dx < 2; ++dx) {
            const int x = x0 + dx;
            if (x < 0 || x >= W) continue;
            visit((y * W + x) * C, wx[dx] * wy[dy]);
        }
    }
}

template <int FIXED_C>
__global__ void triplane_mean_forward_kernel(const float* __restrict__ planes, const float* __restrict__ grid,
                                             float* __restrict__ out, int N, int M, int runtime_c, int H, int W) {
    const int C = FIXED_C > 0 ? FIXED_C : runtime_c;
    const int total = N * M * C;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += blockDim.x * gridDim.x) {
        const int c = idx % C, nm = idx / C;
        const int m = nm % M, n = nm / M;
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            const int plane = n * 3 + k;
            const float* g = grid + 2 * (plane * M + m);
            const float* texels = planes + (long)plane * H * W * C + c;
            for_each_corner(g[0], g[1], H, W, C, [&](int offset, float weight) { acc += texels[offset] * weight; });
        }
        out[idx] = acc / 3.f;
    }
}

template <int FIXED_C>
__global__ void triplane_mean_backward_kernel(const float* __restrict__ grad_out, const float* __restrict__ grid,
                                              float* __restrict__ grad_planes, int N, int M, int runtime_c, int H,
                                              int W) {
    const int C = FIXED_C > 0 ? FIXED_C : runtime_c;
    const int total = N * M * C;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += blockDim.x * gridDim.x) {
        const int c = idx % C, nm = idx / C;
        const int m = nm % M, n = nm / M;
        const float share = grad_out[idx] / 3.f;
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            const int plane = n * 3 + k;
            const float* g = grid + 2 * (plane * M + m);
            float* texels = grad_planes + (long)plane * H * W * C + c;
            for_each_corner(g[0], g[1], H, W, C,
                            [&](int offset, float weight) { atomicAdd(texels + offset, share * weight); });
        }
    }
}

// Both kernels' signature: (input, grid, output, N, M, C, H, W).
using TriplaneKernel = void (*)(const float*, const float*, float*, int, int, int, int, int);

// Runs `fixed32` (C known at compile time) when C is 32, else `any_c`, over N * M * C threads.
void launch(TriplaneKernel fixed32, TriplaneKernel any_c, const float* in, const float* grid, float* out, int N,
            int M, int C, int H, int W) {
    const long total = (long)N * M * C;
    if (total == 0) return;
    const int blocks = (int)std::min<long>((total + 255) / 256, 65535L * 8);
    (C == 32 ? fixed32 : any_c)<<<blocks, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(in, grid, out, N, M, C, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

torch::Tensor triplane_mean_cuda_forward(torch::Tensor planes, torch::Tensor grid) {
    const at::cuda::OptionalCUDAGuard guard(device_of(planes));
    const int N = planes.size(0), H = planes.size(2), W = planes.size(3), C = planes.size(4), M = grid.size(2);
    auto out = torch::empty({N, M, C}, planes.options());
    launch(triplane_mean_forward_kernel<32>, triplane_mean_forward_kernel<0>, planes.data_ptr<float>(),
           grid.data_ptr<float>(), out.data_ptr<float>(), N, M, C, H, W);
    return out;
}

torch::Tensor triplane_mean_cuda_backward(torch::Tensor grad_out, torch::Tensor grid, int H, int W) {
    const at::cuda::OptionalCUDAGuard guard(device_of(grad_out));
    const int N = grad_out.size(0), M = grad_out.size(1), C = grad_out.size(2);
    auto grad_planes = torch::zeros({N, 3, H, W, C}, grad_out.options());
    launch(triplane_mean_backward_kernel<32>, triplane_mean_backward_kernel<0>, grad_out.data_ptr<float>(),
           grid.data_ptr<float>(), grad_planes.data_ptr<float>(), N, M, C, H, W);
    return grad_planes;
}
