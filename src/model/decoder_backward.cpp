// The decoder layer's backward pass (LLM Surgeon's gradients), the forward of decoder.cpp walked
// in reverse over its LayerCache: residual branches add, norms, activations and attention use the
// Backend's backward ops, and a linear y = x·Wᵀ + b passes dL/dx = dL/dy·W back (its weight
// gradient is never formed: the curvature needs only dL/dy, which the tap receives).
#include <cmath>

#include "scalpel/core/error.hpp"
#include "scalpel/model/model.hpp"

namespace scalpel::model {
namespace {

struct Ctx {
  Backend& be;
  const ModelSpec& spec;
  const LayerWeights& w;
  const GradTap* tap;
  bool opt;

  void norm_backward(const char* prefix, const Tensor& in, const Tensor& dy, Tensor& dx) const {
    const auto eps = static_cast<float>(spec.norm_eps);
    if (opt) be.layer_norm_backward(in, w.find(std::string(prefix) + ".weight"), eps, dy, dx);
    else be.rms_norm_backward(in, w.at(std::string(prefix) + ".weight"), eps, dy, dx);
  }
  void seen(const std::string& linear, const Tensor& g) const {
    if (tap && *tap) (*tap)(linear, g);
  }
  // dx (+)= g·W of the linear `name`.
  void through(const std::string& name, const Tensor& g, Tensor& dx, bool accumulate) const {
    be.gemm(Trans::no, Trans::no, 1.0f, g, w.at(name + ".weight"), accumulate ? 1.0f : 0.0f, dx);
  }
};

// dact = dL/d(MLP output y) on entry; returns dL/d(MLP input h2) in dh2.
void mlp_backward(const Ctx& c, const LayerCache& cache, const Tensor& dy, Tensor& dh2) {
  auto& be = c.be;
  const auto n = dy.size(0), ffn = c.spec.ffn;
  const std::string down = c.opt ? "fc2" : "mlp.down_proj";
  c.seen(down, dy);
  Tensor dact = be.empty({n, ffn});
  c.through(down, dy, dact, false);
  if (c.opt) {
    if (c.spec.activation == "relu") be.relu_backward(cache.ffn_pre, dact);
    else be.gelu_backward(cache.ffn_pre, dact);
    c.seen("fc1", dact);
    c.through("fc1", dact, dh2, false);
  } else {
    Tensor dg = be.empty({n, ffn}), du = be.empty({n, ffn});
    be.silu_mul_backward(cache.ffn_pre, cache.ffn_up, dact, dg, du);
    c.seen("mlp.gate_proj", dg);
    c.seen("mlp.up_proj", du);
    c.through("mlp.gate_proj", dg, dh2, false);
    c.through("mlp.up_proj", du, dh2, true);
  }
}

// do_ = dL/d(attention block output o) on entry; returns dL/d(attention input h) in dh.
void attention_block_backward(const Ctx& c, const LayerCache& cache, const Tensor& do_, Tensor& dh,
                              std::int64_t batch, std::int64_t seqlen, const RopeTables* rope) {
  auto& be = c.be;
  const auto& s = c.spec;
  const auto n = do_.size(0), qdim = s.heads * s.head_dim, kvdim = s.kv_heads * s.head_dim;
  const std::string out_name = c.opt ? "self_attn.out_proj" : "self_attn.o_proj";
  c.seen(out_name, do_);
  Tensor dattn = be.empty({n, qdim});
  c.through(out_name, do_, dattn, false);
  const float scaling = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  AttentionShape as{batch, seqlen, s.heads, s.kv_heads, s.head_dim, c.opt ? 1.0f : scaling};
  Tensor dq = be.empty({n, qdim}), dk = be.empty({n, kvdim}), dv = be.empty({n, kvdim});
  be.attention_backward(cache.q, cache.k, cache.v, cache.probs, dattn, as, dq, dk, dv);
  if (c.opt) {
    be.scale(dq, scaling);  // q was scaled after its bias
  } else {
    SCALPEL_CHECK(rope != nullptr, "LLaMA backward needs rope tables");
    be.rope(dq, seqlen, s.heads, s.head_dim, rope->cos, rope->neg_sin);
    be.rope(dk, seqlen, s.kv_heads, s.head_dim, rope->cos, rope->neg_sin);
  }
  c.seen("self_attn.q_proj", dq);
  c.seen("self_attn.k_proj", dk);
  c.seen("self_attn.v_proj", dv);
  c.through("self_attn.q_proj", dq, dh, false);
  c.through("self_attn.k_proj", dk, dh, true);
  c.through("self_attn.v_proj", dv, dh, true);
}

}  // namespace

void decoder_layer_backward(Backend& be, const ModelSpec& spec, const LayerWeights& w, const LayerCache& cache,
                            Tensor& dx, std::int64_t batch, std::int64_t seqlen, const RopeTables* rope,
                            const GradTap* tap) {
  const auto n = batch * seqlen, d = spec.hidden;
  SCALPEL_CHECK(dx.size(0) == n && dx.size(1) == d, "layer gradient {} for {} x {} tokens", shape_str(dx.shape()),
                batch, seqlen);
  SCALPEL_CHECK(cache.x_in.defined() && cache.probs.defined(), "decoder_layer_backward needs a filled LayerCache");
  const bool opt = spec.family == Family::opt;
  const Ctx c{be, spec, w, tap, opt};
  const char* ln1 = opt ? "self_attn_layer_norm" : "input_layernorm";
  const char* ln2 = opt ? "final_layer_norm" : "post_attention_layernorm";
  Tensor tmp = be.empty({n, d});

  // MLP block: out = x_mid + mlp(norm2(x_mid)) (pre-norm) or norm2(x_mid + mlp(x_mid)) (post-norm).
  if (!spec.pre_norm) c.norm_backward(ln2, cache.res2, dx, dx);  // dx = dL/d res2
  mlp_backward(c, cache, dx, tmp);                                 // tmp = dL/d h2
  if (spec.pre_norm) c.norm_backward(ln2, cache.x_mid, tmp, tmp);
  be.add(dx, tmp);  // dx = dL/d x_mid

  // Attention block, the same shape around attention.
  if (!spec.pre_norm) c.norm_backward(ln1, cache.res1, dx, dx);
  attention_block_backward(c, cache, dx, tmp, batch, seqlen, rope);
  if (spec.pre_norm) c.norm_backward(ln1, cache.x_in, tmp, tmp);
  be.add(dx, tmp);  // dx = dL/d x_in
}

}  // namespace scalpel::model
