// The decoder layer forward for the OPT and LLaMA families, as Hugging Face computes it in fp32.
// Each step writes a named intermediate, so the backward pass (LLM Surgeon) can walk the same
// list in reverse with the LayerCache instead of reshaping this code.
#include <cmath>

#include "scalpel/core/error.hpp"
#include "scalpel/model/model.hpp"

namespace scalpel::model {

const Tensor& LayerWeights::at(const std::string& name) const {
  auto it = tensors.find(name);
  SCALPEL_CHECK(it != tensors.end(), "layer weight '{}' not loaded", name);
  return it->second;
}

const Tensor* LayerWeights::find(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}

std::size_t LayerWeights::bytes() const {
  std::size_t n = 0;
  for (const auto& [k, t] : tensors) n += t.nbytes();
  return n;
}

RopeTables make_rope_tables(Backend& be, const ModelSpec& spec, std::int64_t seqlen) {
  const auto hd = spec.head_dim, half = hd / 2;
  Tensor c = Tensor::empty({seqlen, hd}), s = Tensor::empty({seqlen, hd});
  // HF: inv_freq = 1 / base ** (arange(0, dim, 2).float() / dim), freqs = outer(t, inv_freq),
  // emb = cat(freqs, freqs), all in fp32; we follow the same roundings.
  std::vector<float> inv(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(hd);
    inv[i] = 1.0f / std::pow(static_cast<float>(spec.rope_theta), expo);
  }
  for (std::int64_t p = 0; p < seqlen; ++p) {
    const float t = static_cast<float>(p) / static_cast<float>(spec.rope_linear_factor);
    for (std::int64_t i = 0; i < half; ++i) {
      const float f = t * inv[i];
      c.f32()[p * hd + i] = c.f32()[p * hd + i + half] = std::cos(f);
      s.f32()[p * hd + i] = s.f32()[p * hd + i + half] = std::sin(f);
    }
  }
  Tensor ns = s.clone();
  for (std::int64_t i = 0; i < ns.numel(); ++i) ns.f32()[i] = -ns.f32()[i];
  return {be.upload(c), be.upload(s), be.upload(ns)};
}

namespace {

void run_linear(Backend& be, const LayerWeights& w, const std::string& name, const Tensor& x, Tensor& y) {
  be.linear(x, w.at(name + ".weight"), w.find(name + ".bias"), y);
}

void tap_input(const LinearTap* tap, int group, std::vector<std::string> names, const Tensor& x) {
  if (tap && *tap) (*tap)(group, names, x);
}

// One layer's forward over n = batch x seqlen tokens: the two residual blocks, each writing the
// intermediates the backward pass reads into the cache when there is one.
struct LayerForward {
  Backend& be;
  const ModelSpec& spec;
  const LayerWeights& w;
  const LinearTap* tap;
  LayerCache* cache;
  std::int64_t batch, seqlen, n, d;
  DType dt;  // intermediates follow the forward's dtype
  bool opt;

  void norm(const char* prefix, const Tensor& in, Tensor& out) const {
    if (opt)
      be.layer_norm(in, w.find(std::string(prefix) + ".weight"), w.find(std::string(prefix) + ".bias"),
                    static_cast<float>(spec.norm_eps), out);
    else
      be.rms_norm(in, w.at(std::string(prefix) + ".weight"), static_cast<float>(spec.norm_eps), out);
  }

  // The block's input: normed before (pre-norm) or as it is (OPT-350m's post-norm).
  Tensor block_input(const char* ln, const Tensor& x) const {
    Tensor h = be.empty({n, d}, dt);
    if (spec.pre_norm) norm(ln, x, h);
    else be.copy(x, h);
    return h;
  }

  // x += block output; post-norm models norm the sum. `res` caches the sum before that norm.
  void residual(const char* ln, Tensor& x, const Tensor& out, Tensor LayerCache::*res) const {
    be.add(x, out);
    if (cache && !spec.pre_norm) cache->*res = clone_on(be, x);
    if (!spec.pre_norm) norm(ln, x, x);
  }

