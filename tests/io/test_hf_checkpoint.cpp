// Hugging Face folders: a model written as one file and as 3 shards + index reads back the same;
// names resolve with and without "model."; shards open lazily (and once, across threads); and
// broken folders (config, index, shards) fail with input Errors naming what is wrong.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "io_test_util.hpp"
#include "scalpel/io/hf_checkpoint.hpp"

namespace scalpel::io {
namespace {

namespace fs = std::filesystem;
using test::expect_input_error;
using test::TempDir;

Tensor filled(DType dtype, Shape shape, float seed) {
  Tensor f = Tensor::empty(shape, DType::f32);
  for (std::int64_t i = 0; i < f.numel(); ++i) f.f32()[i] = seed + 0.125f * static_cast<float>(i % 17) - 1.0f;
  Tensor t = Tensor::empty(shape, dtype);
  convert_from_f32(dtype, f.f32(), t.raw(), static_cast<std::size_t>(f.numel()));
  return t;
}

using Named = std::vector<std::pair<std::string, Tensor>>;

// A small OPT-like model: mixed dtypes, HF names, and lm_head without the "model." prefix.
Named model_tensors() {
  return {{"model.decoder.embed_tokens.weight", filled(DType::f16, {6, 4}, 0.0f)},
          {"model.decoder.layers.0.fc1.weight", filled(DType::f16, {8, 4}, 1.0f)},
          {"model.decoder.layers.0.fc1.bias", filled(DType::f32, {8}, 2.0f)},
          {"model.decoder.layers.1.fc1.weight", filled(DType::bf16, {8, 4}, 3.0f)},
          {"model.decoder.final_layer_norm.weight", filled(DType::f32, {4}, 4.0f)},
          {"lm_head.weight", filled(DType::f16, {6, 4}, 5.0f)}};
}

const char* kConfig = R"({"model_type": "opt", "hidden_size": 4, "num_hidden_layers": 2})";

std::string shard_name(int i) { return fmt::format("model-{:05d}-of-00003.safetensors", i + 1); }

// Writes `tensors` as 3 shards (2 tensors each, in order) plus model.safetensors.index.json.
void write_sharded(const fs::path& dir, const Named& tensors) {
  nlohmann::json index;
  index["metadata"] = {{"total_size", 0}};
  index["weight_map"] = nlohmann::json::object();
  for (int s = 0; s < 3; ++s) {
    Named part(tensors.begin() + 2 * s, tensors.begin() + 2 * s + 2);
    write_safetensors(dir / shard_name(s), part);
    for (const auto& [name, t] : part) index["weight_map"][name] = shard_name(s);
  }
  test::write_file(dir / "model.safetensors.index.json", index.dump(2));
}

class HfFolders : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(single_);
    fs::create_directories(sharded_);
    test::write_file(single_ / "config.json", kConfig);
    test::write_file(sharded_ / "config.json", kConfig);
    write_safetensors(single_ / "model.safetensors", model_tensors());
    write_sharded(sharded_, model_tensors());
  }
  TempDir tmp_;
  fs::path single_ = tmp_ / "single";
  fs::path sharded_ = tmp_ / "sharded";
};

TEST_F(HfFolders, ConfigIsParsed) {
  const HfCheckpoint ck(single_);
  EXPECT_EQ(ck.folder(), single_);
  EXPECT_EQ(ck.config().at("model_type"), "opt");
  EXPECT_EQ(ck.config().at("num_hidden_layers"), 2);
  EXPECT_FALSE(ck.sharded());
  EXPECT_TRUE(HfCheckpoint(sharded_).sharded());
}

TEST_F(HfFolders, ShardedReadsBackIdenticallyToSingleFile) {
  const HfCheckpoint one(single_), three(sharded_);
  const auto names = one.tensor_names();
  ASSERT_EQ(names.size(), 6u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(three.tensor_names(), names);
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    const auto &a = one.info(name), &b = three.info(name);
    EXPECT_EQ(a.name, name);
    EXPECT_EQ(b.name, name);
    EXPECT_EQ(a.dtype, b.dtype);
    EXPECT_EQ(a.shape, b.shape);
    const Tensor va = one.view(name), vb = three.view(name);
    ASSERT_EQ(va.nbytes(), vb.nbytes());
    EXPECT_EQ(std::memcmp(va.raw(), vb.raw(), va.nbytes()), 0);
    const Tensor fa = one.read_f32(name), fb = three.read_f32(name);
    ASSERT_EQ(fa.shape(), fb.shape());
    EXPECT_EQ(std::memcmp(fa.raw(), fb.raw(), fa.nbytes()), 0);
    const Tensor ra = one.read_rows_f32(name, 1, 3), rb = three.read_rows_f32(name, 1, 3);
    EXPECT_EQ(std::memcmp(ra.raw(), rb.raw(), ra.nbytes()), 0);
  }
  // And both match what was written.
  for (const auto& [name, t] : model_tensors()) {
    const Tensor v = three.view(name);
    EXPECT_EQ(v.dtype(), t.dtype());
    EXPECT_EQ(std::memcmp(v.raw(), t.raw(), t.nbytes()), 0) << name;
  }
}

