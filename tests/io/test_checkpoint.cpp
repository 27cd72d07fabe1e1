// The resumable checkpoint: bitwise round trips (F16/BF16/F32, masks, metrics), row slices of
// several writers merged back, resume and cleanup of interrupted commits, identity checks, the
// atomic manifest (simulated crashes at every durability point), and corruption of every kind
// (Fletcher32, digest, truncation, missing file, damaged metadata) reported with file and tensor.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "scalpel/io/checkpoint.hpp"
#include "scalpel/io/shot_checkpoint.hpp"
#include "scalpel/io/safetensors.hpp"

namespace scalpel::io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::expect_input_error;
using test::read_file;
using test::TempDir;
using test::write_file;

CheckpointIdentity identity(std::int64_t layers = 4, std::string config_hash = "cfg-1") {
  return {"opt-test", "xxh3:0123456789abcdef", std::move(config_hash), {{"stages", 1}, {"data", 1}}, layers};
}

// Random values of every bit pattern class the dtype has (never zeros alone), seeded.
Tensor random_tensor(DType dtype, Shape shape, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor f = Tensor::empty(shape);
  for (std::int64_t i = 0; i < f.numel(); ++i) f.f32()[i] = (rng() % 4 == 0) ? 0.0f : normal(rng);
  if (dtype == DType::f32) return f;
  Tensor t = Tensor::empty(shape, dtype);
  convert_from_f32(dtype, f.f32(), t.raw(), static_cast<std::size_t>(f.numel()));
  return t;
}

std::vector<std::uint8_t> random_keep(std::int64_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(n));
  for (auto& k : keep) k = static_cast<std::uint8_t>(rng() & 1u);
  return keep;
}

TensorRecord record(const std::string& name, const Tensor& t, bool mask, std::uint64_t seed, json metrics = nullptr) {
  TensorRecord r;
  r.name = name;
  r.data = t;
  if (mask) r.packed_mask = pack_mask(random_keep(t.numel(), seed));
  r.metrics = std::move(metrics);
  return r;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Byte offset of `needle` inside `path` (the first occurrence), or npos.
std::size_t find_in_file(const fs::path& path, const void* needle, std::size_t n) {
  const std::string hay = read_file(path);
  return hay.find(std::string(static_cast<const char*>(needle), n));
}

void flip_byte(const fs::path& path, std::size_t offset) {
  std::string bytes = read_file(path);
  ASSERT_LT(offset, bytes.size());
  bytes[offset] = static_cast<char>(bytes[offset] ^ 0x5a);
  write_file(path, bytes);
}

std::uint64_t size_of(const fs::path& p) { return static_cast<std::uint64_t>(fs::file_size(p)); }

// One layer of two tensors written by one writer and committed; returns the records.
std::vector<TensorRecord> commit_simple_layer(Checkpoint& c, std::int64_t layer, std::uint64_t seed) {
  std::vector<TensorRecord> recs = {
      record("mlp.fc1.weight", random_tensor(DType::f32, {64, 64}, seed), true, seed + 1, {{"err", 0.5}}),
      record("self_attn.q_proj.weight", random_tensor(DType::f16, {32, 48}, seed + 2), true, seed + 3),
  };
  const ShardInfo info = c.write_layer_shard(layer, 0, recs, {{"shard_seconds", 1.25}});
  c.commit_layer(layer, {info}, {{"layer_error", 0.125 * static_cast<double>(layer)}});
  return recs;
}

// ---------------------------------------------------------------------------------------------

TEST(CheckpointMask, PackIsLsbFirstAndRoundTrips) {
  const std::vector<std::uint8_t> keep = {1, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  const auto packed = pack_mask(keep);
  ASSERT_EQ(packed.size(), 2u);
  EXPECT_EQ(packed[0], 0x01);
  EXPECT_EQ(packed[1], 0x02);
  EXPECT_EQ(unpack_mask(packed, 10), keep);
  const auto big = random_keep(1001, 7);
  EXPECT_EQ(unpack_mask(pack_mask(big), 1001), big);
  // Past 2^20 output bytes the packing runs on threads: the same bytes as one at a time.
  const auto huge = random_keep((std::int64_t{1} << 23) + 8 * 3 + 5, 8);
  std::vector<std::uint8_t> serial(packed_mask_bytes(static_cast<std::int64_t>(huge.size())), 0);
  for (std::size_t i = 0; i < huge.size(); ++i)
    if (huge[i]) serial[i >> 3] |= static_cast<std::uint8_t>(1u << (i & 7));
  EXPECT_EQ(pack_mask(huge), serial);

  // Bit copies at every destination offset agree with a bit-by-bit reference.
  const auto src = random_keep(37, 9);
  const auto psrc = pack_mask(src);
  for (std::int64_t off = 0; off < 17; ++off) {
    std::vector<std::uint8_t> dst(packed_mask_bytes(off + 37 + 5), 0);
    copy_mask_bits(psrc.data(), 37, dst.data(), off);
    const auto bits = unpack_mask(dst, off + 37 + 5);
    for (std::int64_t i = 0; i < off + 37 + 5; ++i)
      ASSERT_EQ(bits[i], (i >= off && i < off + 37) ? src[i - off] : 0) << "offset " << off << " bit " << i;
  }
}

TEST(CheckpointShard, FileNamesParseBack) {
  EXPECT_EQ(shard_file_name(12, 3), "layer-00012.shard-00003.h5");
  EXPECT_EQ(parse_shard_file_name("layer-00012.shard-00003.h5"), std::make_pair(std::int64_t{12}, std::int64_t{3}));
  EXPECT_FALSE(parse_shard_file_name("layer-00012.shard-00003.h5.tmp"));
  EXPECT_FALSE(parse_shard_file_name("layer-0012.shard-00003.h5"));
  EXPECT_FALSE(parse_shard_file_name("layer-0001x.shard-00003.h5"));
  EXPECT_FALSE(parse_shard_file_name("manifest.json"));
}

TEST(CheckpointShard, SameDataGiveSameFileBytes) {
  // No timestamps in the files: an interrupted and an uninterrupted run write identical shards.
  TempDir a, b;
  const std::vector<TensorRecord> recs = {record("w", random_tensor(DType::f16, {40, 30}, 1), true, 2, {{"e", 1}})};
  const auto ia = write_shard_file(a.path(), 3, 1, recs, {{"m", 2}});
  sleep(1);
  const auto ib = write_shard_file(b.path(), 3, 1, recs, {{"m", 2}});
  EXPECT_EQ(ia.bytes, ib.bytes);
  EXPECT_EQ(read_file(a / ia.file), read_file(b / ib.file));
  EXPECT_FALSE(fs::exists(a / (ia.file + ".tmp")));
}

TEST(CheckpointShard, ShardInfoJsonRoundTrip) {
  TempDir dir;
  TensorRecord r = record("w", random_tensor(DType::bf16, {5, 9}, 3), true, 4);
  r.row_begin = 10;
  r.row_end = 15;
  r.total_rows = 20;
  const ShardInfo info = write_shard_file(dir.path(), 0, 2, {r});
  const ShardInfo back = ShardInfo::from_json(json::parse(info.to_json().dump()), "wire");
  EXPECT_EQ(back.to_json(), info.to_json());
  ASSERT_EQ(back.slices.size(), 1u);
  EXPECT_EQ(back.slices[0].dtype, DType::bf16);
  EXPECT_EQ(back.slices[0].row_begin, 10);
  EXPECT_EQ(back.slices[0].total_rows, 20);
  expect_input_error([] { ShardInfo::from_json(json{{"layer", 1}}, "wire"); }, {"wire"});

  // The reader lists what the file holds without a manifest.
  ShardReader reader(dir / info.file, info.bytes);
  const auto listed = reader.list(0);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].digest, info.slices[0].digest);
  EXPECT_EQ(listed[0].mask_digest, info.slices[0].mask_digest);
  EXPECT_EQ(listed[0].shape, (Shape{5, 9}));
}

