// emoji3d fused bias_act kernels (our own): elementwise, grid-stride loops.
// y = clamp(act(x + b[c]) * gain, -clamp, clamp)   (clamp < 0: no clamping)
// dx = dy * act'(x + b[c]) * gain * [ -clamp <= act(x+b)*gain <= clamp ]
// The element index runs in 32 bits whenever the tensor allows (index_t): a
// 64-bit division for the bias channel costs more than the element's memory
// traffic, so 64-bit indices are kept for tensors of more than 2^31 elements.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAGuard.h>

enum { ACT_LINEAR = 1, ACT_RELU, ACT_LRELU, ACT_TANH, ACT_SIGMOID, ACT_ELU, ACT_SELU, ACT_SOFTPLUS, ACT_SWISH };

#define SELU_SCALE 1.0507009873554804934193349852946
#define SELU_ALPHA 1.6732632423543772848170429916717

template <typename T>
__device__ __forceinline__ T act_value(T z, int act, T alpha) {
    switch (act) {
        case ACT_RELU: return z > T(0) ? z : T(0);
        case ACT_LRELU: return z > T(0) ? z : z * alpha;
        case ACT_TANH: return tanh(z);
        case ACT_SIGMOID: return T(1) / (T(1) + exp(-z));
        case ACT_ELU: return z > T(0) ? z : expm1(z);
        case ACT_SELU: return T(SELU_SCALE) * (z > T(0) ? z : T(SELU_ALPHA) * expm1(z));
        case ACT_SOFTPLUS: return z > T(20) ? z : log1p(exp(z));
        case ACT_SWISH: return z / (T(1) + exp(-z));
        default: return z;
    }
}

template <typename T>
__device__ __forceinline__ T act_deriv(T z, int act, T alpha) {
    switch (act) {
        case ACT_RELU: return z > T(0) ? T(1) : T(0);
        case ACT_LRELU: return z > T(0) ? T(1) : alpha;
        case ACT_TANH: { T t = tanh(z); return T(1) - t * t; }
        case ACT_SIGMOID: { T s = T(1) / (T(1) + exp(-z)); return s * (T(1) - s); }
        case ACT_ELU: return z > T(0) ? T(1) : exp(z);
        case ACT_SELU: return T(SELU_SCALE) * (z > T(0) ? T(1) : T(SELU_ALPHA) * exp(z));
        case ACT_SOFTPLUS: return z > T(20) ? T(1) : T(1) / (T(1) + exp(-z));
        case ACT_SWISH: { T s = T(1) / (T(1) + exp(-z)); return s + z * s * (T(1) - s); }
        default: return T(1);
    }
}

template <typename scalar_t, typename index_t>
__global__ void bias_act_fwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b, scalar_t* __restrict__ y,
                                    index_t total, index_t inner, index_t C, bool has_bias, int act, float alpha, float gain,
                                    float clamp) {
    using acc_t = at::acc_type<scalar_t, true>;
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (index_t)blockDim.x * gridDim.x) {
        acc_t z = (acc_t)x[i];
        if (has_bias) z += (acc_t)b[(i / inner) % C];
        acc_t v = act_value<acc_t>(z, act, (acc_t)alpha) * (acc_t)gain;
        if (clamp >= 0) v = v > (acc_t)clamp ? (acc_t)clamp : (v < -(acc_t)clamp ? -(acc_t)clamp : v);
        y[i] = (scalar_t)v;
    }
}

template <typename scalar_t, typename index_t>
__global__ void bias_act_grad_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ b, scalar_t* __restrict__ dx, index_t total, index_t inner,
                                     index_t C, bool has_bias, int act, float alpha, float gain, float clamp) {
    using acc_t = at::acc_type<scalar_t, true>;
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (index_t)blockDim.x * gridDim.x) {
        acc_t z = (acc_t)x[i];
        if (has_bias) z += (acc_t)b[(i / inner) % C];
        acc_t g = (acc_t)dy[i] * act_deriv<acc_t>(z, act, (acc_t)alpha) * (acc_t)gain;
        if (clamp >= 0) {
            acc_t v = act_value<acc_t>(z, act, (acc_t)alpha) * (acc_t)gain;
            if (v > (acc_t)clamp || v < -(acc_t)clamp) g = 0;
        }
        dx[i] = (scalar_t)g;
    }
}

static int n_blocks(long total) { return (int)std::min<long>((total + 255) / 256, 65535L * 8); }

// 32-bit indices when every index, with the grid stride's overshoot past the end, fits.
static bool fits_32_bits(long total) { return total + 256L * 65535L * 8L < (long)UINT_MAX; }

torch::Tensor bias_act_cuda_forward(torch::Tensor x, torch::Tensor b, long inner, int act, double alpha,
                                    double gain, double clamp) {
    const at::cuda::OptionalCUDAGuard guard(device_of(x));
    auto y = torch::empty_like(x);
    const long total = x.numel();
    if (total == 0) return y;
    const bool has_bias = b.numel() > 0;
    const long C = has_bias ? b.size(0) : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "bias_act_fwd", [&] {
        const scalar_t* bias = has_bias ? b.data_ptr<scalar_t>() : nullptr;
        const auto stream = c10::cuda::getCurrentCUDAStream();
        if (fits_32_bits(total))
            bias_act_fwd_kernel<scalar_t, unsigned><<<n_blocks(total), 256, 0, stream>>>(
                x.data_ptr<scalar_t>(), bias, y.data_ptr<scalar_t>(), (unsigned)total, (unsigned)inner, (unsigned)C,
                has_bias, act, (float)alpha, (float)gain, (float)clamp);
        else
            bias_act_fwd_kernel<scalar_t, long><<<n_blocks(total), 256, 0, stream>>>(
                x.data_ptr<scalar_t>(), bias, y.data_ptr<scalar_t>(), total, inner, C, has_bias, act, (float)alpha,
                (float)gain, (float)clamp);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}

torch::Tensor bias_act_cuda_grad(torch::Tensor dy, torch::Tensor x, torch::Tensor b, long inner, int act,
                                 double alpha, double gain, double clamp) {
    const at::cuda::OptionalCUDAGuard guard(device_of(x));
    auto dx = torch::empty_like(x);
    const long total = x.numel();
    if (total == 0) return dx;
    const bool has_bias = b.numel() > 0;
    const long C = has_bias ? b.size(0) : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "bias_act_grad", [&] {
        const scalar_t* bias = has_bias ? b.data_ptr<scalar_t>() : nullptr;
        const auto stream = c10::cuda::getCurrentCUDAStream();
        if (fits_32_bits(total))
            bias_act_grad_kernel<scalar_t, unsigned><<<n_blocks(total), 256, 0, stream>>>(
                dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), bias, dx.data_ptr<scalar_t>(), (unsigned)total,
                (unsigned)inner, (unsigned)C, has_bias, act, (float)alpha, (float)gain, (float)clamp);
        else
            bias_act_grad_kernel<scalar_t, long><<<n_blocks(total), 256, 0, stream>>>(
                dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), bias, dx.data_ptr<scalar_t>(), total, inner, C,
                has_bias, act, (float)alpha, (float)gain, (float)clamp);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return dx;
}
