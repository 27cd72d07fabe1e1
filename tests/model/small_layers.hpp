// Small decoder specs of both families (OPT pre- and post-LayerNorm, LLaMA with GQA) and random
// float64 weights for them, shared by the forward and backward layer tests.
#pragma once
#include <cmath>

#include <nlohmann/json.hpp>

#include "../common/reference_model.hpp"
#include "scalpel/model/spec.hpp"

namespace scalpel::test {

inline ModelSpec small_spec(model::Family f, bool pre_norm = true) {
  nlohmann::json cfg;
  if (f == model::Family::opt) {
    cfg = {{"model_type", "opt"}, {"vocab_size", 50}, {"hidden_size", 32}, {"num_hidden_layers", 2},
           {"num_attention_heads", 4}, {"ffn_dim", 48}, {"max_position_embeddings", 16},
           {"do_layer_norm_before", pre_norm}, {"word_embed_proj_dim", 32}};
  } else {
    cfg = {{"model_type", "llama"}, {"vocab_size", 50}, {"hidden_size", 32}, {"num_hidden_layers", 2},
           {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 40},
           {"max_position_embeddings", 16}, {"rms_norm_eps", 1e-5}, {"rope_theta", 500.0}};
  }
  return ModelSpec::from_config(cfg, "test config");
}

inline RefLayer random_layer(const ModelSpec& s, std::uint64_t seed) {
  RefLayer r;
  for (const auto& l : s.linears()) {
    r.w[l.name + ".weight"] = random_vec(static_cast<std::size_t>(l.out * l.in), seed++, 1.0 / std::sqrt(double(l.in)));
    if (l.bias) r.w[l.name + ".bias"] = random_vec(static_cast<std::size_t>(l.out), seed++, 0.1);
  }
  for (const auto& n : s.layer_norm_tensors()) {
    auto v = random_vec(static_cast<std::size_t>(s.hidden), seed++, 0.1);
    if (n.ends_with(".weight"))
      for (auto& x : v) x += 1.0;
    r.w[n] = v;
  }
  return r;
}

}  // namespace scalpel::test
