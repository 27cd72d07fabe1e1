// The decoder-only model on a Backend: embeddings, decoder layers walked one at a time, and the
// LM head's per-token NLL. Weights come through WeightSource (the app adapts a checkpoint folder to
// it), layer by layer, so a model larger than memory can be walked; layers are kept in memory
// only while they fit the cache budget.
#pragma once
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "scalpel/backend/backend.hpp"
#include "scalpel/model/spec.hpp"

namespace scalpel::model {

// Where weights come from. Names are full Hugging Face names ("model.layers.0.mlp.up_proj.weight").
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool has(const std::string& name) const = 0;
  // Host tensor in its stored dtype or fp32; input Error naming the tensor when it is missing.
  virtual Tensor load(const std::string& name) const = 0;
};

// The tensors of one decoder layer on the backend's device, in the model's forward dtype, by relative name
// ("self_attn.q_proj.weight", "fc1.bias", "input_layernorm.weight").
struct LayerWeights {
  std::map<std::string, Tensor> tensors;
  const Tensor& at(const std::string& name) const;
  const Tensor* find(const std::string& name) const;
  std::size_t bytes() const;
};

// Called with the input of each group of linears that share it (q/k/v; gate/up; out; fc2/down),
// before they run: the hook through which pruners collect statistics.
using LinearTap = std::function<void(int input_group, const std::vector<std::string>& linears, const Tensor& x)>;

// Intermediates a backward pass needs (filled only when a cache is passed to forward). q and k
// are kept as attention saw them (after OPT's scaling, after RoPE); res1 and res2 are the
// residual sums before a post-LayerNorm (OPT-350m), undefined for pre-norm models.
struct LayerCache {
  Tensor x_in, norm1, q, k, v, probs, attn, x_mid, norm2, ffn_pre, ffn_up, ffn_act, res1, res2;
};

// Called during a backward pass with the gradient of the loss with respect to a linear's output
// y = x·Wᵀ + b ([batch*seqlen, out]); `linear` is its relative name ("fc1").
using GradTap = std::function<void(const std::string& linear, const Tensor& g)>;

// Tables for rotary embeddings, computed as Hugging Face does in fp32; neg_sin = -sin turns the
// rotation into its transpose (the backward of RoPE).
struct RopeTables {
  Tensor cos, sin, neg_sin;  // [seqlen, head_dim] on the backend
};
RopeTables make_rope_tables(Backend& be, const ModelSpec& spec, std::int64_t seqlen);

// One decoder layer, forward, in place on x [batch*seqlen, hidden]. Every intermediate takes x's
// dtype (fp32, or the 2-byte dtype of a low-precision forward, whose weights w then hold); a
// cache (a backward pass) needs fp32.
void decoder_layer_forward(Backend& be, const ModelSpec& spec, const LayerWeights& w, Tensor& x,
                           std::int64_t batch, std::int64_t seqlen, const RopeTables* rope,
                           const LinearTap* tap = nullptr, LayerCache* cache = nullptr);

// One decoder layer, backward: dx holds dL/d(layer output) and becomes dL/d(layer input), from
// the cache decoder_layer_forward filled for the same input. `tap` sees every linear's output
// gradient (q, k, v first to last in reverse order of the forward). No weight gradient is formed.
void decoder_layer_backward(Backend& be, const ModelSpec& spec, const LayerWeights& w, const LayerCache& cache,
                            Tensor& dx, std::int64_t batch, std::int64_t seqlen, const RopeTables* rope,
                            const GradTap* tap = nullptr);

// What Model::backward reports to its callers, per layer: the inputs of each group of linears
// (as LinearTap) and each linear's output gradient (as GradTap).
struct BackwardTaps {
  std::function<void(std::int64_t layer, int group, const std::vector<std::string>& linears, const Tensor& x)> input;
  std::function<void(std::int64_t layer, const std::string& linear, const Tensor& g)> grad;
  // Optional: replaces the labels of window b (its seqlen - 1 next tokens, then -1) from its
  // logits [seqlen, vocab] before the gradient is taken (a sampled Fisher draws them from the
  // model); the losses backward returns stay the true next tokens'.
  std::function<void(std::int64_t b, const Tensor& logits, std::span<std::int32_t> targets)> labels;
};

class Model {
 public:
  // cache_bytes: how much device memory decoder layers may stay resident in (0: reload each use).
  Model(ModelSpec spec, std::shared_ptr<const WeightSource> source, Backend& be,
        std::size_t cache_bytes = std::size_t{8} << 30);

  const ModelSpec& spec() const { return spec_; }
  Backend& backend() const { return be_; }

  // The dtype the decoder layers run in: f32 (the default), or f16 / bf16 for the reference's
  // low-precision forward (weights and activations in that dtype on the device, the Backend's
  // [lp] precision model). Embeddings are computed in fp32 and rounded; the LM head widens its
  // input and runs in fp32. Set it before the first layer is read (it drops the layer cache).
  void set_forward_dtype(DType t);
  DType forward_dtype() const { return forward_dtype_; }

