// ModelSpec: what a decoder-only model is, read from a Hugging Face config.json (the OPT and
// LLaMA families), with the stored tensor names of every layer. Everything the forward pass, the
// planner and the pruners need to know about shapes comes from here.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace scalpel::model {

enum class Family { opt, llama };

// A linear layer inside a decoder layer: its stored name (relative to the layer prefix), its
// shape, and which group of linears reads the same input (q/k/v share one input, as do gate/up).
struct LinearSpec {
  std::string name;  // e.g. "self_attn.q_proj"
  std::int64_t out = 0, in = 0;
  bool bias = false;
  int input_group = 0;
};

// Linears that read the same input (q/k/v; LLaMA's gate/up), in forward order.
struct LinearGroup {
  int input_group = 0;
  std::vector<LinearSpec> linears;
};

struct ModelSpec {
  Family family = Family::opt;
  std::string model_type;
  std::int64_t vocab_size = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  std::int64_t ffn = 0, max_positions = 0;
  std::int64_t word_embed_proj_dim = 0;  // OPT: embeddings' width (project_in/out when != hidden)
  bool pre_norm = true;                  // OPT do_layer_norm_before
  bool final_norm = true;
  bool norm_affine = true;               // OPT layer_norm_elementwise_affine
  bool linear_bias = false;              // OPT enable_bias; LLaMA attention_bias
  bool mlp_bias = false;                 // LLaMA mlp_bias
  bool tie_embeddings = false;
  std::string activation;                // relu, gelu_new, silu
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  double rope_linear_factor = 1.0;       // rope_scaling {type: linear, factor}
  std::int64_t position_offset = 0;      // OPT learned positions: row p + 2

  // Parses a config.json object; `what` names the file in errors. Unknown model_type or a value
  // of the wrong type is an input Error naming the key.
  static ModelSpec from_config(const nlohmann::json& cfg, const std::string& what);

  std::string layer_prefix(std::int64_t layer) const;  // "model.decoder.layers.3."
  std::vector<LinearSpec> linears() const;             // in forward order
  // The linears whose names match one of `globs` (fnmatch; empty: all), grouped by shared input.
  // Input Error naming `what` (e.g. "config: 'prune.targets'") for a glob that matches nothing.
  std::vector<LinearGroup> linear_groups(const std::vector<std::string>& globs, const std::string& what) const;
  // Every non-linear tensor a layer stores (norm weights/biases), relative names.
  std::vector<std::string> layer_norm_tensors() const;
  // Every tensor of layer `layer` the model reads, full names with the shape config.json implies:
  // the linears' weights [out, in] and biases [out], then the norms [hidden].
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> layer_tensors(std::int64_t layer) const;
  std::string embed_tokens_name() const;
  std::string final_norm_prefix() const;               // "model.decoder.final_layer_norm"
  std::string lm_head_name() const;                    // "lm_head.weight" or the tied embedding

  std::int64_t layer_params() const;    // weights + biases + norms of one decoder layer
  std::int64_t linear_params() const;   // weights of the decoder linears, all layers
  std::int64_t total_params() const;
};

}  // namespace scalpel::model
