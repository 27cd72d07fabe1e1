// The resumable checkpoint of a prune: one folder of per-(layer, writer) HDF5 shard files and a
// manifest.json that is replaced atomically after a layer's shards are durable. Only the manifest
// says what is committed, so a run killed at any instant resumes after its last committed layer,
// and a committed layer reads back bitwise as it was written or fails with an Error naming the file.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "scalpel/io/checkpoint_shard.hpp"
#include "scalpel/io/manifest.hpp"

namespace scalpel::io {

// What a checkpoint belongs to. Resuming checks model fingerprint, config hash and layer count;
// the grid may differ (a resume at another rank count is allowed: the files are per layer).
struct CheckpointIdentity {
  std::string model;              // path or name, for messages and humans
  std::string model_fingerprint;  // e.g. model_fingerprint(folder)
  std::string config_hash;        // of the resolved run configuration
  nlohmann::json grid = nlohmann::json::object();  // e.g. {"stages": 1, "data": 4}
  std::int64_t num_layers = 0;
  // What the hash covers, flat ({"prune.sparsity": "0.5", ...}; null: not recorded): kept so that
  // a refused resume names the keys that changed.
  nlohmann::json settings = nullptr;
};

struct CheckpointOptions {
  // Discard whatever checkpoint the folder holds and start empty (the CLI's --restart).
  bool restart = false;
  // Discard the committed layers from this one on and keep those before it (the CLI's
  // --restart-from, for a shard whose content is damaged); -1: none. Input Error past the last layer.
  std::int64_t restart_from = -1;
  // Stat every committed shard file at open; from the first layer with one missing or of another
  // size than recorded, the layers are uncommitted (a warning says which) and computed again.
  // Off: opened as recorded (a repair tool, tests).
  bool check_files = true;
  // What the files `restart` removes are, for the log line ("discarded N file(s) for --restart").
  const char* discarded = "for --restart";
};

// One tensor of a layer read back: whole (slices merged), in its stored dtype.
struct LayerTensor {
  struct Slice {
    std::int64_t row_begin = 0;
    std::int64_t row_end = 0;
    std::int64_t shard = 0;
    nlohmann::json metrics;  // the TensorRecord's metrics for this slice
  };
  std::string name;
  Tensor data;
  std::vector<std::uint8_t> packed_mask;  // whole-tensor packed mask; empty when none was written
  std::vector<Slice> slices;               // by row_begin
};

struct LayerData {
  std::int64_t layer = 0;
  std::vector<LayerTensor> tensors;            // by name
  nlohmann::json metrics;                      // given to commit_layer
  std::map<std::int64_t, nlohmann::json> shard_metrics;  // given to write_layer_shard, by shard
  const LayerTensor* find(const std::string& name) const;
  const LayerTensor& at(const std::string& name) const;  // internal Error when absent
};

// A committed layer one of whose shard files is missing or not of the size its manifest recorded
// (what a stat can tell; a read checks the content).
struct ShardDamage {
  std::int64_t layer = 0;
  std::string what;  // "<file>: shard file of committed layer L is missing" (or "has N bytes, ...")
};

// The exclusive lock a writer holds on <dir>/checkpoint.lock (flock; the file is created): the
// descriptor to close to release it, or -1 where the file system refuses flock (a warning; the
// scheduler then runs one job per folder). Input Error naming the folder when another process
// holds it.
inline constexpr const char* kCheckpointLockName = "checkpoint.lock";
int lock_checkpoint_folder(const std::filesystem::path& dir);

// The progress `scalpel depth` keeps in its checkpoint folder: a layer checkpoint is not written
// into a folder holding it (nor a depth state into one holding a manifest or a shot state).
inline constexpr const char* kDepthStateName = "depth-state.json";

// Layout of <dir>:
//   manifest.json                   the commit record (format, identity, grid, per-layer entries)
//   layer-LLLLL.shard-SSSSS.h5      one per (layer, writer); /layers/<l>/<tensor> (+ ".mask")
//   checkpoint.lock                 flock'd by the process that owns the manifest
// Multi-rank use: one rank (the manifest owner) calls open_or_create, which also removes files no
// committed layer records, and the others wait for it (a barrier) before writing. Writers call
// write_shard_file() (the free function) and send the ShardInfo (to_json) to the owner, which
// calls commit_layer once it holds every shard of the layer.
class Checkpoint {
 public:
  // Opens the checkpoint in `dir` for writing (creating the folder and manifest when absent).
  // An existing manifest must match `id` (model fingerprint, config hash, layer count): otherwise
  // an input Error says which differs and how to proceed (a new output folder, or --restart).
  // Shard files not recorded by a committed layer (an interrupted commit) and *.tmp leftovers are
  // removed, and so are those of the layers options.restart_from and damaged shards (see
  // CheckpointOptions) uncommit. The grid of this run, and the first layer discarded where one
  // was, are recorded in the manifest's "runs" history. Holds an exclusive
  // lock on <dir>/checkpoint.lock until destroyed: a second writer gets an input Error.
  static Checkpoint open_or_create(const std::filesystem::path& dir, const CheckpointIdentity& id,
                                   const CheckpointOptions& options = {});
  // Opens an existing checkpoint read-only (no lock, no cleanup, no writes): for export, tools and
  // ranks that only read. Input Error when there is no valid manifest.
  static Checkpoint open_read(const std::filesystem::path& dir);

  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

