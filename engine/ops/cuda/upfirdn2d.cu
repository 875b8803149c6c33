// emoji3d fused upfirdn2d kernels (our own).
//
// Two kernels compute the same thing (see engine/ops/upfirdn2d.py):
//
// * upfirdn2d_tiled: the cases StyleGAN2 and EG3D run (a 4x4 filter with up=2,
//   down=2 or neither, on both axes, and their adjoints, which swap up and
//   down). A block owns a TILE x TILE patch of one output image: it first
//   stages, in shared memory, the patch of the zero-upsampled and padded input
//   that the patch's filter windows cover (zeros written where the upsampling
//   inserts them or the padding lies), then each thread sums the K x K window
//   of its outputs from shared memory with compile-time loop bounds. Index
//   arithmetic is 32-bit and divides only by compile-time constants. The
//   upsampling's zeros are multiplied rather than skipped: a few extra fused
//   multiply-adds from shared memory cost less than the branches that would
//   skip them, and the kernel is limited by memory traffic, which the staging
//   makes one read per input pixel per block.
// * upfirdn2d_generic: any other shape, one thread per output pixel, each
//   output reading its taps from global memory; the loop steps from one real
//   (non-inserted) sample to the next instead of testing every tap.
//
// Channels-last (NHWC) input takes its own kernel, upfirdn2d_nhwc, for every
// shape: one thread per output element with the channel fastest, so a warp
// reads and writes 32 neighbouring channels of one pixel in one transaction
// each, and the K x K window's reuse between neighbouring outputs is left to
// the caches. The networks' cases (4x4 filter, up or down 2 or neither) are
// compiled with constant factors; any other runs the same kernel with them
// at run time. Its output is channels-last too.
//
// Accumulation is in float (double for double inputs).
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAGuard.h>

template <typename scalar_t>
__global__ void upfirdn2d_generic(const scalar_t* __restrict__ x, const float* __restrict__ f, scalar_t* __restrict__ y,
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

// Output patch per block (TILE x TILE) and threads per block.
constexpr int TILE = 32;
constexpr int TILE_THREADS = 256;

template <typename scalar_t, int UP, int DOWN, int K>
__global__ void __launch_bounds__(TILE_THREADS)
upfirdn2d_tiled(const scalar_t* __restrict__ x, const float* __restrict__ f, scalar_t* __restrict__ y,
                int NC, int H, int W, int OH, int OW, int px0, int py0, bool flip, float gain) {
    using acc_t = at::acc_type<scalar_t, true>;
    // Rows and columns of the upsampled, padded grid that a patch's windows cover.
    constexpr int SPAN = (TILE - 1) * DOWN + K;
    __shared__ acc_t staged[SPAN][SPAN + 1];  // +1: rows start on different banks
    __shared__ acc_t taps[K][K];              // correlation weights: taps[ty][tx] meets staged[.. + ty][.. + tx]
    const int tid = threadIdx.x;
    for (int i = tid; i < K * K; i += TILE_THREADS) {
        const int ty = i / K, tx = i % K;
        // A convolution meets filter row K-1-ty at tap ty; a flipped filter (correlation) meets row ty.
        taps[ty][tx] = (acc_t)(flip ? f[ty * K + tx] : f[(K - 1 - ty) * K + (K - 1 - tx)]);
    }
    const int ox0 = blockIdx.x * TILE, oy0 = blockIdx.y * TILE;
    const int ux0 = ox0 * DOWN - px0, uy0 = oy0 * DOWN - py0;  // the patch's first window, upsampled grid
    for (int nc = blockIdx.z; nc < NC; nc += gridDim.z) {
        const scalar_t* xp = x + (long)nc * H * W;
        __syncthreads();  // the previous image's sums have read `staged`
        for (int i = tid; i < SPAN * SPAN; i += TILE_THREADS) {
            const int r = i / SPAN, c = i - r * SPAN;
            const int uy = uy0 + r, ux = ux0 + c;
            acc_t v = 0;
            if (uy >= 0 && ux >= 0 && uy % UP == 0 && ux % UP == 0) {
                const int iy = uy / UP, ix = ux / UP;
                if (iy < H && ix < W) v = (acc_t)xp[iy * W + ix];
            }
            staged[r][c] = v;
        }
        __syncthreads();
        scalar_t* yp = y + (long)nc * OH * OW;
        for (int i = tid; i < TILE * TILE; i += TILE_THREADS) {
            const int r = i / TILE, c = i - r * TILE;  // a warp covers 32 neighbouring outputs of one row
            const int oy = oy0 + r, ox = ox0 + c;
            if (oy < OH && ox < OW) {
                acc_t acc = 0;
#pragma unroll
                for (int ty = 0; ty < K; ++ty) {
#pragma unroll
                    for (int tx = 0; tx < K; ++tx) acc += staged[r * DOWN + ty][c * DOWN + tx] * taps[ty][tx];
                }
                yp[oy * OW + ox] = (scalar_t)(acc * (acc_t)gain);
            }
        }
    }
}

template <typename scalar_t, int UP, int DOWN, int K>
static void launch_tiled(const torch::Tensor& x, const torch::Tensor& f, torch::Tensor& y, int NC, int H, int W,
                         int OH, int OW, int px0, int py0, bool flip, float gain) {
    const dim3 grid((OW + TILE - 1) / TILE, (OH + TILE - 1) / TILE, std::min(NC, 65535));
    upfirdn2d_tiled<scalar_t, UP, DOWN, K><<<grid, TILE_THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), f.data_ptr<float>(), y.data_ptr<scalar_t>(), NC, H, W, OH, OW, px0, py0, flip, gain);
}