TEST(CheckpointShard, WriterRefusesBadRecordsAndLeavesNoFile) {
  TempDir dir;
  const Tensor t = random_tensor(DType::f32, {4, 6}, 1);
  auto expect_refused = [&](std::vector<TensorRecord> recs, const char* why) {
    SCOPED_TRACE(why);
    try {
      write_shard_file(dir.path(), 0, 0, recs);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::internal) << e.what();  // a caller's bug, not bad input
    }
    EXPECT_TRUE(fs::is_empty(dir.path()));
  };
  expect_refused({record("a/b", t, false, 0)}, "slash in name");
  expect_refused({record("", t, false, 0)}, "empty name");
  expect_refused({record("w.mask", t, false, 0)}, "mask suffix");
  expect_refused({record("w", t, false, 0), record("w", t, false, 0)}, "duplicate");
  TensorRecord short_mask = record("w", t, true, 1);
  short_mask.packed_mask.pop_back();
  expect_refused({short_mask}, "mask size");
  TensorRecord bad_rows = record("w", t, false, 0);
  bad_rows.row_begin = 2, bad_rows.row_end = 5, bad_rows.total_rows = 8;  // 3 rows for 4
  expect_refused({bad_rows}, "row range");
  EXPECT_THROW(write_shard_file(dir.path(), kMaxShardIndex + 1, 0, {}), Error);
}

TEST(Checkpoint, RoundTripIsBitwiseWithMasksAndMetrics) {
  TempDir dir;
  // 7 x 33 = 231 elements: the mask ends mid-byte.
  const std::vector<TensorRecord> recs = {
      record("self_attn.q_proj.weight", random_tensor(DType::f16, {12, 20}, 11), true, 12, {{"sparsity", 0.5}}),
      record("mlp.fc1.weight", random_tensor(DType::f32, {7, 33}, 13), true, 14, {{"err", 1e-3}}),
      record("self_attn.o_proj.weight", random_tensor(DType::bf16, {20, 12}, 15), false, 0),
      record("bias", random_tensor(DType::f32, {9}, 16), false, 0),
  };
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(3));
    EXPECT_EQ(c.first_uncommitted(), 0);
    EXPECT_FALSE(c.committed(0));
    const ShardInfo info = c.write_layer_shard(0, 0, recs, {{"seconds", 2.5}});
    EXPECT_FALSE(c.committed(0));  // durable but not committed
    c.commit_layer(0, {info}, {{"error", 0.25}, {"time_s", 3}});
    EXPECT_TRUE(c.committed(0));
    EXPECT_EQ(c.first_uncommitted(), 1);
  }
  auto check = [&](const Checkpoint& c) {
    const LayerData d = c.read_layer(0);
    EXPECT_EQ(d.layer, 0);
    EXPECT_EQ(d.metrics, (json{{"error", 0.25}, {"time_s", 3}}));
    ASSERT_EQ(d.shard_metrics.size(), 1u);
    EXPECT_EQ(d.shard_metrics.at(0), (json{{"seconds", 2.5}}));
    ASSERT_EQ(d.tensors.size(), recs.size());
    for (const auto& r : recs) {
      const LayerTensor& t = d.at(r.name);
      EXPECT_TRUE(same_bytes(t.data, r.data)) << r.name;
      EXPECT_EQ(t.packed_mask, r.packed_mask) << r.name;
      ASSERT_EQ(t.slices.size(), 1u);
      EXPECT_EQ(t.slices[0].metrics, r.metrics) << r.name;
      EXPECT_EQ(t.slices[0].row_end, r.data.rows());
    }
    EXPECT_EQ(d.find("nope"), nullptr);
  };
  check(Checkpoint::open_read(dir.path()));
  Checkpoint again = Checkpoint::open_or_create(dir.path(), identity(3));
  EXPECT_TRUE(again.removed_files().empty());
  EXPECT_EQ(again.first_uncommitted(), 1);
  check(again);

  // The manifest says what the issue asks for.
  const json& m = again.manifest();
  EXPECT_EQ(m["format_version"], kCheckpointFormatVersion);
  EXPECT_EQ(m["model"]["fingerprint"], "xxh3:0123456789abcdef");
  EXPECT_EQ(m["config_hash"], "cfg-1");
  EXPECT_EQ(m["num_layers"], 3);
  EXPECT_EQ(m["layers"][0]["status"], "committed");
  EXPECT_EQ(m["layers"][1]["status"], "pending");
  const json& q = m["layers"][0]["tensors"]["self_attn.q_proj.weight"];
  EXPECT_EQ(q["dtype"], "F16");
  EXPECT_EQ(q["shape"], (json{12, 20}));
  EXPECT_EQ(q["slices"][0]["digest"], digest_bytes(recs[0].data.raw(), recs[0].data.nbytes()));
  EXPECT_EQ(m["runs"].size(), 2u);
  again.set_extra({{"note", "from the test"}});
  EXPECT_EQ(Checkpoint::open_read(dir.path()).manifest()["extra"]["note"], "from the test");

  // A committed layer cannot be rewritten or recommitted.
  EXPECT_THROW(again.write_layer_shard(0, 0, recs), Error);
  EXPECT_THROW(again.commit_layer(0, {}), Error);
}

