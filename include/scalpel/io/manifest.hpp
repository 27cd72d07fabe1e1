// The checkpoint manifest (`manifest.json`): the single record of which layers are committed and
// what their shard files must contain, with its typed per-layer entries, their validation (a
// manifest is input: it may have been edited or damaged), and the durable-write helpers (write
// temp, fsync, rename, fsync the folder) that make replacing it the commit point.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "scalpel/io/checkpoint_shard.hpp"

namespace scalpel::io {

inline constexpr std::int64_t kCheckpointFormatVersion = 1;
inline constexpr const char* kCheckpointFormat = "scalpel-checkpoint";
inline constexpr const char* kManifestName = "manifest.json";

// A shard file of a committed layer.
struct ManifestFile {
  std::string file;  // shard_file_name(layer, shard)
  std::int64_t shard = 0;
  std::uint64_t bytes = 0;
};

// One row slice of a committed tensor, in one shard file.
struct ManifestSlice {
  std::string file;
  std::int64_t row_begin = 0;
  std::int64_t row_end = 0;
  std::string digest;
  std::string mask_digest;  // "" when the tensor has no mask
};

// A committed tensor: whole shape; its slices tile rows [0, shape[0]) in order, without gaps or
// overlaps.
struct ManifestTensor {
  DType dtype = DType::f32;
  Shape shape;
  bool mask = false;
  std::vector<ManifestSlice> slices;  // sorted by row_begin

  // The SliceInfo a ShardReader checks slice `i` against.
  SliceInfo slice_info(const std::string& name, std::size_t i) const;
};

// A committed layer's entry in manifest.json.
struct LayerEntry {
  std::int64_t layer = 0;
  std::vector<ManifestFile> files;                // sorted by shard
  std::map<std::string, ManifestTensor> tensors;  // by tensor name
  nlohmann::json metrics;                         // the layer's metrics, given at commit
  std::string time;                               // UTC commit time, ISO 8601

  nlohmann::json to_json() const;
  // Parses and validates a committed entry (input Error naming `what` and the key otherwise).
  static LayerEntry from_json(const nlohmann::json& j, std::int64_t layer, const std::string& what);
  // Builds the entry for the shards written for `layer`: every file belongs to the layer, shards
  // are distinct, each tensor's slices agree on dtype and trailing shape and tile its rows exactly,
  // and masks are on all slices or none. A violation is an internal Error (a bug in the caller)
  // and nothing is committed.
  static LayerEntry from_shards(std::int64_t layer, const std::vector<ShardInfo>& shards,
                                nlohmann::json metrics, std::string time);
};

// Checks the whole manifest document: format, version (newer than this build reads is an Error
// saying so), identity fields, layers array of num_layers entries each "pending" or a valid
// committed entry. `what` names the file in the input Errors.
void validate_manifest(const nlohmann::json& m, const std::string& what);

// Replaces `path` atomically and durably with `bytes`: `path`.tmp is written, fsync'd, renamed over
// `path`, then the folder is fsync'd. `crash_tag` prefixes the crash-test points
// ("<tag>.synced", "<tag>.renamed"). Runtime Errors name the path.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes,
                       std::string_view crash_tag);
// fsync of a file (after HDF5 closed it) or of a folder (to make a rename or unlink durable).
void fsync_path(const std::filesystem::path& path, bool directory);

// The keys whose values differ between two flat settings records (CheckpointIdentity::settings),
// as "key was → now" joined by ", " (a key absent on one side shows as "-"); empty when either is
// not an object (a checkpoint written before settings were kept) or none differs.
std::string settings_change(const nlohmann::json& was, const nlohmann::json& now);

// Current UTC time as "2024-05-01T12:34:56Z".
std::string utc_now_iso();

// The fingerprint of a Hugging Face model folder: XXH3 over config.json, the JSON headers (names,
// dtypes, shapes, offsets) of its safetensors files in file-name order, and samples of each
// tensor's bytes (all of a tensor up to 256 bytes, else four 64-byte windows from its first byte
// to its last). It reads a few KiB per tensor, not the weights: it tells apart another model or
// layout, a tensor replaced, weights trained further; not an edit confined to unsampled bytes.
// "xxh3s:" and 16 hex digits. Input Error naming the folder when config.json or a weight file is
// missing or malformed.
inline constexpr const char* kFingerprintPrefix = "xxh3s:";
std::string model_fingerprint(const std::filesystem::path& hf_folder);

// Fingerprints recorded by earlier releases ("xxh3:") covered config.json and the headers only.
inline constexpr const char* kHeaderFingerprintPrefix = "xxh3:";

// Whether the fingerprint `kept` (recorded by an earlier run, in `what`) is that of `folder`, whose
// fingerprint is `now`: equal, or an earlier release's header fingerprint equal to the folder's,
// accepted with a warning that the values could not be checked (a checkpoint made before the
// fingerprint sampled values resumes; its next write records `now`).
bool kept_model_matches(const std::string& kept, const std::string& now, const std::filesystem::path& folder,
                        const std::string& what);

// The same for an identity object whose "model" is a fingerprint (a depth state's, a trace
// estimate's): equal to `now` once an earlier release's matching fingerprint is taken as `now`'s.
bool kept_identity_matches(nlohmann::json kept, const nlohmann::json& now, const std::filesystem::path& folder,
                           const std::string& what);

}  // namespace scalpel::io