  void attention_block(Tensor& x, const RopeTables* rope) const {
    const auto qdim = spec.heads * spec.head_dim, kvdim = spec.kv_heads * spec.head_dim;
    const char* ln1 = opt ? "self_attn_layer_norm" : "input_layernorm";
    Tensor h = block_input(ln1, x);
    tap_input(tap, 0, {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}, h);
    Tensor q = be.empty({n, qdim}, dt), k = be.empty({n, kvdim}, dt), v = be.empty({n, kvdim}, dt);
    run_linear(be, w, "self_attn.q_proj", h, q);
    run_linear(be, w, "self_attn.k_proj", h, k);
    run_linear(be, w, "self_attn.v_proj", h, v);
    AttentionShape as{batch, seqlen, spec.heads, spec.kv_heads, spec.head_dim, 1.0f};
    const float scaling = 1.0f / std::sqrt(static_cast<float>(spec.head_dim));
    if (opt) {
      be.scale(q, scaling);  // OPT scales q after its bias, before q·k
    } else {
      SCALPEL_CHECK(rope != nullptr, "LLaMA forward needs rope tables");
      be.rope(q, seqlen, spec.heads, spec.head_dim, rope->cos, rope->sin);
      be.rope(k, seqlen, spec.kv_heads, spec.head_dim, rope->cos, rope->sin);
      as.scale = scaling;
    }
    Tensor attn = be.empty({n, qdim}, dt);
    Tensor probs;
    if (cache) probs = be.empty({batch, spec.heads, seqlen, seqlen});
    be.attention(q, k, v, as, attn, cache ? &probs : nullptr);
    const std::string out_name = opt ? "self_attn.out_proj" : "self_attn.o_proj";
    tap_input(tap, 1, {out_name}, attn);
    Tensor o = be.empty({n, d}, dt);
    run_linear(be, w, out_name, attn, o);
    if (cache) {
      cache->norm1 = h;
      cache->q = q;
      cache->k = k;
      cache->v = v;
      cache->probs = probs;
      cache->attn = attn;
    }
    residual(ln1, x, o, &LayerCache::res1);
  }

  // OPT's fc1 -> ReLU/GELU -> fc2 into y.
  void opt_mlp(const Tensor& h2, Tensor& y) const {
    tap_input(tap, 2, {"fc1"}, h2);
    Tensor f = be.empty({n, spec.ffn}, dt);
    run_linear(be, w, "fc1", h2, f);
    if (cache) cache->ffn_pre = clone_on(be, f);
    if (spec.activation == "relu") be.relu(f);
    else be.gelu(f);
    tap_input(tap, 3, {"fc2"}, f);
    run_linear(be, w, "fc2", f, y);
    if (cache) cache->ffn_act = f;
  }

  // LLaMA's down(silu(gate) * up) into y.
  void gated_mlp(const Tensor& h2, Tensor& y) const {
    tap_input(tap, 2, {"mlp.gate_proj", "mlp.up_proj"}, h2);
    Tensor g = be.empty({n, spec.ffn}, dt), u = be.empty({n, spec.ffn}, dt), a = be.empty({n, spec.ffn}, dt);
    run_linear(be, w, "mlp.gate_proj", h2, g);
    run_linear(be, w, "mlp.up_proj", h2, u);
    be.silu_mul(g, u, a);
    tap_input(tap, 3, {"mlp.down_proj"}, a);
    run_linear(be, w, "mlp.down_proj", a, y);
    if (cache) {
      cache->ffn_pre = g;
      cache->ffn_up = u;
      cache->ffn_act = a;
    }
  }

  void mlp_block(Tensor& x) const {
    const char* ln2 = opt ? "final_layer_norm" : "post_attention_layernorm";
    Tensor h2 = block_input(ln2, x);
    Tensor y = be.empty({n, d}, dt);
    if (opt) opt_mlp(h2, y);
    else gated_mlp(h2, y);
    if (cache) cache->norm2 = h2;
    residual(ln2, x, y, &LayerCache::res2);
  }
};

}  // namespace

void decoder_layer_forward(Backend& be, const ModelSpec& spec, const LayerWeights& w, Tensor& x,
                           std::int64_t batch, std::int64_t seqlen, const RopeTables* rope,
                           const LinearTap* tap, LayerCache* cache) {
  const auto n = batch * seqlen, d = spec.hidden;
  SCALPEL_CHECK(x.size(0) == n && x.size(1) == d, "layer input {} for {} x {} tokens", shape_str(x.shape()),
                batch, seqlen);
  const DType dt = x.dtype();
  SCALPEL_CHECK(!cache || dt == DType::f32, "a layer cache (backward pass) needs the fp32 forward, not {}",
                dtype_name(dt));
  const LayerForward f{be, spec, w, tap, cache, batch, seqlen, n, d, dt, spec.family == Family::opt};
  if (cache) cache->x_in = clone_on(be, x);
  f.attention_block(x, rope);
  if (cache) cache->x_mid = clone_on(be, x);
  f.mlp_block(x);
}

}  // namespace scalpel::model