TEST(Checkpoint, LargeMetricsAttributeRoundTrips) {
  // Per-row error lists can pass HDF5's 64 KiB compact attribute limit.
  TempDir dir;
  json big = json::array();
  for (int i = 0; i < 20000; ++i) big.push_back(i * 0.001);
  Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(1));
  const auto info = c.write_layer_shard(0, 0, {record("w", random_tensor(DType::f32, {8, 8}, 1), false, 0, {{"rows", big}})}, {{"all", big}});
  c.commit_layer(0, {info});
  const LayerData d = c.read_layer(0);
  EXPECT_EQ(d.at("w").slices[0].metrics["rows"], big);
  EXPECT_EQ(d.shard_metrics.at(0)["all"], big);
}

TEST(Checkpoint, RowSlicesOfThreeWritersMergeToTheWholeTensor) {
  TempDir dir;
  // 13 columns: slices start mid-byte in the packed mask. 2 rows over 3 writers: one empty slice.
  const Tensor whole = random_tensor(DType::f16, {10, 13}, 21);
  const Tensor small = random_tensor(DType::f32, {2, 5}, 22);
  const Tensor other = random_tensor(DType::f32, {6, 6}, 23);
  const auto keep = random_keep(whole.numel(), 24);
  const auto packed_whole = pack_mask(keep);
  const std::int64_t cuts[] = {0, 3, 7, 10};
  const std::int64_t small_cuts[] = {0, 0, 1, 2};
  std::vector<ShardInfo> infos;
  Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2));
  for (int w = 2; w >= 0; --w) {  // any order
    TensorRecord r;
    r.name = "mlp.fc2.weight";
    r.data = whole.slice_rows(cuts[w], cuts[w + 1]).clone();
    r.packed_mask = pack_mask(std::span(keep).subspan(cuts[w] * 13, (cuts[w + 1] - cuts[w]) * 13));
    r.row_begin = cuts[w];
    r.row_end = cuts[w + 1];
    r.total_rows = 10;
    r.metrics = {{"writer", w}};
    TensorRecord s;
    s.name = "tiny";
    s.data = small.slice_rows(small_cuts[w], small_cuts[w + 1]).clone();
    s.row_begin = small_cuts[w];
    s.row_end = small_cuts[w + 1];
    s.total_rows = 2;
    std::vector<TensorRecord> recs = {r, s};
    if (w == 1) recs.push_back(record("self_attn.k_proj.weight", other, false, 0));  // a whole tensor
    infos.push_back(c.write_layer_shard(1, w, recs, {{"writer", w}}));
  }
  for (int w = 0; w < 3; ++w) EXPECT_TRUE(fs::exists(dir / shard_file_name(1, w)));

  // Incomplete or overlapping tilings are refused and commit nothing.
  EXPECT_THROW(c.commit_layer(1, {infos[0], infos[1]}), Error);
  EXPECT_FALSE(c.committed(1));
  ShardInfo overlap = infos[0];  // writer 2's [7, 10) relabelled as [6, 9)
  for (auto& s : overlap.slices)
    if (s.tensor == "mlp.fc2.weight") s.row_begin = 6, s.row_end = 9;
  EXPECT_THROW(c.commit_layer(1, {overlap, infos[1], infos[2]}), Error);
  EXPECT_FALSE(c.committed(1));
  EXPECT_THROW(c.commit_layer(1, {infos[0], infos[0], infos[1], infos[2]}), Error);  // a shard twice

  c.commit_layer(1, infos);
  const LayerData d = c.read_layer(1);
  EXPECT_TRUE(same_bytes(d.at("mlp.fc2.weight").data, whole));
  EXPECT_EQ(d.at("mlp.fc2.weight").packed_mask, packed_whole);
  EXPECT_TRUE(same_bytes(d.at("tiny").data, small));
  EXPECT_TRUE(same_bytes(d.at("self_attn.k_proj.weight").data, other));
  const auto& slices = d.at("mlp.fc2.weight").slices;
  ASSERT_EQ(slices.size(), 3u);
  for (int w = 0; w < 3; ++w) {
    EXPECT_EQ(slices[w].row_begin, cuts[w]);
    EXPECT_EQ(slices[w].shard, w);
    EXPECT_EQ(slices[w].metrics, (json{{"writer", w}}));
  }
  EXPECT_EQ(d.shard_metrics.size(), 3u);
  EXPECT_EQ(c.layer_entry(1).files.size(), 3u);

  // One tensor alone (the export's reads): the same merged bytes, the mask only when asked for.
  const LayerTensor fc2 = c.read_tensor(1, "mlp.fc2.weight");
  EXPECT_TRUE(same_bytes(fc2.data, whole));
  EXPECT_EQ(fc2.packed_mask, packed_whole);
  EXPECT_EQ(fc2.slices.size(), 3u);
  const LayerTensor bare = c.read_tensor(1, "mlp.fc2.weight", false);
  EXPECT_TRUE(same_bytes(bare.data, whole));
  EXPECT_TRUE(bare.packed_mask.empty());
  EXPECT_TRUE(same_bytes(c.read_tensor(1, "self_attn.k_proj.weight").data, other));
  expect_input_error([&] { c.read_tensor(1, "mlp.fc9.weight"); }, {"layer 1 has no tensor 'mlp.fc9.weight'"});
  expect_input_error([&] { c.read_tensor(0, "tiny"); }, {"layer 0 is not committed"});
}

