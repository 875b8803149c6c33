// emoji3d fused weight modulation/demodulation: Python bindings.
#include <torch/extension.h>

torch::Tensor modulate_weights_cuda_forward(torch::Tensor weight, torch::Tensor styles, bool demodulate, double eps);

static torch::Tensor modulate_weights(torch::Tensor weight, torch::Tensor styles, bool demodulate, double eps) {
    TORCH_CHECK(weight.is_cuda() && styles.is_cuda(), "modulate_weights: tensors must be on CUDA");
    TORCH_CHECK(weight.dim() == 4, "modulate_weights: weight must be [O, I, kh, kw]");
    TORCH_CHECK(styles.dim() == 2 && styles.size(1) == weight.size(1), "modulate_weights: styles must be [N, I]");
    TORCH_CHECK(weight.scalar_type() == torch::kFloat && styles.scalar_type() == torch::kFloat,
                "modulate_weights: float32 only");
    return modulate_weights_cuda_forward(weight.contiguous(), styles.contiguous(), demodulate, eps);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("modulate_weights", &modulate_weights, "per-sample modulated (+demodulated) conv weights (CUDA)");
}
