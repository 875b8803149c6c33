// emoji3d fused bias + activation + gain + clamp: Python bindings.
// Activation ids match engine/ops/bias_act.py ACTIVATIONS[*].cuda_idx.
#include <torch/extension.h>

torch::Tensor bias_act_cuda_forward(torch::Tensor x, torch::Tensor b, long inner, int act, double alpha,
                                    double gain, double clamp);
torch::Tensor bias_act_cuda_grad(torch::Tensor dy, torch::Tensor x, torch::Tensor b, long inner, int act,
                                 double alpha, double gain, double clamp);

static void check(const torch::Tensor& x, const torch::Tensor& b, int dim) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range");
    if (b.numel() > 0) {
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: bias must be [x.shape[dim]]");
        TORCH_CHECK(b.scalar_type() == x.scalar_type() && b.device() == x.device(), "bias_act: bias dtype/device must match x");
    }
}

static long inner_size(const torch::Tensor& x, int dim) {
    long n = 1;
    for (int i = dim + 1; i < x.dim(); ++i) n *= x.size(i);
    return n;
}

// A channels-last [N, C, H, W] tensor with the bias along C (and not also contiguous, as one with a
// single channel or pixel is): its memory is [N, H, W, C], so element i's channel is i % C, an inner
// size of 1. The kernels walk memory order, and their outputs keep x's layout (empty_like).
static bool channels_last_bias(const torch::Tensor& x, int dim) {
    return x.dim() == 4 && dim == 1 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

static torch::Tensor forward(torch::Tensor x, torch::Tensor b, int dim, int act, double alpha, double gain, double clamp) {
    check(x, b, dim);
    if (channels_last_bias(x, dim)) return bias_act_cuda_forward(x, b.contiguous(), 1, act, alpha, gain, clamp);
    return bias_act_cuda_forward(x.contiguous(), b.contiguous(), inner_size(x, dim), act, alpha, gain, clamp);
}

static torch::Tensor grad(torch::Tensor dy, torch::Tensor x, torch::Tensor b, int dim, int act, double alpha,
                          double gain, double clamp) {
    check(x, b, dim);
    TORCH_CHECK(dy.sizes() == x.sizes(), "bias_act: grad shape must match x");
    if (channels_last_bias(x, dim))
        return bias_act_cuda_grad(dy.contiguous(at::MemoryFormat::ChannelsLast), x, b.contiguous(), 1, act, alpha,
                                  gain, clamp);
    return bias_act_cuda_grad(dy.contiguous(), x.contiguous(), b.contiguous(), inner_size(x, dim), act, alpha, gain, clamp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward", &forward, "fused bias+activation+gain+clamp (CUDA)");
    m.def("grad", &grad, "gradient w.r.t. x of the fused bias_act (CUDA)");
}