TEST(Checkpoint, ResumeStartsAtFirstUncommittedAndRemovesUnrecordedFiles) {
  TempDir dir;
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(6));
    for (int l = 0; l < 3; ++l) commit_simple_layer(c, l, 100 + l);
    commit_simple_layer(c, 4, 104);  // out of order (a later stage finished first)
    // Layer 3: shards durable, commit never happened (the process died here).
    c.write_layer_shard(3, 0, {record("w", random_tensor(DType::f32, {4, 4}, 1), false, 0)});
    c.write_layer_shard(3, 1, {record("v", random_tensor(DType::f32, {4, 4}, 2), false, 0)});
    EXPECT_EQ(c.first_uncommitted(), 3);
    EXPECT_EQ(c.committed_count(), 4);
  }
  write_file(dir / "layer-00005.shard-00000.h5.tmp", "half an HDF5 file");
  write_file(dir / "manifest.json.tmp", "{\"format\": \"scalpel-che");
  write_file(dir / "layer-00099.shard-00000.h5", "a layer past the end");
  write_file(dir / "notes.txt", "not ours");

  Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(6));
  EXPECT_EQ(c.first_uncommitted(), 3);
  EXPECT_TRUE(c.committed(4));
  EXPECT_EQ(c.removed_files(), (std::vector<std::string>{"layer-00003.shard-00000.h5", "layer-00003.shard-00001.h5",
                                                         "layer-00005.shard-00000.h5.tmp",
                                                         "layer-00099.shard-00000.h5", "manifest.json.tmp"}));
  for (const auto& f : c.removed_files()) EXPECT_FALSE(fs::exists(dir / f)) << f;
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
  for (int l : {0, 1, 2, 4}) EXPECT_NO_THROW(c.read_layer(l));
  expect_input_error([&] { c.read_layer(3); }, {"layer 3 is not committed"});
  EXPECT_EQ(c.manifest()["runs"].back()["first_uncommitted"], 3);

  // Redo layer 3 (as a resumed run does) and finish.
  commit_simple_layer(c, 3, 103);
  commit_simple_layer(c, 5, 105);
  EXPECT_EQ(c.first_uncommitted(), 6);
  c.mark_complete({{"ppl", 27.5}});
  EXPECT_TRUE(c.complete());
  EXPECT_EQ(Checkpoint::open_read(dir.path()).manifest()["summary"]["ppl"], 27.5);
}

TEST(Checkpoint, IdentityMismatchSaysWhatDiffersAndHowToProceed) {
  TempDir dir;
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(4, "cfg-1"));
    commit_simple_layer(c, 0, 1);
  }
  expect_input_error([&] { Checkpoint::open_or_create(dir.path(), identity(4, "cfg-2")); },
                     {"manifest.json", "config hash cfg-1", "cfg-2", "--restart", "new output folder"});
  auto other_model = identity(4, "cfg-1");
  other_model.model = "llama-test";
  other_model.model_fingerprint = "xxh3:fedcba9876543210";
  expect_input_error([&] { Checkpoint::open_or_create(dir.path(), other_model); },
                     {"opt-test", "xxh3:0123456789abcdef", "llama-test", "xxh3:fedcba9876543210", "--restart"});
  expect_input_error([&] { Checkpoint::open_or_create(dir.path(), identity(5, "cfg-1")); }, {"4 layers", "has 5"});

  // Another grid (a resume at another rank count) is fine and recorded.
  auto wider = identity(4, "cfg-1");
  wider.grid = {{"stages", 2}, {"data", 4}};
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), wider);
    EXPECT_EQ(c.first_uncommitted(), 1);
    EXPECT_EQ(c.manifest()["grid"], wider.grid);
    EXPECT_EQ(c.manifest()["runs"].size(), 2u);
    EXPECT_EQ(c.manifest()["runs"][0]["grid"], identity().grid);
  }
  // --restart discards the old checkpoint, files included.
  CheckpointOptions restart;
  restart.restart = true;
  Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(4, "cfg-2"), restart);
  EXPECT_EQ(c.first_uncommitted(), 0);
  EXPECT_EQ(c.manifest()["config_hash"], "cfg-2");
  EXPECT_FALSE(fs::exists(dir / shard_file_name(0, 0)));
  EXPECT_EQ(c.manifest()["runs"].size(), 1u);
}

// A checkpoint without a committed layer holds no work: a run with other settings (the same job
// corrected after an input error that stopped it before its first layer) starts it afresh.
TEST(Checkpoint, OneWithoutCommittedLayersGivesWayToOtherSettings) {
  TempDir dir;
  { Checkpoint::open_or_create(dir.path(), identity(4, "cfg-1")); }
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(4, "cfg-2"));
    EXPECT_EQ(c.manifest()["config_hash"], "cfg-2");
    EXPECT_EQ(c.manifest()["runs"].size(), 1u);  // the earlier run's record went with it
    commit_simple_layer(c, 0, 1);
  }
  // Once a layer is committed, the settings are held to.
  expect_input_error([&] { Checkpoint::open_or_create(dir.path(), identity(4, "cfg-3")); }, {"config hash cfg-2"});
}

// A refused resume names the settings that changed, from the flat record the manifest keeps
// (a key only one side has shows as "-"); without records on both sides it says what it can.
TEST(Checkpoint, ARefusedResumeNamesTheChangedSettings) {
  TempDir dir;
  auto id = identity(2, "cfg-1");
  id.settings = {{"prune.sparsity", "0.5"}, {"prune.method", "sparsegpt"}, {"calibration.nsamples", "128"}};
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), id);
    commit_simple_layer(c, 0, 1);
  }
  auto other = identity(2, "cfg-2");
  other.settings = {{"prune.sparsity", "0.6"}, {"prune.method", "sparsegpt"}, {"sparsegpt.saliency", "obs"}};
  expect_input_error([&] { Checkpoint::open_or_create(dir.path(), other); },
                     {"changed: calibration.nsamples 128 -> -, prune.sparsity 0.5 -> 0.6, sparsegpt.saliency - -> obs"});
  expect_input_error([&] { Checkpoint::open_or_create(dir.path(), identity(2, "cfg-3")); },
                     {"the pruning settings changed"});
  // LLM Surgeon's shot state likewise.
  const auto state = dir.path() / "shots";
  {
    auto s = ShotCheckpoint::open_or_create(state, id, 2, false);
    s.commit_shot(1, std::vector<std::vector<TensorRecord>>(2, {record("w", random_tensor(DType::f32, {4, 6}, 7), false, 8)}));
  }
  expect_input_error([&] { ShotCheckpoint::open_or_create(state, other, 2, false); }, {"prune.sparsity 0.5 -> 0.6"});
}

// The same for LLM Surgeon's shot state: before its first shot it gives way; after, it holds.
TEST(ShotCheckpoint, OneWithoutCommittedShotsGivesWayToOtherSettings) {
  TempDir dir;
  const auto state = dir.path() / "ckpt";
  { ShotCheckpoint::open_or_create(state, identity(2, "cfg-1"), 3, false); }
  {
    auto s = ShotCheckpoint::open_or_create(state, identity(2, "cfg-2"), 4, false);
    EXPECT_EQ(s.pointer()["config_hash"], "cfg-2");
    EXPECT_EQ(s.total_shots(), 4);
    const std::vector<std::vector<TensorRecord>> layers(2,
                                                        {record("w", random_tensor(DType::f32, {4, 6}, 7), false, 8)});
    s.commit_shot(1, layers);
  }
  expect_input_error([&] { ShotCheckpoint::open_or_create(state, identity(2, "cfg-3"), 4, false); },
                     {"another configuration"});
}

