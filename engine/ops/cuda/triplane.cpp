// emoji3d fused tri-plane sampling: Python bindings and argument checks.
// The kernels are in triplane.cu. Semantics: see engine/ops/triplane.py.
#include <torch/extension.h>

torch::Tensor triplane_mean_cuda_forward(torch::Tensor planes, torch::Tensor grid);
torch::Tensor triplane_mean_cuda_backward(torch::Tensor grad_out, torch::Tensor grid, int H, int W);

// Largest tensor the kernels' 32-bit indices serve, with the grid stride's overshoot past the end.
static const long MAX_ELEMENTS = (long)INT_MAX - 256L * 65535L * 8L;

static void check_grid(const torch::Tensor& grid, long n) {
    TORCH_CHECK(grid.is_cuda() && grid.scalar_type() == torch::kFloat && grid.is_contiguous(),
                "triplane_mean: grid must be a contiguous float32 CUDA tensor");
    TORCH_CHECK(grid.dim() == 4 && grid.size(0) == n && grid.size(1) == 3 && grid.size(3) == 2,
                "triplane_mean: grid must be [N, 3, M, 2]");
}

static torch::Tensor triplane_mean_forward(torch::Tensor planes, torch::Tensor grid) {
    TORCH_CHECK(planes.is_cuda() && planes.scalar_type() == torch::kFloat && planes.is_contiguous(),
                "triplane_mean: planes must be a contiguous float32 CUDA tensor");
    TORCH_CHECK(planes.dim() == 5 && planes.size(1) == 3, "triplane_mean: planes must be [N, 3, H, W, C]");
    check_grid(grid, planes.size(0));
    TORCH_CHECK(grid.device() == planes.device(), "triplane_mean: planes and grid must be on the same device");
    TORCH_CHECK(planes.numel() <= MAX_ELEMENTS && grid.size(0) * grid.size(2) * planes.size(4) * 3 <= MAX_ELEMENTS,
                "triplane_mean: tensors too large for 32-bit indices");
    return triplane_mean_cuda_forward(planes, grid);
}

static torch::Tensor triplane_mean_backward(torch::Tensor grad_out, torch::Tensor grid, int64_t H, int64_t W) {
    TORCH_CHECK(grad_out.is_cuda() && grad_out.scalar_type() == torch::kFloat && grad_out.is_contiguous(),
                "triplane_mean: grad_out must be a contiguous float32 CUDA tensor");
    TORCH_CHECK(grad_out.dim() == 3, "triplane_mean: grad_out must be [N, M, C]");
    check_grid(grid, grad_out.size(0));
    TORCH_CHECK(grid.size(2) == grad_out.size(1), "triplane_mean: grad_out and grid disagree on M");
    TORCH_CHECK(H >= 1 && W >= 1 && grad_out.size(0) * 3 * H * W * grad_out.size(2) <= MAX_ELEMENTS &&
                grad_out.numel() * 3 <= MAX_ELEMENTS, "triplane_mean: tensors too large for 32-bit indices");
    return triplane_mean_cuda_backward(grad_out, grid, (int)H, (int)W);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("triplane_mean_forward", &triplane_mean_forward, "mean of bilinear tri-plane samples, [N, M, C] (CUDA)");
    m.def("triplane_mean_backward", &triplane_mean_backward, "its gradient w.r.t. the planes, [N, 3, H, W, C] (CUDA)");
}
