// The shared test checkpoints (shared/models/opt-mini and llama-mini), opened through HfCheckpoint:
// the facts from their model cards (tensor counts, header length, dtypes, shapes, parameter counts,
// largest weight) and a few exact values read through row slices. Skipped when the models are absent.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "scalpel/io/hf_checkpoint.hpp"

namespace scalpel::io {
namespace {

namespace fs = std::filesystem;

fs::path model_dir(const char* name) { return fs::path(SCALPEL_SHARED_DIR) / "models" / name; }

#define SKIP_UNLESS_MODEL(name)                                                               \
  do {                                                                                        \
    if (!fs::exists(model_dir(name) / "model.safetensors"))                                   \
      GTEST_SKIP() << "shared model " << model_dir(name).string()                             \
                   << " not found (set -DSCALPEL_SHARED_DIR=... to the shared folder to run)"; \
  } while (0)

// Facts common to both cards: one F16 file, tensors stored contiguously in sorted-name order
// right up to the end of the file, and __metadata__ {"format": "pt"}.
void check_layout(const HfCheckpoint& ck, std::size_t file_bytes) {
  EXPECT_FALSE(ck.sharded());
  const auto& file_path = ck.folder() / "model.safetensors";
  EXPECT_EQ(fs::file_size(file_path), file_bytes);
  const auto f = SafetensorsFile::open(file_path);
  const auto& h = f->header();
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.data_start() % 8, 0u);
  std::uint64_t at = 0;
  for (std::size_t i = 0; i < h.tensors.size(); ++i) {
    EXPECT_EQ(h.tensors[i].dtype, DType::f16) << h.tensors[i].name;
    EXPECT_EQ(h.tensors[i].begin, at) << h.tensors[i].name;
    at = h.tensors[i].end;
    if (i > 0) {
      EXPECT_LT(h.tensors[i - 1].name, h.tensors[i].name);
    }
  }
  EXPECT_EQ(h.data_start() + at, file_bytes);
}

// Sum of element counts and the largest |w|, reading every tensor through the fp32 path.
std::pair<std::int64_t, float> params_and_max(const HfCheckpoint& ck) {
  std::int64_t n = 0;
  float mx = 0;
  for (const auto& name : ck.tensor_names()) {
    const Tensor t = ck.read_f32(name);
    n += t.numel();
    for (std::int64_t i = 0; i < t.numel(); ++i) mx = std::max(mx, std::fabs(t.f32()[i]));
  }
  return {n, mx};
}

TEST(SharedModels, OptMini) {
  SKIP_UNLESS_MODEL("opt-mini");
  const HfCheckpoint ck(model_dir("opt-mini"));
  EXPECT_EQ(ck.config().at("model_type"), "opt");
  EXPECT_EQ(ck.config().at("hidden_size"), 256);
  EXPECT_EQ(ck.config().at("vocab_size"), 8192);
  EXPECT_TRUE(ck.opened_files().empty());

  const auto names = ck.tensor_names();
  EXPECT_EQ(names.size(), 68u);
  ASSERT_EQ(ck.opened_files().size(), 1u);
  const auto f = SafetensorsFile::open(ck.folder() / "model.safetensors");
  EXPECT_EQ(f->header().header_bytes, 7520u);
  check_layout(ck, 10784104);

  const auto& pos = ck.info("model.decoder.embed_positions.weight");
  EXPECT_EQ(pos.shape, (Shape{514, 256}));
  EXPECT_EQ(pos.dtype, DType::f16);
  EXPECT_EQ(ck.info("decoder.embed_tokens.weight").shape, (Shape{8192, 256}));
  EXPECT_EQ(ck.info("decoder.layers.3.fc1.weight").shape, (Shape{1024, 256}));
  EXPECT_EQ(ck.info("decoder.layers.3.fc2.weight").shape, (Shape{256, 1024}));
  EXPECT_EQ(ck.info("decoder.layers.0.self_attn.q_proj.bias").shape, (Shape{256}));
  // Tied head: not stored (as HF saves OPT).
  EXPECT_FALSE(ck.has("lm_head.weight"));
  EXPECT_EQ(std::count(names.begin(), names.end(), "lm_head.weight"), 0);

  // Row 2 of the positional table (position 0, after OPT's offset of 2), exact fp16 values.
  const Tensor row = ck.read_rows_f32("decoder.embed_positions.weight", 2, 3);
  ASSERT_EQ(row.shape(), (Shape{1, 256}));
  EXPECT_EQ(row.f32()[0], -0.0067138671875f);
  EXPECT_EQ(row.f32()[1], 0.060760498046875f);
  EXPECT_EQ(row.f32()[2], -0.005359649658203125f);
  EXPECT_EQ(row.f32()[3], -0.01224517822265625f);
  const Tensor row0 = ck.read_rows_f32("decoder.embed_positions.weight", 0, 1);
  EXPECT_EQ(row0.f32()[0], 0.0252838134765625f);

  const auto [params, max_abs] = params_and_max(ck);
  EXPECT_EQ(params, 5388288);
  EXPECT_NEAR(max_abs, 1.239f, 1e-3f);  // the card rounds to 3 decimals

  std::int64_t linear = 0;
  for (const auto& name : names)
    if (name.ends_with("proj.weight") || name.ends_with("fc1.weight") || name.ends_with("fc2.weight"))
      linear += shape_numel(ck.info(name).shape);
  EXPECT_EQ(linear, 3145728);
}

TEST(SharedModels, LlamaMini) {
  SKIP_UNLESS_MODEL("llama-mini");
  const HfCheckpoint ck(model_dir("llama-mini"));
  EXPECT_EQ(ck.config().at("model_type"), "llama");
  EXPECT_EQ(ck.config().at("num_key_value_heads"), 2);
  EXPECT_EQ(ck.config().at("tie_word_embeddings"), false);

  const auto names = ck.tensor_names();
  // The model card says 38 tensors, but its own list (embed, 4 layers x 9, final norm, lm_head)
  // and its parameter count (4,999,424, checked below) add up to 39, which is what the file holds.
  EXPECT_EQ(names.size(), 39u);
  check_layout(ck, 10002992);

  EXPECT_TRUE(ck.has("lm_head.weight"));
  EXPECT_EQ(ck.info("lm_head.weight").shape, (Shape{4096, 256}));
  EXPECT_EQ(ck.info("embed_tokens.weight").shape, (Shape{4096, 256}));
  EXPECT_EQ(ck.info("layers.0.self_attn.q_proj.weight").shape, (Shape{256, 256}));
  EXPECT_EQ(ck.info("layers.0.self_attn.k_proj.weight").shape, (Shape{128, 256}));  // GQA
  EXPECT_EQ(ck.info("layers.2.mlp.gate_proj.weight").shape, (Shape{688, 256}));
  EXPECT_EQ(ck.info("layers.2.mlp.down_proj.weight").shape, (Shape{256, 688}));
  EXPECT_EQ(ck.info("norm.weight").shape, (Shape{256}));
  EXPECT_FALSE(ck.has("model.layers.0.self_attn.rotary_emb.inv_freq"));

  // The last row of lm_head: its stored bits and their exact fp32 values.
  const Tensor v = ck.view("lm_head.weight");
  const auto* last = v.data<std::uint16_t>() + 4095 * 256;
  EXPECT_EQ(last[0], 0x2db0);
  EXPECT_EQ(last[3], 0x2e46);
  const Tensor row = ck.read_rows_f32("lm_head.weight", 4095, 4096);
  EXPECT_EQ(row.f32()[0], 0.0888671875f);
  EXPECT_EQ(row.f32()[1], 0.06201171875f);
  EXPECT_EQ(row.f32()[2], 0.067138671875f);
  EXPECT_EQ(row.f32()[3], 0.0980224609375f);
  const Tensor k = ck.read_rows_f32("layers.3.self_attn.k_proj.weight", 127, 128);
  EXPECT_EQ(k.f32()[252], -0.0026569366455078125f);
  EXPECT_EQ(k.f32()[255], -0.01195526123046875f);

  const auto [params, max_abs] = params_and_max(ck);
  EXPECT_EQ(params, 4999424);
  EXPECT_NEAR(max_abs, 1.176f, 1e-3f);

  std::int64_t linear = 0;
  for (const auto& name : names)
    if (name.starts_with("model.layers.") && name.ends_with("proj.weight"))
      linear += shape_numel(ck.info(name).shape);
  EXPECT_EQ(linear, 2899968);
}

}  // namespace
}  // namespace scalpel::io