// The committed shot's folder removed (or its manifest): the error says what shots.json records and
// how to go on (it said "no checkpoint here (manifest.json is missing)").
TEST(ShotCheckpoint, AMissingShotFolderIsNamedWithTheWayOn) {
  TempDir dir;
  const auto state = dir.path() / "ckpt";
  {
    auto s = ShotCheckpoint::open_or_create(state, identity(2, "cfg-1"), 3, false);
    s.commit_shot(1, std::vector<std::vector<TensorRecord>>(2, {record("w", random_tensor(DType::f32, {4, 6}, 7), false, 8)}));
  }
  fs::remove(state / "shot-00001" / "manifest.json");
  expect_input_error([&] { ShotCheckpoint::open_read(state).last(); },
                     {"shots.json records shot 1 as committed in shot-00001, which is without its manifest.json",
                      "--restart"});
  fs::remove_all(state / "shot-00001");
  expect_input_error([&] { ShotCheckpoint::open_read(state).last(); },
                     {"shot-00001, which is missing (removed?)", "--restart"});
}

// A shot's damaged shard names --restart, not --restart-from (which LLM Surgeon refuses: a shot
// is the whole model); a layer checkpoint's names --restart-from with the layer (CheckpointCorruption).
TEST(ShotCheckpoint, ADamagedShotShardNamesRestart) {
  TempDir dir;
  const auto state = dir.path() / "ckpt";
  {
    auto s = ShotCheckpoint::open_or_create(state, identity(2, "cfg-1"), 3, false);
    s.commit_shot(1, std::vector<std::vector<TensorRecord>>(2, {record("w", random_tensor(DType::f32, {4, 6}, 7), false, 8)}));
  }
  const auto shard = state / "shot-00001" / shard_file_name(1, 0);
  fs::resize_file(shard, size_of(shard) / 2);
  try {
    ShotCheckpoint::open_read(state).last().read_layer(1);
    ADD_FAILURE() << "a truncated shot shard was read";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("of the shot checkpoint"), std::string::npos) << what;
    EXPECT_NE(what.find("rerun the prune with --restart to compute the shots again"), std::string::npos) << what;
    EXPECT_EQ(what.find("--restart-from"), std::string::npos) << what;
  }
}

// The writer holds <dir>/checkpoint.lock from before it changes anything: a second writer (here,
// in the same process) is refused and the state is left as it was, --restart included; a moved
// state keeps the lock, a destroyed one releases it.
TEST(ShotCheckpoint, SecondWriterIsLockedOut) {
  TempDir dir;
  const auto state = dir.path() / "ckpt";
  auto s = ShotCheckpoint::open_or_create(state, identity(2, "cfg-1"), 3, false);
  const std::vector<std::vector<TensorRecord>> layers(2, {record("w", random_tensor(DType::f32, {4, 6}, 7), false, 8)});
  s.commit_shot(1, layers);
  for (const bool restart : {false, true})
    expect_input_error([&] { ShotCheckpoint::open_or_create(state, identity(2, "cfg-1"), 3, restart); },
                       {"another process", "checkpoint.lock"});
  EXPECT_TRUE(fs::exists(state / "shot-00001"));
  auto moved = std::move(s);
  EXPECT_THROW(ShotCheckpoint::open_or_create(state, identity(2, "cfg-1"), 3, false), Error);
  moved = ShotCheckpoint::open_read(state);
  EXPECT_EQ(ShotCheckpoint::open_or_create(state, identity(2, "cfg-1"), 3, false).last_shot(), 1);
}

TEST(Checkpoint, SecondWriterIsLockedOut) {
  TempDir dir;
  Checkpoint c = Checkpoint::open_or_create(dir.path(), identity());
  expect_input_error([&] { Checkpoint::open_or_create(dir.path(), identity()); }, {"another process", "checkpoint.lock"});
  // Readers need no lock.
  EXPECT_NO_THROW(Checkpoint::open_read(dir.path()));
  // Moving keeps the lock; destroying releases it.
  Checkpoint moved = std::move(c);
  EXPECT_THROW(Checkpoint::open_or_create(dir.path(), identity()), Error);
  moved = Checkpoint::open_read(dir.path());
  EXPECT_NO_THROW(Checkpoint::open_or_create(dir.path(), identity()));
}

TEST(Checkpoint, ReadOnlyCheckpointRefusesWrites) {
  TempDir dir;
  { Checkpoint::open_or_create(dir.path(), identity()); }
  Checkpoint r = Checkpoint::open_read(dir.path());
  EXPECT_THROW(r.write_layer_shard(0, 0, {}), Error);
  EXPECT_THROW(r.mark_complete(), Error);
  TempDir empty;
  expect_input_error([&] { Checkpoint::open_read(empty.path()); }, {"no checkpoint", "manifest.json"});
}

// A leftover manifest.json.tmp is what a crash between writing the new manifest and renaming it
// leaves: the old manifest rules, the temp is discarded, the layer it described is not committed.
TEST(Checkpoint, LeftoverManifestTmpIsIgnored) {
  TempDir dir;
  json newer;
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(3));
    commit_simple_layer(c, 0, 1);
    newer = c.manifest();
    const auto info = c.write_layer_shard(1, 0, {record("w", random_tensor(DType::f32, {4, 4}, 2), false, 0)});
    newer["layers"][1] = LayerEntry::from_shards(1, {info}, json::object(), utc_now_iso()).to_json();
  }
  write_file(dir / "manifest.json.tmp", newer.dump(2));
  Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(3));
  EXPECT_EQ(c.first_uncommitted(), 1);
  EXPECT_FALSE(fs::exists(dir / "manifest.json.tmp"));
  EXPECT_FALSE(fs::exists(dir / shard_file_name(1, 0)));
}

