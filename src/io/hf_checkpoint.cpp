// Hugging Face model folders: config.json, then either one model.safetensors or an index that maps
// tensor names to shard files. Shards are mapped on first use, so a rank touches only the files
// holding the layers it prunes.
#include "scalpel/io/hf_checkpoint.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "scalpel/core/error.hpp"

namespace scalpel::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

json read_json_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  SCALPEL_CHECK_INPUT(in, "{}: cannot open (missing or unreadable)", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: not valid JSON: {}", path.string(), e.what());
  }
}

// A shard name from an index must stay inside the folder: an index is input, and "../x" or an
// absolute path would let it point anywhere on the filesystem.
bool plain_relative(const std::string& file) {
  const fs::path p(file);
  if (file.empty() || p.is_absolute()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  return true;
}

}  // namespace

HfCheckpoint::HfCheckpoint(fs::path folder) : folder_(std::move(folder)) {
  const std::string where = folder_.string();
  SCALPEL_CHECK_INPUT(fs::is_directory(folder_), "{}: not a model folder ({})", where,
                      fs::exists(folder_) ? "it is a file; name the folder that holds config.json" : "no such directory");

  const fs::path config_path = folder_ / "config.json";
  SCALPEL_CHECK_INPUT(fs::exists(config_path), "{}: missing config.json", where);
  config_ = read_json_file(config_path);
  SCALPEL_CHECK_INPUT(config_.is_object(), "{}: is a JSON {}, not an object", config_path.string(),
                      config_.type_name());

  if (fs::exists(folder_ / kSingleFile)) return;  // its header is read on first use

  const fs::path index_path = folder_ / kIndexFile;
  SCALPEL_CHECK_INPUT(fs::exists(index_path), "{}: neither {} nor {} found", where, kSingleFile,
                      kIndexFile);
  const std::string index_what = index_path.string();
  const json index = read_json_file(index_path);
  SCALPEL_CHECK_INPUT(index.is_object(), "{}: is a JSON {}, not an object", index_what,
                      index.type_name());
  const auto wm = index.find("weight_map");
  SCALPEL_CHECK_INPUT(wm != index.end(), "{}: has no \"weight_map\"", index_what);
  SCALPEL_CHECK_INPUT(wm->is_object(), "{}: \"weight_map\" is a {}, not an object", index_what,
                      wm->type_name());
  SCALPEL_CHECK_INPUT(!wm->empty(), "{}: \"weight_map\" is empty", index_what);
  std::map<std::string, std::string> first_tensor;  // shard -> a tensor it holds, for messages
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    SCALPEL_CHECK_INPUT(it.value().is_string(), "{}: weight_map entry for '{}' is a {}, not a string",
                        index_what, it.key(), it.value().type_name());
    const auto& file = it.value().get_ref<const std::string&>();
    SCALPEL_CHECK_INPUT(plain_relative(file),
                        "{}: weight_map entry for '{}' names '{}', which is not a file inside {}",
                        index_what, it.key(), file, where);
    weight_map_.emplace(it.key(), file);
    first_tensor.emplace(file, it.key());
  }
  for (const auto& [file, tensor] : first_tensor)
    SCALPEL_CHECK_INPUT(fs::is_regular_file(folder_ / file),
                        "{}: shard file {} (named by {} for tensor '{}') does not exist",
                        where, (folder_ / file).string(), index_what, tensor);
}

std::string HfCheckpoint::resolve(const std::string& name) const {
  static const std::string kPrefix = "model.";
  const auto stored = [&](const std::string& n) {
    if (sharded()) return weight_map_.count(n) > 0;
    return open_shard(kSingleFile).find(n) != nullptr;
  };
  if (stored(name)) return name;
  if (stored(kPrefix + name)) return kPrefix + name;
  if (name.starts_with(kPrefix) && stored(name.substr(kPrefix.size())))
    return name.substr(kPrefix.size());
  return "";
}

std::vector<std::string> HfCheckpoint::tensor_names() const {
  std::vector<std::string> names;
  if (sharded()) {
    for (const auto& [name, file] : weight_map_) names.push_back(name);  // std::map: sorted
  } else {
    for (const auto& t : open_shard(kSingleFile).header().tensors) names.push_back(t.name);
    std::sort(names.begin(), names.end());
  }
  return names;
}

const SafetensorsFile& HfCheckpoint::open_shard(const std::string& file) const {
  std::lock_guard lock(mu_);
  auto& slot = open_[file];
  if (!slot) {
    try {
      slot = SafetensorsFile::open(folder_ / file);
    } catch (...) {
      open_.erase(file);  // leave no empty slot behind: opened_files() lists only mapped files
      throw;
    }
  }
  return *slot;
}

const SafetensorsFile& HfCheckpoint::file_for(const std::string& stored_name) const {
  if (!sharded()) return open_shard(kSingleFile);
  const auto it = weight_map_.find(stored_name);
  SCALPEL_CHECK(it != weight_map_.end(), "'{}' is not in the weight map", stored_name);
  const SafetensorsFile& f = open_shard(it->second);
  SCALPEL_CHECK_INPUT(f.find(stored_name),
                      "{}: maps tensor '{}' to shard {}, but {} has no such tensor",
                      (folder_ / kIndexFile).string(), stored_name, it->second, f.path().string());
  return f;
}

const TensorInfo& HfCheckpoint::info(const std::string& name) const {
  const std::string stored = resolve(name);
  SCALPEL_CHECK_INPUT(!stored.empty(), "tensor '{}' not found in {} (tried with and without the "
                      "\"model.\" prefix)", name, folder_.string());
  return file_for(stored).info(stored);
}

Tensor HfCheckpoint::view(const std::string& name) const {
  const auto& t = info(name);
  return file_for(t.name).view(t.name);
}

Tensor HfCheckpoint::read_f32(const std::string& name) const {
  const auto& t = info(name);
  return file_for(t.name).read_f32(t.name);
}

Tensor HfCheckpoint::read_rows_f32(const std::string& name, std::int64_t r0, std::int64_t r1) const {
  const auto& t = info(name);
  return file_for(t.name).read_rows_f32(t.name, r0, r1);
}

std::vector<fs::path> HfCheckpoint::opened_files() const {
  std::lock_guard lock(mu_);
  std::vector<fs::path> out;
  for (const auto& [file, f] : open_) out.push_back(f->path());
  return out;
}

}  // namespace scalpel::io
