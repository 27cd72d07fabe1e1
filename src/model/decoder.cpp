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

}  // namespace

void decoder_layer_forward(Backend& be, const ModelSpec& spec, const LayerWeights& w, Tensor& x,
                           std::int64_t batch, std::int64_t seqlen, const RopeTables* rope,
                           const LinearTap* tap, LayerCache* cache) {
  const auto n = batch * seqlen, d = spec.hidden;
  SCALPEL_CHECK(x.size(0) == n && x.size(1) == d, "layer input {} for {} x {} tokens", shape_str(x.shape()),
                batch, seqlen);
  const bool opt = spec.family == Family::opt;
  const DType dt = x.dtype();  // intermediates follow the forward's dtype
  SCALPEL_CHECK(!cache || dt == DType::f32, "a layer cache (backward pass) needs the fp32 forward, not {}",
                dtype_name(dt));
  const auto qdim = spec.heads * spec.head_dim, kvdim = spec.kv_heads * spec.head_dim;
  auto norm = [&](const char* prefix, const Tensor& in, Tensor& out) {
    if (opt)
      be.layer_norm(in, w.find(std::string(prefix) + ".weight"), w.find(std::string(prefix) + ".bias"),
                    static_cast<float>(spec.norm_eps), out);
    else
      be.rms_norm(in, w.at(std::string(prefix) + ".weight"), static_cast<float>(spec.norm_eps), out);
  };
  if (cache) cache->x_in = clone_on(be, x);

  // --- attention block ---
  Tensor h = be.empty({n, d}, dt);
  const char* ln1 = opt ? "self_attn_layer_norm" : "input_layernorm";
  if (spec.pre_norm) norm(ln1, x, h);
  else be.copy(x, h);
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
  be.add(x, o);
  if (cache && !spec.pre_norm) cache->res1 = clone_on(be, x);
  if (!spec.pre_norm) norm(ln1, x, x);
  if (cache) cache->x_mid = clone_on(be, x);

  // --- MLP block ---
  Tensor h2 = be.empty({n, d}, dt);
  const char* ln2 = opt ? "final_layer_norm" : "post_attention_layernorm";
  if (spec.pre_norm) norm(ln2, x, h2);
  else be.copy(x, h2);
  Tensor y = be.empty({n, d}, dt);
  if (opt) {
    tap_input(tap, 2, {"fc1"}, h2);
    Tensor f = be.empty({n, spec.ffn}, dt);
    run_linear(be, w, "fc1", h2, f);
    if (cache) cache->ffn_pre = clone_on(be, f);
    if (spec.activation == "relu") be.relu(f);
    else be.gelu(f);
    tap_input(tap, 3, {"fc2"}, f);
    run_linear(be, w, "fc2", f, y);
    if (cache) cache->ffn_act = f;
  } else {
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
  if (cache) cache->norm2 = h2;
  be.add(x, y);
  if (cache && !spec.pre_norm) cache->res2 = clone_on(be, x);
  if (!spec.pre_norm) norm(ln2, x, x);
}

}  // namespace scalpel::model
