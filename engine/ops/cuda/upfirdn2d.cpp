// emoji3d fused upfirdn2d: Python bindings and argument checks.
// The kernel is in upfirdn2d.cu. Semantics: see engine/ops/upfirdn2d.py.
#include <torch/extension.h>

torch::Tensor upfirdn2d_cuda_forward(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                                     int px0, int px1, int py0, int py1, bool flip, double gain, bool allow_tiled);

// Channels-last and not also contiguous (a tensor with one channel, or one pixel, is both: NCHW serves it).
static bool channels_last(const torch::Tensor& x) {
    return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

static torch::Tensor checked(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                             int px0, int px1, int py0, int py1, bool flip, double gain, bool allow_tiled) {
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [N, C, H, W]");
    TORCH_CHECK(f.dim() == 2, "upfirdn2d: the kernel takes a 2D filter [fh, fw]");
    TORCH_CHECK(f.scalar_type() == torch::kFloat, "upfirdn2d: filter must be float32");
    TORCH_CHECK(f.device() == x.device(), "upfirdn2d: filter and x must be on the same device");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up/down must be >= 1");
    TORCH_CHECK(x.numel() <= INT_MAX, "upfirdn2d: tensor too large");
    // Channels-last in, channels-last out (the NHWC kernel): no layout conversion around the networks' convolutions.
    return upfirdn2d_cuda_forward(channels_last(x) ? x : x.contiguous(), f.contiguous(), upx, upy, downx, downy,
                                  px0, px1, py0, py1, flip, gain, allow_tiled);
}

static torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                               int px0, int px1, int py0, int py1, bool flip, double gain) {
    return checked(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain, true);
}

// The generic kernel alone, for the benchmark that compares it with the tiled one (bench/upfirdn2d.py).
static torch::Tensor upfirdn2d_generic(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                                       int px0, int px1, int py0, int py1, bool flip, double gain) {
    return checked(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain, false);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "fused upsample-pad-FIR-downsample (CUDA)");
    m.def("upfirdn2d_generic", &upfirdn2d_generic, "the same without the tiled kernel (for benchmarks)");
}
