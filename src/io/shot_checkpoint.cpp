// Multi-shot checkpoint state (see shot_checkpoint.hpp): one io::Checkpoint per shot under a
// pointer file replaced atomically.
#include "scalpel/io/shot_checkpoint.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "scalpel/core/error.hpp"
#include "scalpel/io/manifest.hpp"

namespace fs = std::filesystem;

namespace scalpel::io {
namespace {

constexpr const char* kFormat = "scalpel-shots";

nlohmann::json read_pointer(const fs::path& file) {
  std::ifstream in(file);
  if (!in) SCALPEL_INPUT_ERROR("{}: cannot read the shot pointer", file.string());
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: malformed JSON ({})", file.string(), e.what());
  }
  const bool ok = j.is_object() && j.value("format", "") == kFormat && j.contains("shot") &&
                  j["shot"].is_number_integer() && j.contains("total_shots") && j["total_shots"].is_number_integer() &&
                  j.contains("model_fingerprint") && j.contains("config_hash") && j.contains("num_layers");
  if (!ok) SCALPEL_INPUT_ERROR("{}: not a scalpel shot pointer (format, shot, total_shots, identity)", file.string());
  if (j["shot"].get<std::int64_t>() < 0 || j["shot"].get<std::int64_t>() > j["total_shots"].get<std::int64_t>())
    SCALPEL_INPUT_ERROR("{}: shot {} outside 0..{}", file.string(), j["shot"].get<std::int64_t>(),
                        j["total_shots"].get<std::int64_t>());
  return j;
}

std::string shot_name(std::int64_t shot) { return fmt::format("shot-{:05d}", shot); }

// The shot folders in `dir` but `keep` ("" for none).
void remove_shot_folders(const fs::path& dir, const std::string& keep) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (e.is_directory() && name.rfind("shot-", 0) == 0 && name != keep) fs::remove_all(e.path());
  }
}

// True when `dir` holds nothing but a lock file (a run stopped before its first pointer).
bool only_lock_file(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename() != kCheckpointLockName) return false;
  return true;
}

// --restart: everything in `dir` but the lock this process holds.
void remove_all_but_lock(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename() != kCheckpointLockName) fs::remove_all(e.path());
}

}  // namespace

bool ShotCheckpoint::is_shot_state(const fs::path& dir) { return fs::exists(dir / kShotPointerName); }

bool ShotCheckpoint::is_shot_folder(const fs::path& dir) {
  const fs::path d = dir.lexically_normal().filename().empty() ? dir.lexically_normal().parent_path()
                                                                : dir.lexically_normal();
  return d.filename().string().rfind("shot-", 0) == 0 && is_shot_state(d.parent_path().empty() ? "." : d.parent_path());
}

fs::path ShotCheckpoint::shot_dir(std::int64_t shot) const { return dir_ / shot_name(shot); }

ShotCheckpoint ShotCheckpoint::open_read(const fs::path& dir) {
  ShotCheckpoint s;
  s.dir_ = dir;
  s.pointer_ = read_pointer(dir / kShotPointerName);
  s.shot_ = s.pointer_["shot"].get<std::int64_t>();
  s.total_ = s.pointer_["total_shots"].get<std::int64_t>();
  return s;
}

ShotCheckpoint ShotCheckpoint::open_or_create(const fs::path& dir, const CheckpointIdentity& id,
                                              std::int64_t total_shots, bool restart) {
  SCALPEL_CHECK(total_shots >= 1, "{} shots", total_shots);
  if (!restart && fs::is_directory(dir) && !only_lock_file(dir) && !is_shot_state(dir))
    SCALPEL_INPUT_ERROR("{}: holds something else than a multi-shot state (no {}); use another output.dir or "
                        "--restart", dir.string(), kShotPointerName);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) SCALPEL_RUNTIME_ERROR("{}: cannot create the checkpoint folder: {}", dir.string(), ec.message());
  ShotCheckpoint s;
  // Before anything in the folder changes: a second run writing the same state stops here.
  const int fd = lock_checkpoint_folder(dir);
  s.lock_ = std::shared_ptr<int>(new int(fd), [](int* p) {
    if (*p >= 0) ::close(*p);  // releases the flock
    delete p;
  });
  if (restart) remove_all_but_lock(dir);
  s.dir_ = dir;
  s.id_ = id;
  s.total_ = total_shots;
  s.writable_ = true;
  if (is_shot_state(dir)) s.pointer_ = read_pointer(dir / kShotPointerName);
  // A state with no shot committed holds no work: a run with other settings starts it afresh.
  if (!s.pointer_.is_null() && s.pointer_["shot"].get<std::int64_t>() > 0) {
    const auto& p = s.pointer_;
    const auto differs = [&](const std::string& what) {
      SCALPEL_INPUT_ERROR("{}: the checkpoint was made with another {} than this run; use another output.dir, or "
                          "--restart to discard it", dir.string(), what);
    };
    if (!p["model_fingerprint"].is_string() ||
        !kept_model_matches(p["model_fingerprint"].get<std::string>(), id.model_fingerprint, id.model,
                            (dir / kShotPointerName).string()))
      differs("model");
    if (p["config_hash"] != id.config_hash) {
      const auto changed = settings_change(p.value("settings", nlohmann::json()), id.settings);
      differs(changed.empty() ? "configuration (prune, surgeon, calibration or determinism settings)"
                              : "configuration (changed: " + changed + ")");
    }
    if (p["num_layers"].get<std::int64_t>() != id.num_layers) differs("layer count");
    if (p["total_shots"].get<std::int64_t>() != total_shots) differs("number of shots");
    s.shot_ = p["shot"].get<std::int64_t>();
    s.pointer_["model_fingerprint"] = id.model_fingerprint;  // an earlier release's, accepted: now with values
  } else {
    s.write_pointer({{"format", kFormat}, {"version", 1}, {"model", id.model},
                     {"model_fingerprint", id.model_fingerprint}, {"config_hash", id.config_hash},
                     {"settings", id.settings},
                     {"num_layers", id.num_layers}, {"total_shots", total_shots}, {"shot", 0},
                     {"grid", id.grid}, {"history", nlohmann::json::array()}});
  }
  s.remove_unreferenced();
  return s;
}

