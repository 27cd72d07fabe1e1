// The kept progress of `scalpel depth` (see depth_state.hpp).
#include "depth_state.hpp"

#include <unistd.h>

#include <cmath>
#include <fstream>
#include <limits>

#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/io/manifest.hpp"
#include "scalpel/io/shot_checkpoint.hpp"
#include "root_work.hpp"

namespace fs = std::filesystem;

namespace scalpel::app {
namespace {

// The kept values of the file at `path` when it holds `identity`'s state; an empty object
// otherwise (absent, another identity's, unreadable: said in the log).
nlohmann::json read_state(const fs::path& path, const nlohmann::json& identity, const fs::path& model,
                          bool& resumed, bool& earlier_identity) {
  resumed = false;
  earlier_identity = false;
  std::error_code ec;
  if (!fs::exists(path, ec)) return nlohmann::json::object();
  try {
    std::ifstream in(path);
    const auto j = nlohmann::json::parse(in);
    if (!io::kept_identity_matches(j.at("identity"), identity, model, path.string())) {
      log::info("depth: {} holds another model's or settings' progress; starting anew", path.string());
      return nlohmann::json::object();
    }
    const auto& kept = j.at("kept");
    if (!kept.is_object()) throw std::runtime_error("'kept' is not an object");
    resumed = true;
    earlier_identity = j.at("identity") != identity;  // an earlier release's fingerprint, accepted
    return kept;
  } catch (const std::exception& e) {
    log::warn("depth: {} cannot be read ({}); starting anew", path.string(), e.what());
    return nlohmann::json::object();
  }
}

}  // namespace

DepthState::DepthState(dist::Comm& world, fs::path path, nlohmann::json identity, const fs::path& model,
                       bool restart)
    : path_(std::move(path)), root_(world.is_root()), identity_(std::move(identity)) {
  std::string text;
  detail::on_root(world, [&] {
    const fs::path dir = path_.parent_path();
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) SCALPEL_RUNTIME_ERROR("{}: cannot create the folder of the depth state: {}", dir.string(), ec.message());
    lock_fd_ = io::lock_checkpoint_folder(dir);  // first: a prune that ends meanwhile is seen below
    if (fs::exists(dir / io::kManifestName, ec) || io::ShotCheckpoint::is_shot_state(dir))
      SCALPEL_INPUT_ERROR("{}: holds a prune checkpoint ({}), not the progress of a scalpel depth run; use another "
                          "output.dir or output.checkpoint",
                          dir.string(), fs::exists(dir / io::kManifestName, ec) ? io::kManifestName
                                                                                  : io::kShotPointerName);
    if (restart) fs::remove(path_, ec);
    bool earlier_identity = false;
    kept_ = read_state(path_, identity_, model, resumed_, earlier_identity);
    if (resumed_) log::info("depth: resuming the progress kept in {}", path_.string());
    if (earlier_identity) save();  // with this release's fingerprint (warned once, not at every rerun)
    text = kept_.dump();
  });
  world.broadcast_string(text, 0);
  if (!root_) kept_ = nlohmann::json::parse(text);
  resumed_ = !kept_.empty();
}

DepthState::~DepthState() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

const nlohmann::json& DepthState::at(const std::string& key) const {
  static const nlohmann::json none;
  const auto it = kept_.find(key);
  return it == kept_.end() ? none : *it;
}

void DepthState::keep(const std::string& key, nlohmann::json value) {
  if (value.is_null())
    kept_.erase(key);
  else
    kept_[key] = std::move(value);
  if (root_) save();
}

void DepthState::save() const {
  std::error_code ec;
  fs::create_directories(path_.parent_path(), ec);  // a failure is named by the write below
  io::write_file_atomic(path_, nlohmann::json{{"identity", identity_}, {"kept", kept_}}.dump() + "\n", "depth state");
}

nlohmann::json exact_numbers(const std::vector<double>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (const double x : v) {
    if (std::isfinite(x))
      a.push_back(x);  // written in the shortest form that reads back to the same bits
    else
      a.push_back(std::isnan(x) ? "nan" : (x > 0 ? "inf" : "-inf"));
  }
  return a;
}

std::vector<double> numbers_from(const nlohmann::json& j, const std::string& what) {
  if (!j.is_array()) SCALPEL_INPUT_ERROR("{}: expected an array of numbers", what);
  std::vector<double> v;
  for (const auto& x : j) {
    if (x.is_number())
      v.push_back(x.get<double>());
    else if (x == "nan")
      v.push_back(std::numeric_limits<double>::quiet_NaN());
    else if (x == "inf" || x == "-inf")
      v.push_back(x == "inf" ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity());
    else
      SCALPEL_INPUT_ERROR("{}: {} is not a number", what, x.dump());
  }
  return v;
}

}  // namespace scalpel::app