// Simulated crashes (an exception from the crash hook) at each durability point of a commit: the
// checkpoint on disk is always either before or after the commit, never between.
TEST(Checkpoint, CrashAtEveryDurabilityPointLeavesAConsistentCheckpoint) {
  struct Case {
    const char* point;
    bool committed_after;
  };
  for (const Case k : {Case{"shard.synced", false}, Case{"shard.renamed", false}, Case{"manifest.synced", false},
                       Case{"manifest.renamed", true}}) {
    SCOPED_TRACE(k.point);
    TempDir dir;
    std::vector<TensorRecord> recs;
    {
      Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2));
      commit_simple_layer(c, 0, 1);
      static const char* target;
      target = k.point;
      detail::set_crash_hook([](std::string_view p) {
        if (p == target) throw std::runtime_error("simulated crash");
      });
      EXPECT_THROW(commit_simple_layer(c, 1, 2), std::runtime_error);
      detail::set_crash_hook(nullptr);
    }
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2));
    EXPECT_EQ(c.committed(1), k.committed_after);
    EXPECT_NO_THROW(c.read_layer(0));
    if (k.committed_after) {
      EXPECT_NO_THROW(c.read_layer(1));
    } else {
      EXPECT_FALSE(fs::exists(dir / shard_file_name(1, 0)));
      commit_simple_layer(c, 1, 2);  // the redo succeeds
      EXPECT_NO_THROW(c.read_layer(1));
    }
    for (const auto& e : fs::directory_iterator(dir.path()))
      EXPECT_NE(e.path().extension(), ".tmp") << e.path();
  }
}

TEST(Checkpoint, DamagedManifestIsAnInputError) {
  TempDir dir;
  { Checkpoint::open_or_create(dir.path(), identity()); }
  write_file(dir / "manifest.json", "{\"format\": \"scalpel-checkpoint\", \"format_");
  expect_input_error([&] { Checkpoint::open_or_create(dir.path(), identity()); },
                     {"manifest.json", "not valid JSON", "--restart"});
  write_file(dir / "manifest.json", json{{"format", "something-else"}}.dump());
  expect_input_error([&] { Checkpoint::open_read(dir.path()); }, {"manifest.json", "not a scalpel checkpoint"});
  // A manifest from a newer format.
  {
    CheckpointOptions restart;
    restart.restart = true;
    Checkpoint::open_or_create(dir.path(), identity(), restart);
  }
  json m = json::parse(read_file(dir / "manifest.json"));
  m["format_version"] = kCheckpointFormatVersion + 1;
  write_file(dir / "manifest.json", m.dump());
  expect_input_error([&] { Checkpoint::open_read(dir.path()); }, {"newer scalpel"});
  // A committed entry whose slices do not tile the tensor.
  {
    CheckpointOptions restart;
    restart.restart = true;
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(), restart);
    commit_simple_layer(c, 0, 1);
  }
  m = json::parse(read_file(dir / "manifest.json"));
  m["layers"][0]["tensors"]["mlp.fc1.weight"]["slices"][0]["rows"] = {0, 60};
  write_file(dir / "manifest.json", m.dump());
  expect_input_error([&] { Checkpoint::open_read(dir.path()); }, {"layers[0]", "mlp.fc1.weight", "rows [60, 64)"});
}

// ---------------------------------------------------------------------------------------------
// Corruption: detected, reported with file and tensor, never returned.

class CheckpointCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2));
    recs = commit_simple_layer(c, 0, 42);
    commit_simple_layer(c, 1, 43);
    file = dir / shard_file_name(0, 0);
  }
  TempDir dir;
  std::vector<TensorRecord> recs;
  fs::path file;
};

TEST_F(CheckpointCorruption, FlippedDataByteFailsFletcher32) {
  // Row 10 of mlp.fc1.weight lies verbatim in the file (no compression): damage it there.
  const auto& fc1 = recs[0].data;
  const std::size_t at = find_in_file(file, fc1.f32() + 10 * 64, 64);
  ASSERT_NE(at, std::string::npos);
  flip_byte(file, at + 17);
  const Checkpoint c = Checkpoint::open_read(dir.path());
  expect_input_error([&] { c.read_layer(0); },
                     {file.string(), "tensor 'mlp.fc1.weight'", "Fletcher32", "corrupted", "layer 0",
                      "rerun the prune with --restart-from 0", "the layers before it are kept"});
  EXPECT_NO_THROW(c.read_layer(1));  // the other layer's file is intact
}

TEST_F(CheckpointCorruption, FlippedMaskByteFailsFletcher32) {
  const auto& mask = recs[1].packed_mask;  // q_proj's mask: 32*48/8 = 192 random bytes
  const std::size_t at = find_in_file(file, mask.data(), mask.size());
  ASSERT_NE(at, std::string::npos);
  flip_byte(file, at + 100);
  expect_input_error([&] { Checkpoint::open_read(dir.path()).read_layer(0); },
                     {file.string(), "tensor 'self_attn.q_proj.weight'", "mask", "Fletcher32"});
}

TEST_F(CheckpointCorruption, ValidFileWithOtherDataFailsTheDigest) {
  // A well-formed shard (checksums fine) with different values: only the digest can tell.
  const std::uint64_t before = size_of(file);
  std::vector<TensorRecord> other = recs;
  other[0].data = recs[0].data.clone();
  other[0].data.f32()[5] += 1.0f;
  write_shard_file(dir.path(), 0, 0, other, {{"shard_seconds", 1.25}});
  ASSERT_EQ(size_of(file), before);  // so the size check passes and the digest is what fails
  expect_input_error([&] { Checkpoint::open_read(dir.path()).read_layer(0); },
                     {file.string(), "tensor 'mlp.fc1.weight'", "digest", "differs from the committed"});
  // Read alone, as the export reads it: the same check, the same message.
  expect_input_error([&] { Checkpoint::open_read(dir.path()).read_tensor(0, "mlp.fc1.weight", false); },
                     {file.string(), "tensor 'mlp.fc1.weight'", "digest", "differs from the committed", "--restart"});
}

// A shard a stat finds damaged (truncated here) is named by a read; a resume computes its layer
// and the later ones again (they were computed from it) and keeps the layers before it.
TEST_F(CheckpointCorruption, ATruncatedShardIsRolledBackToItsLayer) {
  fs::resize_file(file, size_of(file) / 2);
  expect_input_error([&] { Checkpoint::open_read(dir.path()).read_layer(0); }, {file.string(), "truncated"});
  const auto damage = Checkpoint::open_read(dir.path()).first_damaged_shard();
  ASSERT_TRUE(damage.has_value());
  EXPECT_EQ(damage->layer, 0);
  EXPECT_EQ(damage->what, file.string() + ": shard file of committed layer 0 has " +
                              std::to_string(size_of(file)) + " bytes, the manifest recorded " +
                              std::to_string(size_of(file) * 2));
  // Opened as recorded (a repair tool): nothing changes until it rolls back.
  {
    CheckpointOptions lenient;
    lenient.check_files = false;
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2), lenient);
    EXPECT_EQ(c.committed_count(), 2);
  }
  Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2));
  EXPECT_EQ(c.first_uncommitted(), 0);
  EXPECT_EQ(c.committed_count(), 0);
  EXPECT_FALSE(fs::exists(file));
  EXPECT_FALSE(fs::exists(dir / shard_file_name(1, 0)));
  EXPECT_EQ(c.manifest()["runs"].back()["discarded_from"], 0);
  EXPECT_FALSE(c.first_damaged_shard().has_value());
}

