// The resumable state of a multi-shot prune (LLM Surgeon): after each shot every layer changes,
// so each shot is a whole checkpoint of its own, <dir>/shot-KKKKK/ (an io::Checkpoint: HDF5 shards
// with checksums, a manifest per shot), and <dir>/shots.json names the last committed shot. That
// pointer is replaced atomically once the shot's checkpoint is complete; it is the commit point. A
// run killed at any instant resumes after the shot the pointer names; folders it does not name
// (an unfinished shot, or the one before the last commit) are removed when the state is opened
// for writing and after each commit.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "scalpel/io/checkpoint.hpp"

namespace scalpel::io {

inline constexpr const char* kShotPointerName = "shots.json";

class ShotCheckpoint {
 public:
  // Opens the state in `dir` for writing (the process that commits): creates the folder, or checks
  // that an existing pointer has the same identity (model fingerprint, config hash, layer count;
  // input Error saying which differs otherwise) and removes unreferenced shot folders. restart:
  // discard what is there. total_shots: the run's schedule, recorded and checked the same way.
  // Holds an exclusive lock on <dir>/checkpoint.lock, taken before anything in the folder changes,
  // until destroyed: a second writer gets an input Error naming the folder.
  static ShotCheckpoint open_or_create(const std::filesystem::path& dir, const CheckpointIdentity& id,
                                       std::int64_t total_shots, bool restart);
  // Opens an existing state read-only (ranks that only read, export). Input Error when the folder
  // has no valid pointer.
  static ShotCheckpoint open_read(const std::filesystem::path& dir);
  // True when `dir` holds a shot pointer (a multi-shot state rather than a layer checkpoint).
  static bool is_shot_state(const std::filesystem::path& dir);
  // True when `dir` is one shot's checkpoint inside a multi-shot state (a shot-NNNNN folder beside
  // the pointer): complete as a layer checkpoint, but only a step of the run.
  static bool is_shot_folder(const std::filesystem::path& dir);
  // Removes the state in `dir`, if any (its pointer first, then the shot folders), leaving the
  // folder's other files (a layer checkpoint's --restart in the same folder).
  static void discard(const std::filesystem::path& dir);

  std::int64_t last_shot() const { return shot_; }        // 0: nothing committed
  std::int64_t total_shots() const { return total_; }
  bool complete() const { return shot_ == total_ && total_ > 0; }
  std::filesystem::path shot_dir(std::int64_t shot) const;
  // The checkpoint of the last committed shot (input Error when none).
  Checkpoint last() const;

  // Writes shot `shot` (the next one: last_shot() + 1): tensors[layer] are the layer's records,
  // written as one shard per layer and committed with layer_metrics[layer] (when given: the
  // layer checkpoint's {"linears": {name: {"pruned", "weights"}}} that `scalpel inspect` sums),
  // then the pointer is replaced with `metrics` and the previous shot's folder removed. Internal
  // Error for any other shot number.
  // `evaluation`, when not null, goes into the pointer with the commit (the app's record of an
  // evaluation of this shot still to make; see record_evaluation).
  void commit_shot(std::int64_t shot, const std::vector<std::vector<TensorRecord>>& tensors,
                   const nlohmann::json& metrics = nlohmann::json::object(),
                   const std::vector<nlohmann::json>& layer_metrics = {},
                   const nlohmann::json& evaluation = nullptr);
  // After the last shot, once the run's export is written: the run's summary in the pointer
  // (atomically). A rerun writes it again; exported() says whether one was written.
  void record_summary(const nlohmann::json& summary);
  // Where the final evaluation stands (the app's resume state), kept in the pointer file; null
  // removes it.
  void record_evaluation(const nlohmann::json& evaluation);
  bool exported() const { return complete() && pointer_.contains("summary"); }

  const nlohmann::json& pointer() const { return pointer_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  ShotCheckpoint() = default;
  void write_pointer(nlohmann::json next);
  void remove_unreferenced() const;

  std::filesystem::path dir_;
  CheckpointIdentity id_;
  nlohmann::json pointer_;
  std::int64_t shot_ = 0, total_ = 0;
  bool writable_ = false;
  std::shared_ptr<int> lock_;  // the writer's lock on <dir>/checkpoint.lock (its descriptor)
};

}  // namespace scalpel::io
