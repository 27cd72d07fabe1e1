// The progress of a `scalpel depth` run, kept in output.dir/<output.checkpoint>/depth-state.json
// so that a stop (SIGTERM/SIGUSR1, a first Ctrl-C), a requeue or a crash loses at most the unit
// under way: the bi/angular scores, each ppl round, each LaCo attempt, the export written, the
// evaluation sets and tasks done. The state belongs to an identity (the model's fingerprint, the
// depth, calibration and determinism settings with the windows' digest): a state of another
// identity is replaced, not refused, since trying criteria one after another in one output.dir
// is the common use. An unreadable file is a cache miss (a warning, the run starts anew). Rank 0
// reads and writes the file; every rank starts from the same copy. Private to app.
#pragma once
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "scalpel/dist/comm.hpp"
#include "scalpel/io/checkpoint.hpp"

namespace scalpel::app {

inline constexpr const char* kDepthStateFile = io::kDepthStateName;

class DepthState {
 public:
  // Reads `path` on world rank 0 and shares it; `restart` discards it (--restart). Rank 0 holds
  // the folder's checkpoint.lock until destroyed (a second run on it gets an input Error), and a
  // folder holding a prune's manifest or LLM Surgeon's state is refused (every rank throws).
  DepthState(dist::Comm& world, std::filesystem::path path, nlohmann::json identity,
             const std::filesystem::path& model, bool restart);
  ~DepthState();
  DepthState(const DepthState&) = delete;
  DepthState& operator=(const DepthState&) = delete;
  // The value kept under `key`; null when none.
  const nlohmann::json& at(const std::string& key) const;
  // Keeps `value` under `key` (null removes it) in this rank's copy; rank 0 also replaces the
  // file (atomically, creating its folder). Values every rank computes alike are kept on every
  // rank; those of rank 0's own work (the export, the evaluation count) on rank 0 alone.
  void keep(const std::string& key, nlohmann::json value);
  // Whether an earlier run's state of this identity was found.
  bool resumed() const { return resumed_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void save() const;  // rank 0: the file replaced atomically with the identity and the kept values

  std::filesystem::path path_;
  bool root_ = false, resumed_ = false;
  int lock_fd_ = -1;
  nlohmann::json identity_, kept_ = nlohmann::json::object();
};

// Doubles as JSON that keeps the non-finite ones ("inf", "-inf", "nan" strings; JSON numbers
// cannot hold them), and back. Input Error naming `what` for an entry that is neither.
nlohmann::json exact_numbers(const std::vector<double>& v);
std::vector<double> numbers_from(const nlohmann::json& j, const std::string& what);

}  // namespace scalpel::app
