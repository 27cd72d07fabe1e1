// The decoder layer forward of both families against a float64 re-implementation written here
// from the Hugging Face modeling code's equations (OPT pre- and post-LayerNorm, LLaMA with GQA
// and RoPE), on random weights; and ModelSpec against the model cards' figures.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../common/backends.hpp"
#include "../common/reference.hpp"
#include "../common/reference_model.hpp"
#include "small_layers.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/model/model.hpp"

namespace scalpel::test {
namespace {

using model::Family;
using model::LayerWeights;
using model::ModelSpec;

void check_layer(Backend& be_ref, const ModelSpec& s) {
  Backend* be = &be_ref;
  const std::int64_t B = 3, T = 11;
  const auto ref = random_layer(s, 100);
  LayerWeights w;
  for (const auto& l : s.linears()) {
    w.tensors[l.name + ".weight"] = be->upload(to_tensor(ref.w.at(l.name + ".weight"), {l.out, l.in}));
    if (l.bias) w.tensors[l.name + ".bias"] = be->upload(to_tensor(ref.w.at(l.name + ".bias"), {l.out}));
  }
  for (const auto& n : s.layer_norm_tensors()) w.tensors[n] = be->upload(to_tensor(ref.w.at(n), {s.hidden}));
  const auto x0 = random_vec(static_cast<std::size_t>(B * T * s.hidden), 7);
  Tensor x = be->upload(to_tensor(x0, {B * T, s.hidden}));
  const auto rope = model::make_rope_tables(*be, s, T);
  int taps = 0;
  model::LinearTap tap = [&](int, const std::vector<std::string>&, const Tensor& in) {
    ++taps;
    EXPECT_EQ(in.size(0), B * T);
  };
  model::LayerCache cache;
  model::decoder_layer_forward(*be, s, w, x, B, T, &rope, &tap, &cache);
  EXPECT_EQ(taps, 4);  // one call per input group: qkv, out, fc1|gate+up, fc2|down
  EXPECT_TRUE(cache.probs.defined());
  EXPECT_REL_NEAR(to_vec(be->download(x)), ref_forward(s, ref, x0, B, T), Tol::f32_deep);
}

// One test body per backend (cpu, and cuda when built; skipped without a GPU).
class DecoderLayer : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { SCALPEL_BACKEND_OR_SKIP(be, GetParam(), 2); }
  std::unique_ptr<Backend> be;
};
TEST_P(DecoderLayer, OptPreNormMatchesFloat64) { check_layer(*be, small_spec(Family::opt, true)); }
TEST_P(DecoderLayer, OptPostNormMatchesFloat64) { check_layer(*be, small_spec(Family::opt, false)); }
TEST_P(DecoderLayer, LlamaGqaRopeMatchesFloat64) { check_layer(*be, small_spec(Family::llama)); }
INSTANTIATE_TEST_SUITE_P(All, DecoderLayer, ::testing::ValuesIn(test_backends()));

nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

TEST(ModelSpec, SharedModelsMatchTheirCards) {
  const std::filesystem::path shared = SCALPEL_SHARED_DIR;
  if (!std::filesystem::exists(shared / "models/opt-mini/config.json"))
    GTEST_SKIP() << "../shared/models not present: skipping the model-card checks";
  const auto opt = ModelSpec::from_config(read_json(shared / "models/opt-mini/config.json"), "opt-mini");
  EXPECT_EQ(opt.total_params(), 5388288);   // opt-mini README: 5,388,288 parameters
  EXPECT_EQ(opt.linear_params(), 3145728);  // 24 decoder linear weights hold 3,145,728
  EXPECT_EQ(opt.position_offset, 2);
  EXPECT_TRUE(opt.tie_embeddings);
  const auto llama = ModelSpec::from_config(read_json(shared / "models/llama-mini/config.json"), "llama-mini");
  EXPECT_EQ(llama.total_params(), 4999424);   // llama-mini README
  EXPECT_EQ(llama.linear_params(), 2899968);
  EXPECT_EQ(llama.kv_heads, 2);
  EXPECT_EQ(llama.linears().size(), 7u);
}

TEST(ModelSpec, BadConfigsNameTheKey) {
  auto msg = [](const nlohmann::json& cfg) -> std::string {
    try {
      ModelSpec::from_config(cfg, "cfg.json");
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::input);
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(msg({{"model_type", "gpt_neox"}}).find("model_type 'gpt_neox' is not supported"), std::string::npos);
  nlohmann::json j = {{"model_type", "llama"}, {"vocab_size", "many"}};
  EXPECT_NE(msg(j).find("'vocab_size' has the wrong type"), std::string::npos);
  j = {{"model_type", "opt"}, {"vocab_size", 10}};
  EXPECT_NE(msg(j).find("missing key 'hidden_size'"), std::string::npos);
  j = {{"model_type", "llama"}, {"vocab_size", 10}, {"hidden_size", 32}, {"num_hidden_layers", 1},
       {"num_attention_heads", 4}, {"num_key_value_heads", 3}, {"intermediate_size", 8},
       {"max_position_embeddings", 8}};
  EXPECT_NE(msg(j).find("not a multiple of num_key_value_heads"), std::string::npos);
  j["num_key_value_heads"] = 2;
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 2.0}};
  EXPECT_NE(msg(j).find("rope_scaling type 'yarn'"), std::string::npos);
  // Constants that would give NaN angles or a negative variance floor.
  j["rope_scaling"] = {{"type", "linear"}, {"factor", -2.0}};
  EXPECT_NE(msg(j).find("rope_scaling factor -2 must be a positive number"), std::string::npos);
  j["rope_scaling"] = nullptr;
  j["rope_theta"] = -10000.0;
  EXPECT_NE(msg(j).find("rope_theta -10000 must be a positive number"), std::string::npos);
  j["rope_theta"] = 10000.0;
  j["rms_norm_eps"] = -1e-6;
  EXPECT_NE(msg(j).find("rms_norm_eps -1e-06 must be a non-negative number"), std::string::npos);
  j["rms_norm_eps"] = 1e-6;
  EXPECT_EQ(msg(j), "no error");
}

}  // namespace
}  // namespace scalpel::test
