// safetensors files, read lazily through a memory map: opening parses and validates only the
// header; a tensor's bytes are touched when (and only where) a caller reads them, so a model
// larger than RAM can be walked layer by layer and a rank reads only the row slices it uses.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "scalpel/core/tensor.hpp"

namespace scalpel::io {

struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets into the data section (after the header)
  std::uint64_t end = 0;
};

struct SafetensorsHeader {
  std::uint64_t header_bytes = 0;  // length of the JSON header
  std::vector<TensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;

  // Offset of the data section from the start of the file (8 + header_bytes).
  std::uint64_t data_start() const { return 8 + header_bytes; }
};

// Headers longer than this are rejected as malformed before any JSON is parsed (the largest real
// checkpoints have headers of a few hundred KiB; the reference implementation uses the same cap).
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// Parses and validates the header of a complete safetensors file held in `file`: header length
// inside the file, valid JSON object, known dtypes, shape x dtype == byte range, ranges inside the
// data section and not overlapping. `what` names the file in error messages. Throws an input Error.
// Safe on arbitrary bytes (fuzzed).
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, const std::string& what);

class SafetensorsFile {
 public:
  // Maps the file read-only and validates its header (input Error naming the path otherwise).
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  std::size_t file_bytes() const { return size_; }
  const TensorInfo* find(std::string_view name) const;  // nullptr when absent
  const TensorInfo& info(std::string_view name) const;  // input Error naming file and tensor

  // Zero-copy view over the map, in the stored dtype (keeps the map alive). The map is read-only:
  // writing through the view faults, so clone() it before modifying. The data are as aligned as
  // the file places them (the data section starts 8-byte aligned in files from write_safetensors
  // and Hugging Face); read_rows_f32/read_f32 cope with any alignment.
  Tensor view(std::string_view name) const;
  // Rows [r0, r1) along dim 0, converted to fp32 (copies only those bytes). Float dtypes only
  // (F32, F16, BF16, F64); anything else, or rows outside [0, rows], is an input Error.
  Tensor read_rows_f32(std::string_view name, std::int64_t r0, std::int64_t r1) const;
  Tensor read_f32(std::string_view name) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  std::shared_ptr<void> map_;  // the mapping; unmapped when the last view is gone
  const std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  SafetensorsHeader header_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

// Writes a safetensors file (tensors in the given order, 8-byte aligned header, __metadata__).
// Written to `path`.tmp, fsync'd, then renamed, so a crash never leaves a partial file at `path`.
// Tensors must be host tensors with distinct names; an empty `metadata` writes no __metadata__.
// I/O failures are runtime Errors naming the path.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace scalpel::io