// Runs the tiled kernel when it covers the case; false otherwise.
template <typename scalar_t>
static bool try_tiled(const torch::Tensor& x, const torch::Tensor& f, torch::Tensor& y, int upx, int upy,
                      int downx, int downy, int px0, int py0, bool flip, float gain) {
    const int NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3), OH = y.size(2), OW = y.size(3);
    if (f.size(0) != 4 || f.size(1) != 4 || upx != upy || downx != downy || (long)OH * OW > INT_MAX) return false;
    if (upx == 1 && downx == 1) launch_tiled<scalar_t, 1, 1, 4>(x, f, y, NC, H, W, OH, OW, px0, py0, flip, gain);
    else if (upx == 2 && downx == 1) launch_tiled<scalar_t, 2, 1, 4>(x, f, y, NC, H, W, OH, OW, px0, py0, flip, gain);
    else if (upx == 1 && downx == 2) launch_tiled<scalar_t, 1, 2, 4>(x, f, y, NC, H, W, OH, OW, px0, py0, flip, gain);
    else return false;
    return true;
}

// UP, DOWN, K > 0: compile-time factors and filter side (the same on both axes); 0: the run-time ones.
template <typename scalar_t, int UP, int DOWN, int K>
__global__ void upfirdn2d_nhwc(const scalar_t* __restrict__ x, const float* __restrict__ f, scalar_t* __restrict__ y,
                               int C, int H, int W, int OH, int OW, unsigned total, int fh_, int fw_, int upx_,
                               int upy_, int downx_, int downy_, int px0, int py0, bool flip, float gain) {
    using acc_t = at::acc_type<scalar_t, true>;
    const int upx = UP ? UP : upx_, upy = UP ? UP : upy_;
    const int downx = DOWN ? DOWN : downx_, downy = DOWN ? DOWN : downy_;
    const int fh = K ? K : fh_, fw = K ? K : fw_;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += blockDim.x * gridDim.x) {
        const int c = idx % C;  // [N, OH, OW, C] in memory
        unsigned rest = idx / C;
        const int ox = rest % OW;
        rest /= OW;
        const int oy = rest % OH;
        const int n = rest / OH;
        // Position of tap 0 in the upsampled, padded grid.
        const int by = oy * downy - py0, bx = ox * downx - px0;
        const scalar_t* xn = x + n * H * W * C + c;
        acc_t acc = 0;
#pragma unroll
        for (int ty = 0; ty < fh; ++ty) {
            const int uy = by + ty;
            if (uy < 0 || uy % upy != 0 || uy / upy >= H) continue;  // padding, or a zero the upsampling inserts
            const int fy = flip ? ty : fh - 1 - ty;  // a convolution meets filter row fh-1-ty at tap ty
#pragma unroll
            for (int tx = 0; tx < fw; ++tx) {
                const int ux = bx + tx;
                if (ux < 0 || ux % upx != 0 || ux / upx >= W) continue;
                const int fx = flip ? tx : fw - 1 - tx;
                acc += (acc_t)xn[((uy / upy) * W + ux / upx) * C] * (acc_t)f[fy * fw + fx];
            }
        }
        y[idx] = (scalar_t)(acc * (acc_t)gain);
    }
}

