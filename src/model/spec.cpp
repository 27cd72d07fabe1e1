// config.json -> ModelSpec for the OPT and LLaMA families, with the defaults Hugging Face applies
// when a key is absent.
#include "scalpel/model/spec.hpp"

#include <fnmatch.h>

#include <cmath>
#include <set>

#include "scalpel/core/error.hpp"

namespace scalpel::model {
namespace {

using nlohmann::json;

template <class T>
T get(const json& cfg, const std::string& key, const std::string& what, std::optional<T> dflt = std::nullopt) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) {
    if (dflt) return *dflt;
    SCALPEL_INPUT_ERROR("{}: missing key '{}'", what, key);
  }
  try {
    if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) throw std::runtime_error("not a boolean");
    } else if constexpr (std::is_integral_v<T>) {
      if (!it->is_number_integer()) throw std::runtime_error("not an integer");
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!it->is_number()) throw std::runtime_error("not a number");
    } else {
      if (!it->is_string()) throw std::runtime_error("not a string");
    }
    return it->get<T>();
  } catch (const std::exception& e) {
    SCALPEL_INPUT_ERROR("{}: key '{}' has the wrong type ({}): {}", what, key, e.what(), it->dump());
  }
}

void check_positive(std::int64_t v, const char* key, const std::string& what) {
  if (v <= 0) SCALPEL_INPUT_ERROR("{}: '{}' must be positive, got {}", what, key, v);
}

}  // namespace