  // Token embeddings (+ positions, project_in) for batch sequences of seqlen ids: [batch*seqlen,
  // hidden] in the forward dtype.
  Tensor embed(std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen);
  void layer_forward(std::int64_t layer, Tensor& x, std::int64_t batch, std::int64_t seqlen,
                     const LinearTap* tap = nullptr, LayerCache* cache = nullptr);
  // Final norm, project_out and LM head; out[b*(seqlen-1) + t] = -log p(ids[b, t+1] | ids[b, <=t]).
  void head_nll(const Tensor& x, std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen,
                std::span<double> out);
  // Log-likelihood terms of chosen positions of sequence b of x ([batch*seqlen, hidden] after the
  // last layer): rows first .. first+n-1 (n = targets.size()) predict `targets`; nll and the
  // optional is_argmax as Backend::nll gives them.
  void head_targets(const Tensor& x, std::int64_t seqlen, std::int64_t b, std::int64_t first,
                    std::span<const std::int32_t> targets, std::span<double> nll,
                    std::span<std::uint8_t> is_argmax = {});
  // Embeddings and every decoder layer: the last layer's output [batch*seqlen, hidden].
  Tensor hidden(std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen);
  // Whole forward: NLL of every predicted position of `batch` windows.
  void window_nll(std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen,
                  std::span<double> out);

  // LLM Surgeon's pass over `batch` windows: the loss of each window is its mean next-token
  // cross-entropy over its seqlen - 1 predictions (the reference's per-window loss), and
  // gradients flow from their sum. Memory: keep_caches = true keeps every layer's intermediates
  // from the forward (layer_cache_bytes each; one forward and one backward); false keeps only
  // each layer's input ([batch*seqlen, hidden]) and recomputes the layer's forward with its cache
  // just before its backward (one layer's intermediates at a time; two forwards and one
  // backward). Both give the same bits. taps.input sees the linears' inputs (in layer order when
  // kept, in reverse when recomputed), taps.grad the output gradients. Returns the windows' losses
  // (mean NLL of their true next tokens, whatever labels the gradient used).
  std::vector<double> backward(std::span<const std::int32_t> ids, std::int64_t batch, std::int64_t seqlen,
                               const BackwardTaps& taps, bool keep_caches = false);
  // Bytes of one layer's LayerCache for batch x seqlen tokens (fp32).
  std::int64_t layer_cache_bytes(std::int64_t batch, std::int64_t seqlen) const;

  // The layer's weights on the device (from the cache, from a prefetch, or read now).
  std::shared_ptr<const LayerWeights> layer_weights(std::int64_t layer);
  // Starts reading the layer's stored tensors and copying them to the device on a background
  // thread (the backend's Uploader: pinned buffers and a copy stream on a GPU), so that a later
  // layer_weights(layer) finds them there: the disk reads and the host-to-device copies overlap
  // the current layer's work. A no-op for a cached, pending or absent layer. The source must allow
  // reads from another thread (safetensors views do). Read errors surface in layer_weights.
  void prefetch(std::int64_t layer);
  // Replaces a layer's weights (the pruners hand back pruned layers this way).
  void set_layer_weights(std::int64_t layer, std::shared_ptr<const LayerWeights> w);

 private:
  Tensor load(const std::string& name, const Shape& expect, const Tensor* staged = nullptr);
  // A layer tensor on the device in the forward dtype (the stored bytes as they are when the
  // dtypes agree).
  Tensor load_layer_tensor(const std::string& name, const Shape& expect, const Tensor* staged);
  // Final norm, project_out and LM head of hidden rows [n, hidden] -> logits [n, vocab].
  void final_logits(const Tensor& rows, Tensor& logits);
  // From dlogits of rows [n, vocab], the gradient at those rows of the last layer's output.
  void final_backward(const Tensor& rows, const Tensor& dlogits, Tensor& dx);
  const RopeTables* rope(std::int64_t seqlen);

  ModelSpec spec_;
  std::shared_ptr<const WeightSource> source_;
  Backend& be_;
  std::size_t cache_bytes_, cached_bytes_ = 0;
  DType forward_dtype_ = DType::f32;
  std::map<std::int64_t, std::shared_ptr<const LayerWeights>> layers_;
  std::map<std::int64_t, std::future<std::map<std::string, Tensor>>> prefetched_;  // stored name -> copy
  std::shared_ptr<Uploader> uploader_;  // made at the first prefetch
  Tensor embed_tokens_, embed_positions_, project_in_, project_out_, final_w_, final_b_, lm_head_;
  std::map<std::int64_t, RopeTables> rope_;
};

}  // namespace scalpel::model
