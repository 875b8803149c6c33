// emoji3d fused LPIPS layer term: Python bindings and argument checks.
// The kernels are in lpips_layer.cu. Semantics: see engine/ops/lpips_layer.py.
#include <torch/extension.h>

#include <vector>

torch::Tensor lpips_layer_cuda_forward(torch::Tensor a, torch::Tensor b, torch::Tensor weight, bool thread_per_pixel);
std::vector<torch::Tensor> lpips_layer_cuda_backward(torch::Tensor a, torch::Tensor b, torch::Tensor weight,
                                                     torch::Tensor d_terms, bool need_a, bool need_b,
                                                     bool thread_per_pixel);

// Largest tensor the kernels' 32-bit indices serve, with the grid stride's overshoot past the end.
static const long MAX_ELEMENTS = (long)INT_MAX - 256L * 65535L;

// Contiguous or channels-last: the kernels address element (n, c, y, x) through its strides, reading
// the pixel's position as y * W + x.
static bool dense(const torch::Tensor& t) {
    return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

static void check(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& weight) {
    TORCH_CHECK(a.is_cuda() && b.device() == a.device() && weight.device() == a.device(),
                "lpips_layer: a, b and weight must be on one CUDA device");
    TORCH_CHECK(a.dim() == 4 && b.dim() == 4 && b.size(1) == a.size(1) && b.size(2) == a.size(2) &&
                b.size(3) == a.size(3) && (b.size(0) == 1 || b.size(0) == a.size(0)),
                "lpips_layer: a must be [N, C, H, W] and b [N or 1, C, H, W]");
    TORCH_CHECK(a.scalar_type() == b.scalar_type(), "lpips_layer: a and b must have one dtype");
    TORCH_CHECK(dense(a) && dense(b), "lpips_layer: a and b must be contiguous or channels-last");
    TORCH_CHECK(weight.scalar_type() == torch::kFloat && weight.is_contiguous() && weight.dim() == 1 &&
                weight.size(0) == a.size(1), "lpips_layer: weight must be a contiguous float32 [C]");
    TORCH_CHECK(a.numel() <= MAX_ELEMENTS, "lpips_layer: tensors too large for 32-bit indices");
}

// thread_per_pixel: one thread per pixel (large maps), else one warp per pixel (see lpips_layer.cu).
static torch::Tensor lpips_layer_forward(torch::Tensor a, torch::Tensor b, torch::Tensor weight,
                                         bool thread_per_pixel) {
    check(a, b, weight);
    return lpips_layer_cuda_forward(a, b, weight, thread_per_pixel);
}

static std::vector<torch::Tensor> lpips_layer_backward(torch::Tensor a, torch::Tensor b, torch::Tensor weight,
                                                       torch::Tensor d_terms, bool need_a, bool need_b,
                                                       bool thread_per_pixel) {
    check(a, b, weight);
    TORCH_CHECK(d_terms.device() == a.device() && d_terms.scalar_type() == torch::kFloat && d_terms.is_contiguous() &&
                d_terms.dim() == 2 && d_terms.size(0) == a.size(0) && d_terms.size(1) == a.size(2) * a.size(3),
                "lpips_layer: d_terms must be a contiguous float32 [N, H*W]");
    TORCH_CHECK(!need_b || b.size(0) == a.size(0), "lpips_layer: no gradient for a b of one image against several");
    return lpips_layer_cuda_backward(a, b, weight, d_terms, need_a, need_b, thread_per_pixel);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("lpips_layer_forward", &lpips_layer_forward, "one LPIPS layer's per-pixel terms, [N, H*W] float32 (CUDA)");
    m.def("lpips_layer_backward", &lpips_layer_backward,
          "their gradients w.r.t. a and b (each undefined where not asked for) (CUDA)");
}
