// A Hugging Face model folder: config.json plus model.safetensors, or a sharded
// model.safetensors.index.json with its shard files. Shards are opened on first use, so a rank
// maps only the files holding tensors it reads. Tensor names are resolved with and without the
// "model." prefix (checkpoints saved from the base model class lack it).
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "scalpel/io/safetensors.hpp"

namespace scalpel::io {

class HfCheckpoint {
 public:
  // Reads and parses config.json and the index (if any); opens no shard yet. model.safetensors
  // is preferred when both it and the index exist (as Hugging Face does). Every shard the index
  // names must exist (checked with stat, not opened), so a missing one fails here, not hours in.
  // Input Errors name the folder or file concerned.
  explicit HfCheckpoint(std::filesystem::path folder);

  const std::filesystem::path& folder() const { return folder_; }
  const nlohmann::json& config() const { return config_; }
  // True when the weights come from model.safetensors.index.json and its shards.
  bool sharded() const { return !weight_map_.empty(); }

  // The stored name for `name` (tried as given, with "model." added, with it removed), or "".
  std::string resolve(const std::string& name) const;
  bool has(const std::string& name) const { return !resolve(name).empty(); }
  // Every stored tensor name, sorted (from the index, or from the single file's header).
  std::vector<std::string> tensor_names() const;

  const TensorInfo& info(const std::string& name) const;  // input Error naming folder and tensor
  Tensor view(const std::string& name) const;             // stored dtype, zero-copy
  Tensor read_f32(const std::string& name) const;
  Tensor read_rows_f32(const std::string& name, std::int64_t r0, std::int64_t r1) const;

  // Shard files opened so far (tests check laziness with it), sorted by file name.
  std::vector<std::filesystem::path> opened_files() const;

 private:
  const SafetensorsFile& file_for(const std::string& stored_name) const;
  // Opens (once, under mu_) the shard called `file` inside the folder.
  const SafetensorsFile& open_shard(const std::string& file) const;

  std::filesystem::path folder_;
  nlohmann::json config_;
  std::map<std::string, std::string> weight_map_;  // stored name -> shard file name
  mutable std::mutex mu_;
  mutable std::map<std::string, std::shared_ptr<SafetensorsFile>> open_;  // by shard file name
};

}  // namespace scalpel::io
