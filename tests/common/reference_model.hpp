// Float64 references of whole decoder layers and of a whole causal LM, written from the Hugging
// Face modeling code's equations (OPT pre- and post-LayerNorm with learned positions, LLaMA with
// GQA and RoPE): the layer test compares Backend results with them, and the task test scores
// requests with a float64 forward of the shared models read straight from their safetensors.
#pragma once
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "reference.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/model/spec.hpp"

namespace scalpel::test {

using model::Family;
using model::ModelSpec;

// One decoder layer's tensors by relative name ("self_attn.q_proj.weight"), in float64.
struct RefLayer {
  std::map<std::string, Vec> w;
};

// Random weights for every tensor a layer stores, scaled like a trained model's (std 1/sqrt(in)).
// Offsets added to linears' outputs by name ("fc1"): the finite-difference probe of the
// gradient tests (∂L/∂y of a linear is the derivative along an offset of y).
using OutputOffsets = std::map<std::string, Vec>;

// One decoder layer on x [B*T, hidden], in float64.
// `inputs`, when given, receives each linear's input by name.
inline Vec ref_forward(const ModelSpec& s, const RefLayer& L, Vec x, std::int64_t B, std::int64_t T,
                       const OutputOffsets* offsets = nullptr, std::map<std::string, Vec>* inputs = nullptr) {
  const auto n = B * T, d = s.hidden;
  const bool opt = s.family == Family::opt;
  auto lin = [&](const std::string& name, const Vec& in, std::int64_t in_dim, std::int64_t out_dim) {
    if (inputs) (*inputs)[name] = in;
    auto it = L.w.find(name + ".bias");
    Vec y = ref_linear(in, L.w.at(name + ".weight"), it == L.w.end() ? nullptr : &it->second, n, in_dim, out_dim);
    if (offsets)
      if (auto o = offsets->find(name); o != offsets->end())
        for (std::size_t i = 0; i < y.size(); ++i) y[i] += o->second[i];
    return y;
  };
  auto norm = [&](const std::string& p, const Vec& in) {
    return opt ? ref_layer_norm(in, L.w.at(p + ".weight"), L.w.at(p + ".bias"), n, d, s.norm_eps)
               : ref_rms_norm(in, L.w.at(p + ".weight"), n, d, s.norm_eps);
  };
  const auto qd = s.heads * s.head_dim, kvd = s.kv_heads * s.head_dim;
  const std::string ln1 = opt ? "self_attn_layer_norm" : "input_layernorm";
  const std::string ln2 = opt ? "final_layer_norm" : "post_attention_layernorm";
  Vec h = s.pre_norm ? norm(ln1, x) : x;
  Vec q = lin("self_attn.q_proj", h, d, qd), k = lin("self_attn.k_proj", h, d, kvd), v = lin("self_attn.v_proj", h, d, kvd);
  double scale = 1.0 / std::sqrt(double(s.head_dim));
  if (opt) {
    for (auto& e : q) e *= scale;
    scale = 1.0;
  } else {
    ref_rope(q, n, T, s.heads, s.head_dim, s.rope_theta);
    ref_rope(k, n, T, s.kv_heads, s.head_dim, s.rope_theta);
  }
  const Vec a = ref_attention(q, k, v, B, T, s.heads, s.kv_heads, s.head_dim, scale);
  const Vec o = lin(opt ? "self_attn.out_proj" : "self_attn.o_proj", a, qd, d);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  if (!s.pre_norm) x = norm(ln1, x);
  Vec h2 = s.pre_norm ? norm(ln2, x) : x;
  Vec y;
  if (opt) {
    Vec f = lin("fc1", h2, d, s.ffn);
    for (auto& e : f) e = std::max(0.0, e);
    y = lin("fc2", f, s.ffn, d);
  } else {
    Vec g = lin("mlp.gate_proj", h2, d, s.ffn), u = lin("mlp.up_proj", h2, d, s.ffn);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
    y = lin("mlp.down_proj", g, s.ffn, d);
  }
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  if (!s.pre_norm) x = norm(ln2, x);
  return x;
}

// A whole model in float64, weights read from a Hugging Face folder.
struct RefModel {
  ModelSpec spec;
  std::vector<RefLayer> layers;
  Vec embed_tokens, positions, project_in, project_out, final_w, final_b, lm_head;
};

inline Vec ref_tensor(const io::HfCheckpoint& ck, const std::string& name) {
  const Tensor t = ck.view(name).to_f32();
  const float* p = t.f32();
  return Vec(p, p + t.numel());
}

inline RefModel load_ref_model(const std::filesystem::path& folder) {
  io::HfCheckpoint ck(folder);
  RefModel m{ModelSpec::from_config(ck.config(), (folder / "config.json").string()), {}, {}, {}, {}, {}, {}, {}, {}};
  const auto& s = m.spec;
  m.embed_tokens = ref_tensor(ck, s.embed_tokens_name());
  if (s.family == Family::opt) {
    m.positions = ref_tensor(ck, "model.decoder.embed_positions.weight");
    if (s.word_embed_proj_dim != s.hidden) {
      m.project_in = ref_tensor(ck, "model.decoder.project_in.weight");
      m.project_out = ref_tensor(ck, "model.decoder.project_out.weight");
    }
  }
  if (s.final_norm) {
    if (s.family == Family::llama || s.norm_affine) m.final_w = ref_tensor(ck, s.final_norm_prefix() + ".weight");
    if (s.family == Family::opt && s.norm_affine) m.final_b = ref_tensor(ck, s.final_norm_prefix() + ".bias");
  }
  m.lm_head = s.tie_embeddings ? m.embed_tokens : ref_tensor(ck, "lm_head.weight");
  for (std::int64_t l = 0; l < s.layers; ++l) {
    RefLayer r;
    for (const auto& lin : s.linears()) {
      r.w[lin.name + ".weight"] = ref_tensor(ck, s.layer_prefix(l) + lin.name + ".weight");
      if (lin.bias) r.w[lin.name + ".bias"] = ref_tensor(ck, s.layer_prefix(l) + lin.name + ".bias");
    }
    for (const auto& n : s.layer_norm_tensors()) r.w[n] = ref_tensor(ck, s.layer_prefix(l) + n);
    m.layers.push_back(std::move(r));
  }
  return m;
}

// The decoder's input for one sequence: token embeddings (+ project_in, + OPT's positions).
inline Vec ref_embed(const RefModel& m, const std::vector<std::int32_t>& ids) {
  const auto& s = m.spec;
  const auto T = static_cast<std::int64_t>(ids.size()), d = s.hidden, e = s.word_embed_proj_dim;
  Vec x(static_cast<std::size_t>(T * e));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t j = 0; j < e; ++j) x[t * e + j] = m.embed_tokens[ids[t] * e + j];
  if (e != d) x = ref_linear(x, m.project_in, nullptr, T, e, d);
  if (s.family == Family::opt)
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t j = 0; j < d; ++j) x[t * d + j] += m.positions[(t + s.position_offset) * d + j];
  return x;
}

