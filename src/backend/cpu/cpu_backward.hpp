// The CPU backend's backward kernels (LLM Surgeon's gradients), as free functions over host fp32
// tensors that the CpuBackend class forwards to. Row reductions accumulate in double, as the
// forward's do. Private to src/backend.
#pragma once
#include <cstdint>
#include <span>

#include "scalpel/backend/backend.hpp"

namespace scalpel::cpu {

void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy, Tensor& dx);
void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx);
void relu_backward(const Tensor& pre, Tensor& dy);
void gelu_backward(const Tensor& pre, Tensor& dy);
void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate, Tensor& dup);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, const Tensor& dout,
                        const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv);
void nll_backward(Tensor& logits, std::span<const std::int32_t> targets, float scale, std::span<double> loss);

}  // namespace scalpel::cpu