TEST_F(HfFolders, NamesResolveWithAndWithoutModelPrefix) {
  for (const auto& dir : {single_, sharded_}) {
    SCOPED_TRACE(dir.string());
    const HfCheckpoint ck(dir);
    // As given.
    EXPECT_EQ(ck.resolve("model.decoder.layers.0.fc1.weight"), "model.decoder.layers.0.fc1.weight");
    EXPECT_EQ(ck.resolve("lm_head.weight"), "lm_head.weight");
    // "model." added (names from a base-model class lack it).
    EXPECT_EQ(ck.resolve("decoder.layers.0.fc1.weight"), "model.decoder.layers.0.fc1.weight");
    // "model." removed (lm_head sits outside the base model).
    EXPECT_EQ(ck.resolve("model.lm_head.weight"), "lm_head.weight");
    EXPECT_EQ(ck.resolve("decoder.nope"), "");
    // One prefix is added or removed, never more.
    EXPECT_EQ(ck.resolve("model.model.decoder.layers.0.fc1.weight"), "model.decoder.layers.0.fc1.weight");
    EXPECT_FALSE(ck.has("model.model.lm_head.weight"));
    EXPECT_TRUE(ck.has("decoder.final_layer_norm.weight"));
    // Reads through either spelling give the same tensor.
    EXPECT_EQ(ck.info("decoder.layers.1.fc1.weight").name, "model.decoder.layers.1.fc1.weight");
    const Tensor a = ck.read_f32("model.lm_head.weight"), b = ck.read_f32("lm_head.weight");
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  }
}

TEST_F(HfFolders, ShardsOpenLazily) {
  const HfCheckpoint ck(sharded_);
  EXPECT_TRUE(ck.opened_files().empty());
  // Names come from the index alone.
  EXPECT_EQ(ck.tensor_names().size(), 6u);
  EXPECT_TRUE(ck.has("decoder.layers.0.fc1.bias"));
  EXPECT_TRUE(ck.opened_files().empty());

  // Tensors 2 and 3 (0-based) live in the second shard.
  ck.read_rows_f32("model.decoder.layers.0.fc1.bias", 0, 2);
  ASSERT_EQ(ck.opened_files(), std::vector<fs::path>{sharded_ / shard_name(1)});
  ck.view("model.decoder.layers.1.fc1.weight");
  EXPECT_EQ(ck.opened_files().size(), 1u);
  ck.info("lm_head.weight");
  EXPECT_EQ(ck.opened_files(),
            (std::vector<fs::path>{sharded_ / shard_name(1), sharded_ / shard_name(2)}));
}

TEST_F(HfFolders, SingleFileOpensOnFirstUse) {
  const HfCheckpoint ck(single_);
  EXPECT_TRUE(ck.opened_files().empty());
  ck.read_f32("lm_head.weight");
  EXPECT_EQ(ck.opened_files(), std::vector<fs::path>{single_ / "model.safetensors"});
}

TEST_F(HfFolders, ConcurrentReadersOpenEachShardOnce) {
  const HfCheckpoint ck(sharded_);
  const auto names = ck.tensor_names();
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&, i] {
      for (std::size_t k = 0; k < names.size(); ++k) {
        const auto& name = names[(k + static_cast<std::size_t>(i)) % names.size()];
        if (ck.read_f32(name).numel() == shape_numel(ck.info(name).shape))
          ++ok[i];
      }
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(ok[i], 6);
  EXPECT_EQ(ck.opened_files().size(), 3u);
}

TEST_F(HfFolders, PrefersSingleFileWhenBothExist) {
  write_safetensors(sharded_ / "model.safetensors", {{"only.here", filled(DType::f32, {2}, 0)}});
  const HfCheckpoint ck(sharded_);
  EXPECT_FALSE(ck.sharded());
  EXPECT_EQ(ck.tensor_names(), std::vector<std::string>{"only.here"});
}

TEST_F(HfFolders, MissingTensorNamesTensorAndFolder) {
  for (const auto& dir : {single_, sharded_}) {
    const HfCheckpoint ck(dir);
    expect_input_error([&] { ck.info("decoder.layers.9.fc1.weight"); },
                       {"'decoder.layers.9.fc1.weight'", dir.string(), "not found"});
    expect_input_error([&] { ck.read_f32("nope"); }, {"'nope'", dir.string()});
  }
}