// log p(ids[t+1] | ids[..t]) for t = first .. T-2 of one sequence, and whether ids[t+1] is the
// first argmax of the row, from a float64 forward (log-softmax in float64).
struct RefScores {
  std::vector<double> logp;
  std::vector<bool> argmax;
};

inline RefScores ref_model_scores(const RefModel& m, const std::vector<std::int32_t>& ids, std::int64_t first = 0,
                                  std::int64_t offset_layer = -1, const OutputOffsets* offsets = nullptr) {
  const auto& s = m.spec;
  const auto T = static_cast<std::int64_t>(ids.size()), d = s.hidden, e = s.word_embed_proj_dim, V = s.vocab_size;
  Vec x = ref_embed(m, ids);
  for (std::size_t l = 0; l < m.layers.size(); ++l)
    x = ref_forward(s, m.layers[l], x, 1, T, static_cast<std::int64_t>(l) == offset_layer ? offsets : nullptr);
  if (s.final_norm) {
    if (s.family == Family::opt) {
      const Vec ones(static_cast<std::size_t>(d), 1.0), zeros(static_cast<std::size_t>(d), 0.0);
      x = ref_layer_norm(x, m.final_w.empty() ? ones : m.final_w, m.final_b.empty() ? zeros : m.final_b, T, d,
                         s.norm_eps);
    } else {
      x = ref_rms_norm(x, m.final_w, T, d, s.norm_eps);
    }
  }
  if (e != d) x = ref_linear(x, m.project_out, nullptr, T, d, e);
  const Vec tail(x.begin() + first * e, x.end());
  const Vec logits = ref_linear(tail, m.lm_head, nullptr, T - first, e, V);
  RefScores r;
  for (std::int64_t t = first; t + 1 < T; ++t) {
    const double* row = logits.data() + (t - first) * V;
    std::int64_t best = 0;
    for (std::int64_t j = 1; j < V; ++j)
      if (row[j] > row[best]) best = j;
    double z = 0;
    for (std::int64_t j = 0; j < V; ++j) z += std::exp(row[j] - row[best]);
    r.logp.push_back(row[ids[t + 1]] - row[best] - std::log(z));
    r.argmax.push_back(best == ids[t + 1]);
  }
  return r;
}

// A window's loss as LLM Surgeon takes it: the mean next-token NLL over its T - 1 predictions,
// with optional offsets on the outputs of layer offset_layer's linears.
inline double ref_window_loss(const RefModel& m, const std::vector<std::int32_t>& ids, std::int64_t offset_layer = -1,
                              const OutputOffsets* offsets = nullptr) {
  const auto r = ref_model_scores(m, ids, 0, offset_layer, offsets);
  double sum = 0;
  for (const double v : r.logp) sum -= v;
  return sum / static_cast<double>(r.logp.size());
}

}  // namespace scalpel::test