template <typename scalar_t, int UP, int DOWN, int K>
static void launch_nhwc(const torch::Tensor& x, const torch::Tensor& f, torch::Tensor& y, int upx, int upy, int downx,
                        int downy, int px0, int py0, bool flip, float gain) {
    const int C = x.size(1), H = x.size(2), W = x.size(3), OH = y.size(2), OW = y.size(3);
    const unsigned total = (unsigned)y.numel();
    const int threads = 256;
    const int blocks = (int)std::min<long>(((long)total + threads - 1) / threads, 65535L * 8);
    upfirdn2d_nhwc<scalar_t, UP, DOWN, K><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), f.data_ptr<float>(), y.data_ptr<scalar_t>(), C, H, W, OH, OW, total,
        (int)f.size(0), (int)f.size(1), upx, upy, downx, downy, px0, py0, flip, gain);
}

torch::Tensor upfirdn2d_cuda_forward(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                                     int px0, int px1, int py0, int py1, bool flip, double gain, bool allow_tiled) {
    const at::cuda::OptionalCUDAGuard guard(device_of(x));
    const int N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const int fh = f.size(0), fw = f.size(1);
    const int OH = (H * upy + py0 + py1 - fh) / downy + 1;
    const int OW = (W * upx + px0 + px1 - fw) / downx + 1;
    TORCH_CHECK(OH >= 1 && OW >= 1, "upfirdn2d: output would be empty (check padding vs filter size)");
    // The caller hands over a contiguous or a channels-last tensor; y keeps that layout.
    const bool nhwc = !x.is_contiguous();
    auto y = torch::empty({N, C, OH, OW}, x.options().memory_format(
        nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
    const long total = (long)N * C * OH * OW;
    if (total == 0) return y;
    if (nhwc) {
        // Indices run in 32 bits (unsigned, with the grid stride's overshoot past the end).
        TORCH_CHECK(total + 256L * 65535L * 8L < (long)UINT_MAX, "upfirdn2d: output too large");
        const bool square4 = fh == 4 && fw == 4 && upx == upy && downx == downy;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d_nhwc", [&] {
            const float g = (float)gain;
            if (square4 && upx == 1 && downx == 1) launch_nhwc<scalar_t, 1, 1, 4>(x, f, y, 1, 1, 1, 1, px0, py0, flip, g);
            else if (square4 && upx == 2 && downx == 1) launch_nhwc<scalar_t, 2, 1, 4>(x, f, y, 2, 2, 1, 1, px0, py0, flip, g);
            else if (square4 && upx == 1 && downx == 2) launch_nhwc<scalar_t, 1, 2, 4>(x, f, y, 1, 1, 2, 2, px0, py0, flip, g);
            else launch_nhwc<scalar_t, 0, 0, 0>(x, f, y, upx, upy, downx, downy, px0, py0, flip, g);
        });
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return y;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
        if (allow_tiled && try_tiled<scalar_t>(x, f, y, upx, upy, downx, downy, px0, py0, flip, (float)gain)) return;
        const int threads = 256;
        const int blocks = (int)std::min<long>((total + threads - 1) / threads, 65535L * 8);
        upfirdn2d_generic<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            x.data_ptr<scalar_t>(), f.data_ptr<float>(), y.data_ptr<scalar_t>(), N * C, H, W, OH, OW, fh, fw,
            upx, upy, downx, downy, px0, py0, flip, (float)gain);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