TEST_F(CheckpointCorruption, AMissingShardCostsOnlyItsLayerAndTheLaterOnes) {
  const fs::path second = dir / shard_file_name(1, 0);
  fs::remove(second);
  expect_input_error([&] { Checkpoint::open_read(dir.path()).read_layer(1); }, {second.string(), "missing"});
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2));
    EXPECT_EQ(c.first_uncommitted(), 1);
    EXPECT_TRUE(c.committed(0));
    EXPECT_EQ(c.manifest()["runs"].back()["discarded_from"], 1);
    const LayerData d = c.read_layer(0);  // the layer before it stands, bitwise
    for (const auto& r : recs) EXPECT_TRUE(same_bytes(d.at(r.name).data, r.data)) << r.name;
    commit_simple_layer(c, 1, 43);  // computed again, as a resumed run does
    c.mark_complete();
  }
  Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2));
  EXPECT_TRUE(c.complete());
  EXPECT_FALSE(c.manifest()["runs"].back().contains("discarded_from"));
}

// --restart-from: the layers from it on are discarded with their files, the run is no longer
// complete and the evaluation progress kept for the model as it was goes; the layers before stay.
TEST_F(CheckpointCorruption, RestartFromDiscardsTheLayersFromItOn) {
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2));
    c.mark_complete({{"ppl", 30.0}});
    c.set_extra({{"evaluation", {{"config_hash", "e"}, {"done", 1}}}});
  }
  CheckpointOptions from1;
  from1.restart_from = 1;
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2), from1);
    EXPECT_TRUE(c.committed(0));
    EXPECT_FALSE(c.committed(1));
    EXPECT_FALSE(c.complete());
    EXPECT_TRUE(c.manifest()["summary"].is_null());
    EXPECT_EQ(c.manifest()["extra"], json::object());
    EXPECT_EQ(c.removed_files(), std::vector<std::string>{shard_file_name(1, 0)});
    EXPECT_TRUE(fs::exists(file));
    EXPECT_EQ(c.manifest()["runs"].back()["discarded_from"], 1);
  }
  // Again: nothing from layer 1 on is committed, nothing more goes (and none is recorded as gone).
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2), from1);
    EXPECT_TRUE(c.committed(0));
    EXPECT_TRUE(c.removed_files().empty());
    EXPECT_FALSE(c.manifest()["runs"].back().contains("discarded_from"));
  }
  // Past the last layer: refused, naming the count, and nothing changed.
  CheckpointOptions from2;
  from2.restart_from = 2;
  expect_input_error([&] { Checkpoint::open_or_create(dir.path(), identity(2), from2); },
                     {"--restart-from 2", "2 layers (0..1)"});
  EXPECT_TRUE(Checkpoint::open_read(dir.path()).committed(0));
}

// --restart-from looks only at the layers it keeps: a missing file among those it discards is no
// damage to report, one below it moves the discard down to its layer.
TEST_F(CheckpointCorruption, RestartFromLooksOnlyAtTheLayersItKeeps) {
  fs::remove(dir / shard_file_name(1, 0));
  CheckpointOptions from1;
  from1.restart_from = 1;
  {
    Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2), from1);
    EXPECT_TRUE(c.committed(0));
    EXPECT_FALSE(c.committed(1));
    EXPECT_EQ(c.manifest()["runs"].back()["discarded_from"], 1);
  }
  fs::resize_file(file, size_of(file) - 1);
  Checkpoint c = Checkpoint::open_or_create(dir.path(), identity(2), from1);
  EXPECT_EQ(c.committed_count(), 0);
  EXPECT_EQ(c.manifest()["runs"].back()["discarded_from"], 0);
  EXPECT_FALSE(fs::exists(file));
}

// The discard's manifest is written before its files go: killed just before that write nothing
// changed; just after it, the files left are unrecorded and the next opening removes them (files
// going first left a manifest whose layers from 1 on were partly removed yet still committed).
TEST_F(CheckpointCorruption, AKilledDiscardIsWholeOrNotAtAll) {
  for (const char* point : {"manifest.synced", "manifest.renamed"}) {
    SCOPED_TRACE(point);
    TempDir d;
    {
      Checkpoint c = Checkpoint::open_or_create(d.path(), identity(3));
      for (int l = 0; l < 3; ++l) commit_simple_layer(c, l, 50 + l);
    }
    static const char* target;
    target = point;
    detail::set_crash_hook([](std::string_view p) {
      if (p == target) throw std::runtime_error("simulated crash");
    });
    CheckpointOptions from1;
    from1.restart_from = 1;
    EXPECT_THROW(Checkpoint::open_or_create(d.path(), identity(3), from1), std::runtime_error);
    detail::set_crash_hook(nullptr);
    const bool renamed = std::string(point) == "manifest.renamed";
    EXPECT_EQ(fs::exists(d / shard_file_name(1, 0)), true);  // no file went before the manifest
    Checkpoint c = Checkpoint::open_or_create(d.path(), identity(3));  // the rerun, without the flag
    EXPECT_TRUE(c.committed(0));
    EXPECT_EQ(c.committed(1), !renamed);
    EXPECT_EQ(c.committed(2), !renamed);
    EXPECT_EQ(fs::exists(d / shard_file_name(2, 0)), !renamed);
    EXPECT_FALSE(c.first_damaged_shard().has_value());
  }
}

// A tensor entry deleted from the manifest by hand: the manifest still validates, but its shard
// file holds the tensor, so reading the layer (export, verify, resume) fails rather than hand back
// a layer whose missing tensor a reader would take dense from the model.
TEST_F(CheckpointCorruption, TensorTheManifestNoLongerRecordsIsReported) {
  json m = json::parse(read_file(dir / "manifest.json"));
  m["layers"][0]["tensors"].erase("mlp.fc1.weight");
  write_file(dir / "manifest.json", m.dump());
  const Checkpoint c = Checkpoint::open_read(dir.path());  // the manifest alone is consistent
  expect_input_error([&] { c.read_layer(0); },
                     {file.string(), "tensor 'mlp.fc1.weight'", "manifest does not record", "layer 0", "--restart"});
  // The export reads tensor by tensor, the others' too: the same refusal.
  expect_input_error([&] { c.read_tensor(0, "self_attn.q_proj.weight", false); },
                     {file.string(), "tensor 'mlp.fc1.weight'", "manifest does not record"});
  EXPECT_NO_THROW(c.read_layer(1));
}

