// emoji3d fused upfirdn2d kernel (our own): one thread per output pixel.
//
// For output (oy, ox) the filtered, padded, zero-upsampled grid is read at
// (oy*down + t) for filter taps t; only taps landing on a real (non-inserted)
// sample contribute, so the loop steps directly from one real sample to the
// next (stride `up` in the tap index) instead of testing every tap.
// Accumulation is in float (double for double inputs).
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAGuard.h>

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const float* __restrict__ f, scalar_t* __restrict__ y,
                                 int NC, int H, int W, int OH, int OW, int fh, int fw,
                                 int upx, int upy, int downx, int downy, int px0, int py0, bool flip, float gain) {
    using acc_t = at::acc_type<scalar_t, true>;
    const long total = (long)NC * OH * OW;
    for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (long)blockDim.x * gridDim.x) {
        const int ox = idx % OW;
        const int oy = (idx / OW) % OH;
        const long nc = idx / ((long)OW * OH);
        const scalar_t* xp = x + nc * (long)H * W;
        // Position of tap 0 in the upsampled grid (before padding removal).
        const int by = oy * downy - py0;
        const int bx = ox * downx - px0;
        // First tap ty with (by + ty) divisible by upy and >= 0.
        int ty0 = 0;
        if (by < 0) ty0 = -by;
        int rem = (by + ty0) % upy;
        if (rem) ty0 += upy - rem;
        int tx0 = 0;
        if (bx < 0) tx0 = -bx;
        rem = (bx + tx0) % upx;
        if (rem) tx0 += upx - rem;
        acc_t acc = 0;
        for (int ty = ty0; ty < fh; ty += upy) {
            const int iy = (by + ty) / upy;
            if (iy >= H) break;
            // Convolution: tap ty meets filter row (fh-1-ty) unless flipped (correlation).
            const int fy = flip ? ty : fh - 1 - ty;
            for (int tx = tx0; tx < fw; tx += upx) {
                const int ix = (bx + tx) / upx;
                if (ix >= W) break;
                const int fx = flip ? tx : fw - 1 - tx;
                acc += (acc_t)xp[(long)iy * W + ix] * (acc_t)f[fy * fw + fx];
            }
        }
        y[idx] = (scalar_t)(acc * (acc_t)gain);
    }
}

torch::Tensor upfirdn2d_cuda_forward(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                                     int px0, int px1, int py0, int py1, bool flip, double gain) {
    const at::cuda::OptionalCUDAGuard guard(device_of(x));
    const int N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const int fh = f.size(0), fw = f.size(1);
    const int OH = (H * upy + py0 + py1 - fh) / downy + 1;
    const int OW = (W * upx + px0 + px1 - fw) / downx + 1;
    TORCH_CHECK(OH >= 1 && OW >= 1, "upfirdn2d: output would be empty (check padding vs filter size)");
    auto y = torch::empty({N, C, OH, OW}, x.options());
    const long total = (long)N * C * OH * OW;
    if (total == 0) return y;
    const int threads = 256;
    const int blocks = (int)std::min<long>((total + threads - 1) / threads, 65535L * 8);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
        upfirdn2d_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            x.data_ptr<scalar_t>(), f.data_ptr<float>(), y.data_ptr<scalar_t>(), N * C, H, W, OH, OW, fh, fw,
            upx, upy, downx, downy, px0, py0, flip, (float)gain);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