namespace {

using I = std::int64_t;

// OPT's keys, with the defaults of transformers' OPTConfig.
void read_opt(const json& cfg, const std::string& what, ModelSpec& s) {
  s.family = Family::opt;
  s.vocab_size = get<I>(cfg, "vocab_size", what);
  s.hidden = get<I>(cfg, "hidden_size", what);
  s.layers = get<I>(cfg, "num_hidden_layers", what);
  s.heads = get<I>(cfg, "num_attention_heads", what);
  s.kv_heads = s.heads;
  s.ffn = get<I>(cfg, "ffn_dim", what);
  s.max_positions = get<I>(cfg, "max_position_embeddings", what);
  s.word_embed_proj_dim = get<I>(cfg, "word_embed_proj_dim", what, s.hidden);
  s.pre_norm = get<bool>(cfg, "do_layer_norm_before", what, true);
  s.final_norm = s.pre_norm && !get<bool>(cfg, "_remove_final_layer_norm", what, false);
  s.norm_affine = get<bool>(cfg, "layer_norm_elementwise_affine", what, true);
  s.linear_bias = get<bool>(cfg, "enable_bias", what, true);
  s.mlp_bias = s.linear_bias;
  s.tie_embeddings = get<bool>(cfg, "tie_word_embeddings", what, true);
  s.activation = get<std::string>(cfg, "activation_function", what, std::string("relu"));
  s.norm_eps = 1e-5;  // OPT's LayerNorm uses the torch default
  s.position_offset = 2;
  if (s.activation != "relu" && s.activation != "gelu_new" && s.activation != "gelu")
    SCALPEL_INPUT_ERROR("{}: activation_function '{}' is not supported (relu, gelu, gelu_new)", what,
                        s.activation);
}

// LLaMA's keys (Mistral and Qwen2 share them), with the defaults of transformers' LlamaConfig.
void read_llama(const json& cfg, const std::string& what, ModelSpec& s) {
  s.family = Family::llama;
  s.vocab_size = get<I>(cfg, "vocab_size", what);
  s.hidden = get<I>(cfg, "hidden_size", what);
  s.layers = get<I>(cfg, "num_hidden_layers", what);
  s.heads = get<I>(cfg, "num_attention_heads", what);
  s.kv_heads = get<I>(cfg, "num_key_value_heads", what, s.heads);
  s.ffn = get<I>(cfg, "intermediate_size", what);
  s.max_positions = get<I>(cfg, "max_position_embeddings", what);
  s.word_embed_proj_dim = s.hidden;
  s.norm_eps = get<double>(cfg, "rms_norm_eps", what, 1e-6);
  s.rope_theta = get<double>(cfg, "rope_theta", what, 10000.0);
  s.linear_bias = get<bool>(cfg, "attention_bias", what, s.model_type == "qwen2");
  s.mlp_bias = get<bool>(cfg, "mlp_bias", what, false);
  s.tie_embeddings = get<bool>(cfg, "tie_word_embeddings", what, false);
  s.activation = get<std::string>(cfg, "hidden_act", what, std::string("silu"));
  if (s.activation != "silu")
    SCALPEL_INPUT_ERROR("{}: hidden_act '{}' is not supported (silu)", what, s.activation);
  if (auto it = cfg.find("rope_scaling"); it != cfg.end() && !it->is_null()) {
    const auto type = it->value("rope_type", it->value("type", std::string()));
    if (type != "linear")
      SCALPEL_INPUT_ERROR("{}: rope_scaling type '{}' is not supported (null or linear)", what, type);
    s.rope_linear_factor = get<double>(*it, "factor", what + " rope_scaling");
  }
}

// Sizes that must be positive and agree; head_dim (LLaMA may set it) read here.
void check_shape(const json& cfg, const std::string& what, ModelSpec& s) {
  check_positive(s.vocab_size, "vocab_size", what);
  check_positive(s.hidden, "hidden_size", what);
  check_positive(s.layers, "num_hidden_layers", what);
  check_positive(s.heads, "num_attention_heads", what);
  check_positive(s.kv_heads, "num_key_value_heads", what);
  check_positive(s.ffn, "ffn_dim/intermediate_size", what);
  check_positive(s.max_positions, "max_position_embeddings", what);
  s.head_dim = s.family == Family::llama ? get<I>(cfg, "head_dim", what, s.hidden / s.heads)
                                         : s.hidden / s.heads;
  if (s.family == Family::opt && s.hidden % s.heads != 0)
    SCALPEL_INPUT_ERROR("{}: hidden_size {} is not divisible by num_attention_heads {}", what, s.hidden, s.heads);
  if (s.heads % s.kv_heads != 0)
    SCALPEL_INPUT_ERROR("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", what,
                        s.heads, s.kv_heads);
  if (s.head_dim <= 0 || s.head_dim % 2 != 0)
    SCALPEL_INPUT_ERROR("{}: head_dim {} must be positive and even", what, s.head_dim);
  // The rotary and normalisation constants: a non-positive one gives NaN or garbage angles.
  if (!(s.rope_theta > 0) || !std::isfinite(s.rope_theta))
    SCALPEL_INPUT_ERROR("{}: rope_theta {} must be a positive number", what, s.rope_theta);
  if (!(s.rope_linear_factor > 0) || !std::isfinite(s.rope_linear_factor))
    SCALPEL_INPUT_ERROR("{}: rope_scaling factor {} must be a positive number", what, s.rope_linear_factor);
  if (!(s.norm_eps >= 0) || !std::isfinite(s.norm_eps))
    SCALPEL_INPUT_ERROR("{}: rms_norm_eps {} must be a non-negative number", what, s.norm_eps);
}

}  // namespace

ModelSpec ModelSpec::from_config(const json& cfg, const std::string& what) {
  if (!cfg.is_object()) SCALPEL_INPUT_ERROR("{}: not a JSON object", what);
  ModelSpec s;
  s.model_type = get<std::string>(cfg, "model_type", what);
  if (s.model_type == "opt")
    read_opt(cfg, what, s);
  else if (s.model_type == "llama" || s.model_type == "mistral" || s.model_type == "qwen2")
    read_llama(cfg, what, s);
  else
    SCALPEL_INPUT_ERROR("{}: model_type '{}' is not supported (opt, llama, mistral, qwen2)", what, s.model_type);
  check_shape(cfg, what, s);
  return s;
}

std::string ModelSpec::layer_prefix(std::int64_t layer) const {
  return family == Family::opt ? fmt::format("model.decoder.layers.{}.", layer)
                               : fmt::format("model.layers.{}.", layer);
}

