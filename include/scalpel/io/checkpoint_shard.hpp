// One checkpoint shard file: the HDF5 file a single writer produces for one layer
// (`layer-LLLLL.shard-SSSSS.h5`), holding that writer's row slices of the layer's pruned tensors,
// their packed masks and metrics, written durably in one go; plus the digests and mask packing
// the checkpoint uses to prove that what it reads back is what was committed.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "scalpel/core/tensor.hpp"

namespace scalpel::io {

// Version of the shard file layout (root attribute "format_version").
inline constexpr std::int64_t kShardFormatVersion = 1;
// Layer and shard numbers are written with five digits in file names.
inline constexpr std::int64_t kMaxShardIndex = 99999;

// One tensor (or one row slice of it) handed to a shard writer.
struct TensorRecord {
  std::string name;  // relative to the layer, e.g. "self_attn.q_proj.weight"
  Tensor data;       // host tensor, any dtype, at least 1-D: rows [row_begin, row_end) of the whole
  // Empty, or packed_mask_bytes(data.numel()) bytes from pack_mask (padding bits zero).
  std::vector<std::uint8_t> packed_mask;
  // The rows of the whole tensor this record holds; total_rows < 0 means "the whole tensor"
  // (row_begin = 0, row_end = total_rows = data.rows()).
  std::int64_t row_begin = 0;
  std::int64_t row_end = -1;
  std::int64_t total_rows = -1;
  nlohmann::json metrics;  // per-tensor (per-slice) metrics; null writes none
};

// What a shard file holds for one tensor slice: enough to check it on read and to merge slices.
struct SliceInfo {
  std::string tensor;
  DType dtype = DType::f32;
  Shape shape;  // of the slice as stored (shape[0] = row_end - row_begin)
  std::int64_t row_begin = 0;
  std::int64_t row_end = 0;
  std::int64_t total_rows = 0;
  std::string digest;       // of the data bytes, see digest_bytes()
  std::string mask_digest;  // of the packed mask bytes; "" when the slice has no mask
};

// A shard file written durably but not yet committed: what the writer hands to the rank that
// commits the layer (as JSON when that is another rank).
struct ShardInfo {
  std::int64_t layer = 0;
  std::int64_t shard = 0;
  std::string file;         // name inside the checkpoint folder
  std::uint64_t bytes = 0;  // file size, rechecked before commit and before every read
  std::vector<SliceInfo> slices;

  nlohmann::json to_json() const;
  // Input Error naming `what` when `j` is not a ShardInfo.
  static ShardInfo from_json(const nlohmann::json& j, const std::string& what);
};

// "layer-00012.shard-00003.h5"; parse_shard_file_name inverts it exactly (nullopt otherwise).
std::string shard_file_name(std::int64_t layer, std::int64_t shard);
std::optional<std::pair<std::int64_t, std::int64_t>> parse_shard_file_name(std::string_view name);

// Digest of a byte range, "xxh3:" + 16 hex digits (XXH3-64). Not cryptographic: it guards against
// media corruption, truncation and stale files, not against an adversary.
std::string digest_bytes(const void* data, std::size_t bytes);

// Masks are packed one bit per element, row-major, least significant bit first; 1 = kept weight,
// 0 = pruned. Padding bits of the last byte are zero.
std::size_t packed_mask_bytes(std::int64_t elements);
std::vector<std::uint8_t> pack_mask(std::span<const std::uint8_t> keep);  // nonzero byte = kept
std::vector<std::uint8_t> pack_mask(const Tensor& keep);                  // u8 or boolean tensor
std::vector<std::uint8_t> unpack_mask(std::span<const std::uint8_t> packed, std::int64_t elements);
// Copies `bits` bits from `src` (starting at bit 0) into `dst` starting at bit `dst_bit`, by OR:
// the destination bits must be zero (as when assembling a whole mask from disjoint row slices).
void copy_mask_bits(const std::uint8_t* src, std::int64_t bits, std::uint8_t* dst, std::int64_t dst_bit);

// Writes `<dir>/layer-LLLLL.shard-SSSSS.h5` holding `tensors` under /layers/<layer>/<name> (masks
// at /layers/<layer>/<name>.mask), `metrics` as the layer group's "metrics" attribute. The file is
// built as `<name>.tmp`, flushed, closed, fsync'd, renamed into place and the folder fsync'd, so
// on return it is durable and a crash never leaves a partial file under the final name. Tensor
// names must be unique, non-empty, without '/', and not end in ".mask"; bad arguments are internal
// Errors, I/O failures runtime Errors naming the file. Safe to call from any rank: it knows nothing
// of the manifest (committing is the caller's next step).
ShardInfo write_shard_file(const std::filesystem::path& dir, std::int64_t layer, std::int64_t shard,
                           const std::vector<TensorRecord>& tensors,
                           const nlohmann::json& metrics = nullptr);

// Reads slices back from one shard file, checking everything against what the manifest recorded:
// file size, HDF5 structure (metadata checksums), stored dtype and shape, row range, Fletcher32 of
// every chunk, and the digest of the bytes. Any mismatch is an input Error naming the file and the
// tensor, so corrupted data are reported and never returned.
class ShardReader {
 public:
  // `expected_bytes`: the size the manifest recorded (missing or different size is an Error).
  ShardReader(std::filesystem::path path, std::optional<std::uint64_t> expected_bytes);
  ~ShardReader();
  ShardReader(ShardReader&&) noexcept;
  ShardReader& operator=(ShardReader&&) noexcept;

  const std::filesystem::path& path() const { return path_; }
  // Reads the data of `want` into dst (exactly shape_numel(want.shape) * dtype_size bytes).
  void read_data(std::int64_t layer, const SliceInfo& want, void* dst) const;
  // The packed mask of `want` (which must have a mask_digest).
  std::vector<std::uint8_t> read_mask(std::int64_t layer, const SliceInfo& want) const;
  // The "metrics" attributes (null when absent).
  nlohmann::json tensor_metrics(std::int64_t layer, const std::string& tensor) const;
  nlohmann::json shard_metrics(std::int64_t layer) const;
  // The slices stored for `layer`, described from the file's own attributes (digests as recorded
  // at write time): for tools that inspect a shard without a manifest.
  std::vector<SliceInfo> list(std::int64_t layer) const;

 private:
  struct Impl;
  std::filesystem::path path_;
  std::unique_ptr<Impl> impl_;
};

namespace detail {
// Test seam for the crash tests: when set, called at the durability points of shard and manifest
// writes ("shard.synced", "shard.renamed", "manifest.synced", "manifest.renamed") so a test
// helper can SIGKILL itself exactly there. Unset (nullptr) in production.
using CrashHook = void (*)(std::string_view point);
void set_crash_hook(CrashHook hook);
void crash_point(std::string_view point);
}  // namespace detail

}  // namespace scalpel::io
