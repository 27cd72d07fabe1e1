// The Backend interface: every numerical kernel the model and the pruners use, on tensors that
// live on the backend's device. `cpu` (OpenBLAS + LAPACKE + OpenMP) is always built; a `cuda`
// backend (cuBLAS, cuSOLVER, kernels) fills the same table when the toolkit is found. Ops marked
// (optional) may throw "not supported" on a backend that lacks them.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "scalpel/core/tensor.hpp"

namespace scalpel {

enum class Trans : std::uint8_t { no, yes };

// Attention geometry for a batch of `batch` sequences of `seqlen` tokens laid out row-major as
// [batch * seqlen, heads * head_dim] (q) and [batch * seqlen, kv_heads * head_dim] (k, v).
struct AttentionShape {
  std::int64_t batch = 1, seqlen = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1.0f;  // applied to q·k (OPT folds it into q beforehand and passes 1)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;

  // Memory. upload() turns a host tensor of any float dtype into an fp32 tensor on the device;
  // download() brings an fp32 device tensor to the host.
  virtual Tensor empty(const Shape& shape, DType dtype = DType::f32) = 0;
  virtual Tensor zeros(const Shape& shape, DType dtype = DType::f32) = 0;
  virtual Tensor upload(const Tensor& host) = 0;
  virtual Tensor download(const Tensor& t) = 0;
  virtual void copy(const Tensor& src, Tensor& dst) = 0;

  // C = alpha * op(A) * op(B) + beta * C, all fp32 2-D.
  virtual void gemm(Trans ta, Trans tb, float alpha, const Tensor& a, const Tensor& b, float beta,
                    Tensor& c) = 0;
  // y = x * W^T (+ bias): x [n, in], W [out, in] (PyTorch layout), y [n, out].
  virtual void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) = 0;
  // H = alpha * X^T X + beta * H for X [n, d], H [d, d]; both triangles are filled.
  virtual void syrk(float alpha, const Tensor& x, float beta, Tensor& h) = 0;

  // Row-wise normalisations over the last dim of x [n, d] (out may alias x).
  virtual void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) = 0;
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;

  // Elementwise.
  virtual void add(Tensor& y, const Tensor& x) = 0;  // y += x
  virtual void scale(Tensor& y, float alpha) = 0;    // y *= alpha
  virtual void relu(Tensor& y) = 0;
  virtual void gelu(Tensor& y) = 0;                  // tanh approximation ("gelu_new")
  virtual void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) = 0;  // silu(gate) * up

  // Rotary embedding (HF rotate_half convention) in place on x [batch*seqlen, heads*head_dim],
  // positions 0..seqlen-1 in every sequence; cos/sin tables [seqlen, head_dim].
  virtual void rope(Tensor& x, std::int64_t seqlen, std::int64_t heads, std::int64_t head_dim,
                    const Tensor& cos, const Tensor& sin) = 0;
  // Causal softmax attention; out has q's shape. kv heads are shared by heads/kv_heads query
  // heads (GQA). probs, if given ([batch, heads, seqlen, seqlen]), receives the attention weights
  // (kept for a backward pass).
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s,
                         Tensor& out, Tensor* probs = nullptr) = 0;

  // out[i, :] = table[ids[i], :] (table [vocab, d] fp32).
  virtual void embedding(std::span<const std::int32_t> ids, const Tensor& table, Tensor& out) = 0;
  // Negative log-likelihood of targets under softmax(logits) per row, in float64, logits [n, V].
  virtual void nll(const Tensor& logits, std::span<const std::int32_t> targets,
                   std::span<double> out) = 0;

  // Threads this backend uses for BLAS and loops (cpu); 0 = leave as is.
  virtual void set_threads(int threads) = 0;
};

std::unique_ptr<Backend> make_cpu_backend(int threads = 0);
// "cpu" or "cuda"; input Error naming the device when it is not built in or not present.
std::unique_ptr<Backend> make_backend(const std::string& device, int threads = 0);

}  // namespace scalpel