TEST_F(CheckpointCorruption, DamagedMetadataIsReported) {
  // Byte 12 is inside the superblock, which the 1.10 format checksums.
  flip_byte(file, 12);
  expect_input_error([&] { Checkpoint::open_read(dir.path()).read_layer(0); },
                     {file.string(), "not a readable HDF5 checkpoint shard"});
}

TEST_F(CheckpointCorruption, AnyFlippedByteIsCaught) {
  // Every byte of the file is data, a checksum, or checksummed metadata... or unused space: flip
  // bytes across the file and require that read_layer either throws an input Error or returns
  // exactly the committed tensors (never anything else).
  const std::string pristine = read_file(file);
  std::mt19937_64 rng(5);
  int detected = 0;
  for (int trial = 0; trial < 60; ++trial) {
    std::string bytes = pristine;
    const std::size_t at = rng() % bytes.size();
    bytes[at] = static_cast<char>(bytes[at] ^ (1 + rng() % 255));
    write_file(file, bytes);
    try {
      const LayerData d = Checkpoint::open_read(dir.path()).read_layer(0);
      for (const auto& r : recs) {
        EXPECT_TRUE(same_bytes(d.at(r.name).data, r.data)) << "flip at " << at;
        EXPECT_EQ(d.at(r.name).packed_mask, r.packed_mask) << "flip at " << at;
      }
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::input) << e.what();
      EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
      ++detected;
    }
  }
  EXPECT_GT(detected, 30);  // most of a shard is checksummed data
}

TEST(CheckpointFingerprint, DependsOnConfigHeadersAndSampledValues) {
  TempDir dir;
  write_file(dir / "config.json", R"({"model_type": "opt", "num_hidden_layers": 2})");
  write_safetensors(dir / "model.safetensors", {{"w", random_tensor(DType::f32, {4, 4}, 1)}});
  const std::string a = model_fingerprint(dir.path());
  EXPECT_EQ(a.rfind("xxh3s:", 0), 0u);
  EXPECT_EQ(model_fingerprint(dir.path()), a);
  // Same shapes, other values (a model trained further, a tensor replaced): another model. Before,
  // the fingerprint covered the headers only and a checkpoint resumed onto such a model.
  write_safetensors(dir / "model.safetensors", {{"w", random_tensor(DType::f32, {4, 4}, 2)}});
  const std::string v = model_fingerprint(dir.path());
  EXPECT_NE(v, a);
  write_safetensors(dir / "model.safetensors", {{"w", random_tensor(DType::f32, {4, 5}, 2)}});
  const std::string b = model_fingerprint(dir.path());
  EXPECT_NE(b, a);
  EXPECT_NE(b, v);
  write_file(dir / "config.json", R"({"model_type": "opt", "num_hidden_layers": 3})");
  EXPECT_NE(model_fingerprint(dir.path()), b);
  TempDir empty;
  expect_input_error([&] { model_fingerprint(empty.path()); }, {"config.json"});
}

// The samples of a tensor over 256 bytes: four 64-byte windows from its first byte to its last
// (here 16 KiB: bytes 0, 5440, 10880 and 16320 on). A byte in a window changes the fingerprint;
// one between windows does not (the documented limit: a few KiB read per tensor, not the weights).
TEST(CheckpointFingerprint, SamplesFourWindowsOfALargeTensor) {
  TempDir dir;
  write_file(dir / "config.json", R"({"model_type": "opt"})");
  const auto file = dir / "model.safetensors";
  write_safetensors(file, {{"big", random_tensor(DType::f32, {64, 64}, 3)}, {"small", random_tensor(DType::f32, {3}, 4)}});
  const std::string base = model_fingerprint(dir.path());
  const auto h = SafetensorsFile::open(file)->header();
  const auto flip = [&](const std::string& tensor, std::uint64_t at) {
    std::uint64_t begin = 0;
    for (const auto& t : h.tensors)
      if (t.name == tensor) begin = h.data_start() + t.begin;
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(begin + at));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x01);
    f.seekp(static_cast<std::streamoff>(begin + at));
    f.write(&c, 1);
  };
  for (const std::uint64_t at : {0u, 5440u + 63u, 10880u, 16383u}) {
    flip("big", at);
    EXPECT_NE(model_fingerprint(dir.path()), base) << "byte " << at;
    flip("big", at);  // back
    EXPECT_EQ(model_fingerprint(dir.path()), base) << "byte " << at;
  }
  flip("big", 2000);
  EXPECT_EQ(model_fingerprint(dir.path()), base);
  flip("big", 2000);
  flip("small", 11);  // a tensor of 12 bytes is read whole
  EXPECT_NE(model_fingerprint(dir.path()), base);
}

// A fingerprint of an earlier release ("xxh3:", config.json and headers only) is taken as the
// folder's when it matches them. The value is what release 20ab05a's model_fingerprint gives
// opt-mini (the project's copy and ../shared's alike), so its checkpoints still resume.
TEST(CheckpointFingerprint, AnEarlierReleasesFingerprintStillMatchesItsModel) {
  const fs::path opt = fs::path(SCALPEL_SOURCE_DIR) / "models/opt-mini";
  if (!fs::exists(opt / "model.safetensors")) GTEST_SKIP() << opt.string() << " not found";
  const std::string now = model_fingerprint(opt);
  EXPECT_TRUE(kept_model_matches(now, now, opt, "test"));
  EXPECT_TRUE(kept_model_matches("xxh3:5fe2299b132ffc6e", now, opt, "test"));
  EXPECT_FALSE(kept_model_matches("xxh3:258cbbdd7187d4c1", now, opt, "test"));  // llama-mini's
  EXPECT_FALSE(kept_model_matches("xxh3s:5fe2299b132ffc6e", now, opt, "test"));
  // An identity object (a depth state's, a trace estimate's): the model key compared as above.
  const nlohmann::json kept{{"model", "xxh3:5fe2299b132ffc6e"}, {"seed", 0}};
  EXPECT_TRUE(kept_identity_matches(kept, {{"model", now}, {"seed", 0}}, opt, "test"));
  EXPECT_FALSE(kept_identity_matches(kept, {{"model", now}, {"seed", 1}}, opt, "test"));
}

}  // namespace
}  // namespace scalpel::io