Checkpoint ShotCheckpoint::last() const {
  if (shot_ == 0) SCALPEL_INPUT_ERROR("{}: no shot committed yet", dir_.string());
  // The folder of the committed shot, removed or emptied since: said as such (it read "no
  // checkpoint here (manifest.json is missing)", with no way on).
  const fs::path last = shot_dir(shot_);
  std::error_code ec;
  if (!fs::exists(last / kManifestName, ec))
    SCALPEL_INPUT_ERROR("{}: {} records shot {} as committed in {}, which is {}; rerun with --restart (or into a new "
                        "output folder) to compute the shots again",
                        dir_.string(), kShotPointerName, shot_, last.filename().string(),
                        fs::exists(last, ec) ? "without its manifest.json (damaged?)" : "missing (removed?)");
  return Checkpoint::open_read(last);
}

void ShotCheckpoint::write_pointer(nlohmann::json next) {
  write_file_atomic(dir_ / kShotPointerName, next.dump(2) + "\n", "shots");
  pointer_ = std::move(next);
}

void ShotCheckpoint::remove_unreferenced() const { remove_shot_folders(dir_, shot_ > 0 ? shot_name(shot_) : ""); }

void ShotCheckpoint::discard(const fs::path& dir) {
  if (!is_shot_state(dir)) return;
  fs::remove(dir / kShotPointerName);  // the commit point first: nothing is committed after it
  fsync_path(dir, true);
  remove_shot_folders(dir, "");
}

void ShotCheckpoint::commit_shot(std::int64_t shot, const std::vector<std::vector<TensorRecord>>& tensors,
                                 const nlohmann::json& metrics, const std::vector<nlohmann::json>& layer_metrics,
                                 const nlohmann::json& evaluation) {
  SCALPEL_CHECK(writable_, "shot checkpoint {} opened read-only", dir_.string());
  SCALPEL_CHECK(shot == shot_ + 1 && shot <= total_, "commit of shot {} after shot {} (of {})", shot, shot_, total_);
  SCALPEL_CHECK(static_cast<std::int64_t>(tensors.size()) == id_.num_layers, "{} layers for {}", tensors.size(),
                id_.num_layers);
  CheckpointIdentity id = id_;
  id.config_hash = fmt::format("{}/shot-{}", id_.config_hash, shot);
  CheckpointOptions opt;
  opt.restart = true;  // a leftover of an interrupted attempt at this shot
  opt.discarded = "of an interrupted attempt at this shot";
  auto ck = Checkpoint::open_or_create(shot_dir(shot), id, opt);
  for (std::int64_t l = 0; l < id_.num_layers; ++l) {
    const auto info = ck.write_layer_shard(l, 0, tensors[static_cast<std::size_t>(l)]);
    const auto li = static_cast<std::size_t>(l);
    ck.commit_layer(l, {info}, li < layer_metrics.size() ? layer_metrics[li] : nlohmann::json::object());
  }
  ck.mark_complete(metrics);
  nlohmann::json next = pointer_;
  next["shot"] = shot;
  next["history"].push_back({{"shot", shot}, {"committed", utc_now_iso()}, {"metrics", metrics}});
  next.erase("summary");  // a summary belongs to the state with every shot
  if (!evaluation.is_null()) next["evaluation"] = evaluation;
  write_pointer(std::move(next));  // the commit point
  shot_ = shot;
  remove_unreferenced();
}

void ShotCheckpoint::record_evaluation(const nlohmann::json& evaluation) {
  SCALPEL_CHECK(writable_, "shot checkpoint {} opened read-only", dir_.string());
  nlohmann::json next = pointer_;
  if (evaluation.is_null()) next.erase("evaluation");
  else next["evaluation"] = evaluation;
  write_pointer(std::move(next));
}

void ShotCheckpoint::record_summary(const nlohmann::json& summary) {
  SCALPEL_CHECK(writable_, "shot checkpoint {} opened read-only", dir_.string());
  SCALPEL_CHECK(complete(), "summary of {} before its last shot ({} of {})", dir_.string(), shot_, total_);
  nlohmann::json next = pointer_;
  next["summary"] = summary;
  write_pointer(std::move(next));
}

}  // namespace scalpel::io