std::vector<LinearSpec> ModelSpec::linears() const {
  const auto q = heads * head_dim, kv = kv_heads * head_dim;
  if (family == Family::opt) {
    return {{"self_attn.q_proj", q, hidden, linear_bias, 0},
            {"self_attn.k_proj", kv, hidden, linear_bias, 0},
            {"self_attn.v_proj", kv, hidden, linear_bias, 0},
            {"self_attn.out_proj", hidden, q, linear_bias, 1},
            {"fc1", ffn, hidden, linear_bias, 2},
            {"fc2", hidden, ffn, linear_bias, 3}};
  }
  return {{"self_attn.q_proj", q, hidden, linear_bias, 0},
          {"self_attn.k_proj", kv, hidden, linear_bias, 0},
          {"self_attn.v_proj", kv, hidden, linear_bias, 0},
          {"self_attn.o_proj", hidden, q, linear_bias, 1},
          {"mlp.gate_proj", ffn, hidden, mlp_bias, 2},
          {"mlp.up_proj", ffn, hidden, mlp_bias, 2},
          {"mlp.down_proj", hidden, ffn, mlp_bias, 3}};
}

std::vector<std::string> ModelSpec::layer_norm_tensors() const {
  if (family == Family::opt) {
    if (!norm_affine) return {};
    return {"self_attn_layer_norm.weight", "self_attn_layer_norm.bias", "final_layer_norm.weight",
            "final_layer_norm.bias"};
  }
  return {"input_layernorm.weight", "post_attention_layernorm.weight"};
}

std::vector<std::pair<std::string, std::vector<std::int64_t>>> ModelSpec::layer_tensors(std::int64_t layer) const {
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> out;
  const auto prefix = layer_prefix(layer);
  for (const auto& l : linears()) {
    out.push_back({prefix + l.name + ".weight", {l.out, l.in}});
    if (l.bias) out.push_back({prefix + l.name + ".bias", {l.out}});
  }
  for (const auto& n : layer_norm_tensors()) out.push_back({prefix + n, {hidden}});
  return out;
}

std::string ModelSpec::embed_tokens_name() const {
  return family == Family::opt ? "model.decoder.embed_tokens.weight" : "model.embed_tokens.weight";
}

std::string ModelSpec::final_norm_prefix() const {
  return family == Family::opt ? "model.decoder.final_layer_norm" : "model.norm";
}

std::string ModelSpec::lm_head_name() const {
  return tie_embeddings ? embed_tokens_name() : "lm_head.weight";
}

std::int64_t ModelSpec::layer_params() const {
  std::int64_t n = 0;
  for (const auto& l : linears()) n += l.out * l.in + (l.bias ? l.out : 0);
  const auto norms = family == Family::opt ? (norm_affine ? 4 : 0) : 2;
  return n + norms * hidden;
}

std::int64_t ModelSpec::linear_params() const {
  std::int64_t n = 0;
  for (const auto& l : linears()) n += l.out * l.in;
  return n * layers;
}

std::int64_t ModelSpec::total_params() const {
  std::int64_t n = layers * layer_params() + vocab_size * word_embed_proj_dim;
  if (family == Family::opt) {
    n += (max_positions + position_offset) * hidden;
    if (word_embed_proj_dim != hidden) n += 2 * hidden * word_embed_proj_dim;
  }
  if (final_norm) n += (family == Family::opt ? (norm_affine ? 2 : 0) : 1) * hidden;
  if (!tie_embeddings) n += vocab_size * word_embed_proj_dim;
  return n;
}

std::vector<LinearGroup> ModelSpec::linear_groups(const std::vector<std::string>& globs,
                                                  const std::string& what) const {
  std::vector<LinearGroup> out;
  std::set<std::string> matched;
  const auto all = linears();
  for (const auto& l : all) {
    bool take = globs.empty();
    for (const auto& g : globs)
      if (fnmatch(g.c_str(), l.name.c_str(), 0) == 0) {
        take = true;
        matched.insert(g);
      }
    if (!take) continue;
    if (out.empty() || out.back().input_group != l.input_group) out.push_back({l.input_group, {}});
    out.back().linears.push_back(l);
  }
  for (const auto& g : globs)
    if (!matched.count(g)) {
      std::string names;
      for (const auto& l : all) names += (names.empty() ? "" : ", ") + l.name;
      SCALPEL_INPUT_ERROR("{} entry '{}' matches no linear of this model ({})", what, g, names);
    }
  return out;
}

}  // namespace scalpel::model
