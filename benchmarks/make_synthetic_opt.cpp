// Writes a synthetic OPT model of any width and depth as a Hugging Face folder, for end-to-end
// benchmarks at sizes no test model has (bench_e2e.sh; OPT-175B widths: hidden 12288, ffn 49152,
// 96 heads): config.json, the tokenizer files of a real OPT folder (default models/opt-mini), and
// weights drawn as OPT initialises them (normal, std init_std = 0.02; biases 0; norms 1 and 0) in
// fp16 (or --dtype), one safetensors shard per decoder layer plus one for the embeddings and the
// final norm, with model.safetensors.index.json. The values depend only on --seed and the tensor's
// name and shape, not on the thread count.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "scalpel/core/dtype.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/io/safetensors.hpp"
#include "scalpel/model/spec.hpp"

using namespace scalpel;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::int64_t hidden = 768, ffn = 3072, heads = 12, layers = 2, positions = 2048;
  double init_std = 0.02;
  std::uint64_t seed = 0;
  std::string dtype = "F16", tokenizer = "models/opt-mini", out;
};

std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// N(0, std²) values for the tensor `name`, by Box-Muller on a counter-based generator: entry i
// depends on (seed, name, i) only.
Tensor normal(const std::string& name, Shape shape, double std, std::uint64_t seed, DType dtype) {
  const std::uint64_t key = mix(seed ^ std::hash<std::string>{}(name));
  Tensor f = Tensor::empty(std::move(shape));
  const auto n = f.numel();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; i += 2) {
    const std::uint64_t a = mix(key + static_cast<std::uint64_t>(i)), b = mix(a);
    const double u1 = (static_cast<double>(a >> 11) + 1.0) / 9007199254740993.0;  // (0, 1]
    const double u2 = static_cast<double>(b >> 11) / 9007199254740992.0;
    const double r = std * std::sqrt(-2.0 * std::log(u1));
    f.f32()[i] = static_cast<float>(r * std::cos(2 * M_PI * u2));
    if (i + 1 < n) f.f32()[i + 1] = static_cast<float>(r * std::sin(2 * M_PI * u2));
  }
  Tensor out = Tensor::empty(f.shape(), dtype);
  convert_from_f32(dtype, f.f32(), out.raw(), static_cast<std::size_t>(n));
  return out;
}

Tensor filled(Shape shape, float v, DType dtype) {
  Tensor f = Tensor::empty(std::move(shape));
  std::fill(f.f32(), f.f32() + f.numel(), v);
  Tensor out = Tensor::empty(f.shape(), dtype);
  convert_from_f32(dtype, f.f32(), out.raw(), static_cast<std::size_t>(f.numel()));
  return out;
}

json opt_config(const Options& o, std::int64_t vocab) {
  return {{"_name_or_path", "synthetic-opt"}, {"architectures", {"OPTForCausalLM"}}, {"model_type", "opt"},
          {"activation_function", "relu"}, {"do_layer_norm_before", true}, {"enable_bias", true},
          {"layer_norm_elementwise_affine", true}, {"hidden_size", o.hidden}, {"ffn_dim", o.ffn},
          {"num_attention_heads", o.heads}, {"num_hidden_layers", o.layers}, {"vocab_size", vocab},
          {"word_embed_proj_dim", o.hidden}, {"max_position_embeddings", o.positions}, {"init_std", o.init_std},
          {"bos_token_id", 2}, {"eos_token_id", 2}, {"pad_token_id", 1}, {"tie_word_embeddings", true},
          {"torch_dtype", o.dtype == "F16" ? "float16" : o.dtype == "BF16" ? "bfloat16" : "float32"},
          {"dropout", 0.0}, {"attention_dropout", 0.0}, {"activation_dropout", 0.0}, {"layerdrop", 0.0},
          {"use_cache", true}, {"prefix", "</s>"}};
}

using Shard = std::vector<std::pair<std::string, Tensor>>;

Shard layer_shard(const Options& o, const model::ModelSpec& spec, std::int64_t l, DType dt) {
  Shard s;
  const auto p = spec.layer_prefix(l);
  for (const auto& lin : spec.linears()) {
    s.emplace_back(p + lin.name + ".weight", normal(p + lin.name, {lin.out, lin.in}, o.init_std, o.seed, dt));
    s.emplace_back(p + lin.name + ".bias", filled({lin.out}, 0.0f, dt));
  }
  for (const auto& n : spec.layer_norm_tensors())
    s.emplace_back(p + n, filled({o.hidden}, n.ends_with(".weight") ? 1.0f : 0.0f, dt));
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Writes a synthetic OPT model (random weights, a real OPT tokenizer) as a Hugging Face folder");
  Options o;
  app.add_option("--hidden", o.hidden);
  app.add_option("--ffn", o.ffn);
  app.add_option("--heads", o.heads);
  app.add_option("--layers", o.layers);
  app.add_option("--positions", o.positions, "max_position_embeddings");
  app.add_option("--seed", o.seed);
  app.add_option("--dtype", o.dtype, "F16, BF16 or F32")->check(CLI::IsMember({"F16", "BF16", "F32"}));
  app.add_option("--tokenizer", o.tokenizer, "an OPT model folder whose tokenizer files are copied");
  app.add_option("--out", o.out, "the folder to write")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    const fs::path tok = o.tokenizer, out = o.out;
    const auto tok_cfg = json::parse(std::ifstream(tok / "config.json"));
    const std::int64_t vocab = tok_cfg.at("vocab_size").get<std::int64_t>();
    fs::create_directories(out);
    for (const char* f : {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                          "special_tokens_map.json", "generation_config.json"})
      if (fs::exists(tok / f)) fs::copy_file(tok / f, out / f, fs::copy_options::overwrite_existing);
    const json cfg = opt_config(o, vocab);
    std::ofstream(out / "config.json") << cfg.dump(2) << "\n";
    const auto spec = model::ModelSpec::from_config(cfg, "synthetic config");
    const DType dt = o.dtype == "F16" ? DType::f16 : o.dtype == "BF16" ? DType::bf16 : DType::f32;
    json weight_map = json::object();
    const auto total = o.layers + 1;
    const auto write = [&](std::int64_t k, const Shard& s) {
      const auto name = fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, total);
      io::write_safetensors(out / name, s);
      for (const auto& [n, t] : s) weight_map[n] = name;
    };
    // Embeddings (positions carry OPT's offset of 2) and the final norm; the LM head is tied.
    const std::string fin = spec.final_norm_prefix();
    write(0, {{spec.embed_tokens_name(), normal(spec.embed_tokens_name(), {vocab, o.hidden}, o.init_std, o.seed, dt)},
              {"model.decoder.embed_positions.weight",
               normal("model.decoder.embed_positions.weight", {o.positions + 2, o.hidden}, o.init_std, o.seed, dt)},
              {fin + ".weight", filled({o.hidden}, 1.0f, dt)},
              {fin + ".bias", filled({o.hidden}, 0.0f, dt)}});
    for (std::int64_t l = 0; l < o.layers; ++l) write(l + 1, layer_shard(o, spec, l, dt));
    std::ofstream(out / "model.safetensors.index.json") << json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump(2)
                                                        << "\n";
    std::cout << out.string() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "make_synthetic_opt: error: " << e.what() << "\n";
    return 1;
  }
}