TEST_F(HfFolders, MissingFolder) {
  expect_input_error([&] { HfCheckpoint ck(tmp_ / "absent"); }, {(tmp_ / "absent").string()});
}

TEST_F(HfFolders, MissingConfig) {
  fs::remove(single_ / "config.json");
  expect_input_error([&] { HfCheckpoint ck(single_); }, {single_.string(), "config.json"});
}

TEST_F(HfFolders, MalformedConfig) {
  test::write_file(single_ / "config.json", "{\"model_type\": \"opt\",");
  expect_input_error([&] { HfCheckpoint ck(single_); },
                     {(single_ / "config.json").string(), "not valid JSON"});
  test::write_file(single_ / "config.json", "[1]");
  expect_input_error([&] { HfCheckpoint ck(single_); },
                     {(single_ / "config.json").string(), "not an object"});
}

TEST_F(HfFolders, NeitherWeightsFileNorIndex) {
  fs::remove(single_ / "model.safetensors");
  expect_input_error([&] { HfCheckpoint ck(single_); },
                     {single_.string(), "model.safetensors", "model.safetensors.index.json"});
}

TEST_F(HfFolders, MissingShardFile) {
  fs::remove(sharded_ / shard_name(2));
  expect_input_error([&] { HfCheckpoint ck(sharded_); },
                     {(sharded_ / shard_name(2)).string(), "model.safetensors.index.json",
                      "does not exist"});
}

TEST_F(HfFolders, IndexNamesTensorTheShardLacks) {
  const auto index_path = sharded_ / "model.safetensors.index.json";
  auto index = nlohmann::json::parse(test::read_file(index_path));
  index["weight_map"]["model.decoder.ghost.weight"] = shard_name(0);
  test::write_file(index_path, index.dump());
  const HfCheckpoint ck(sharded_);
  EXPECT_TRUE(ck.has("decoder.ghost.weight"));  // the index says so...
  expect_input_error([&] { ck.info("decoder.ghost.weight"); },  // ...the shard disagrees
                     {index_path.string(), "'model.decoder.ghost.weight'", shard_name(0)});
  // Other tensors of that shard are unaffected.
  EXPECT_EQ(ck.read_f32("lm_head.weight").shape(), (Shape{6, 4}));
}

TEST_F(HfFolders, MalformedIndex) {
  const auto index_path = sharded_ / "model.safetensors.index.json";
  const std::string where = index_path.string();
  test::write_file(index_path, "{\"weight_map\": ");
  expect_input_error([&] { HfCheckpoint ck(sharded_); }, {where, "not valid JSON"});
  test::write_file(index_path, R"({"metadata": {}})");
  expect_input_error([&] { HfCheckpoint ck(sharded_); }, {where, "weight_map"});
  test::write_file(index_path, R"({"weight_map": []})");
  expect_input_error([&] { HfCheckpoint ck(sharded_); }, {where, "weight_map", "not an object"});
  test::write_file(index_path, R"({"weight_map": {}})");
  expect_input_error([&] { HfCheckpoint ck(sharded_); }, {where, "empty"});
  test::write_file(index_path, R"({"weight_map": {"a": 3}})");
  expect_input_error([&] { HfCheckpoint ck(sharded_); }, {where, "'a'", "not a string"});
  test::write_file(index_path, R"({"weight_map": {"a": "../single/model.safetensors"}})");
  expect_input_error([&] { HfCheckpoint ck(sharded_); }, {where, "'a'", "not a file inside"});
  test::write_file(index_path, R"({"weight_map": {"a": "/etc/passwd"}})");
  expect_input_error([&] { HfCheckpoint ck(sharded_); }, {where, "'a'", "not a file inside"});
}

TEST_F(HfFolders, CorruptShardFailsWhenUsedNamingTheShard) {
  test::write_file(sharded_ / shard_name(0), "garbage");
  const HfCheckpoint ck(sharded_);  // not opened yet, so not noticed yet
  EXPECT_EQ(ck.read_f32("decoder.layers.1.fc1.weight").shape(), (Shape{8, 4}));
  expect_input_error([&] { ck.view("decoder.embed_tokens.weight"); },
                     {(sharded_ / shard_name(0)).string(), "shorter than"});
  // The failed open leaves no trace in opened_files, and a retry fails the same way.
  EXPECT_EQ(ck.opened_files(), std::vector<fs::path>{sharded_ / shard_name(1)});
  expect_input_error([&] { ck.view("decoder.embed_tokens.weight"); }, {shard_name(0)});
}

}  // namespace
}  // namespace scalpel::io