  const std::filesystem::path& dir() const { return dir_; }
  std::int64_t num_layers() const;
  bool committed(std::int64_t layer) const;
  // The lowest layer not committed (num_layers() when all are): where a resumed run starts.
  std::int64_t first_uncommitted() const;
  std::int64_t committed_count() const;
  bool complete() const;
  // The typed entry of a committed layer (internal Error otherwise).
  LayerEntry layer_entry(std::int64_t layer) const;
  // The lowest committed layer with a shard file missing or of another size than recorded (a stat
  // per file); nullopt when every one is as recorded.
  std::optional<ShardDamage> first_damaged_shard() const;
  // Files removed by open_or_create's cleanup (names inside dir), for logs and tests.
  const std::vector<std::string>& removed_files() const { return removed_; }

  // Writes this process's shard of an uncommitted layer durably (see write_shard_file); the layer
  // stays uncommitted until commit_layer. Internal Error on a committed layer (rewriting its files
  // would break the committed digests: roll it back first).
  ShardInfo write_layer_shard(std::int64_t layer, std::int64_t shard,
                              const std::vector<TensorRecord>& tensors,
                              const nlohmann::json& metrics = nullptr);
  // The commit point of a layer: checks that the shard files exist with their recorded sizes and
  // that the slices tile every tensor, then replaces the manifest atomically with the layer marked
  // committed. Internal Error if the layer is already committed or the shards are inconsistent.
  void commit_layer(std::int64_t layer, const std::vector<ShardInfo>& shards,
                    const nlohmann::json& metrics = nlohmann::json::object());
  // Reads a committed layer, checking every file and tensor against the manifest (size, HDF5
  // checksums, dtype, shape, digests) and merging row slices into whole tensors. Input Error naming
  // the file and tensor on any mismatch; input Error when the layer is not committed.
  LayerData read_layer(std::int64_t layer) const;
  // One tensor of a committed layer, checked the same way (the layer's files, its slices'
  // digests); only its own data is read. with_mask false: no mask (packed_mask stays empty).
  LayerTensor read_tensor(std::int64_t layer, const std::string& name, bool with_mask = true) const;

  // Marks the run complete (every layer must be committed) with a free-form summary.
  void mark_complete(const nlohmann::json& summary = nlohmann::json::object());
  // Sets the free-form "extra" field of the manifest.
  void set_extra(const nlohmann::json& extra);
  // Uncommits layers >= layer (manifest first, then their files are deleted), so a damaged or
  // to-be-redone suffix can be recomputed. Clears "complete", the summary and "extra" (what it
  // kept, the evaluation's progress, was of the model as it was).
  void rollback_to(std::int64_t layer);

  const nlohmann::json& manifest() const { return manifest_; }
  std::filesystem::path manifest_path() const { return dir_ / kManifestName; }

 private:
  Checkpoint() = default;
  void require_writable(const char* op) const;
  void check_layer_index(std::int64_t layer) const;
  // Opens a committed layer's shard files for `read`; an input Error it raises is reworded to
  // say what it means for the run.
  struct LayerFiles;
  void with_layer_files(std::int64_t layer, const std::function<void(const LayerFiles&)>& read) const;
  // Writes `next` durably as the manifest, then makes it the in-memory state.
  void replace_manifest(nlohmann::json next);

  std::filesystem::path dir_;
  nlohmann::json manifest_;
  bool writable_ = false;
  int lock_fd_ = -1;
  std::vector<std::string> removed_;
};

}  // namespace scalpel::io
