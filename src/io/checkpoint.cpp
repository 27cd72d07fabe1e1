// The checkpoint folder: opening or resuming (identity checks, lock, removal of files an
// interrupted commit left behind), the layer commit (manifest replace after the shards are
// durable), verified reads that merge row slices, completion and rollback.
#include "scalpel/io/checkpoint.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/io/shot_checkpoint.hpp"

namespace scalpel::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kLockName = kCheckpointLockName;

json pending_entry() { return {{"status", "pending"}}; }

json fresh_manifest(const CheckpointIdentity& id) {
  const std::string now = utc_now_iso();
  json layers = json::array();
  for (std::int64_t l = 0; l < id.num_layers; ++l) layers.push_back(pending_entry());
  return {{"format", kCheckpointFormat},
          {"format_version", kCheckpointFormatVersion},
          {"model", {{"name", id.model}, {"fingerprint", id.model_fingerprint}}},
          {"config_hash", id.config_hash},
          {"settings", id.settings},
          {"grid", id.grid},
          {"num_layers", id.num_layers},
          {"created", now},
          {"updated", now},
          {"complete", false},
          {"summary", nullptr},
          {"extra", json::object()},
          {"runs", json::array()},
          {"layers", std::move(layers)}};
}

json read_manifest(const fs::path& path) {
  const std::string what = path.string();
  std::ifstream in(path, std::ios::binary);
  SCALPEL_CHECK_INPUT(in, "{}: cannot read the checkpoint manifest", what);
  std::stringstream ss;
  ss << in.rdbuf();
  json m;
  try {
    m = json::parse(ss.str());
  } catch (const json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: the checkpoint manifest is not valid JSON ({}); it was damaged or edited: "
                        "rerun with --restart or into a new output folder",
                        what, e.what());
  }
  validate_manifest(m, what);
  return m;
}

std::int64_t first_pending(const json& m) {
  const auto& layers = m.at("layers");
  for (std::size_t l = 0; l < layers.size(); ++l)
    if (layers[l].at("status") != "committed") return static_cast<std::int64_t>(l);
  return static_cast<std::int64_t>(layers.size());
}

std::int64_t count_committed_from(const json& m, std::int64_t layer) {
  std::int64_t n = 0;
  const auto& layers = m.at("layers");
  for (auto l = static_cast<std::size_t>(layer); l < layers.size(); ++l) n += layers[l].at("status") == "committed";
  return n;
}

bool holds_work(const json& m) { return count_committed_from(m, 0) > 0; }

bool same_identity(const json& m, const CheckpointIdentity& id) {
  return m.at("model").at("fingerprint") == id.model_fingerprint && m.at("config_hash") == id.config_hash &&
         m.at("num_layers") == id.num_layers;
}

// Fails (input Error) when an existing checkpoint belongs to another model, configuration or depth.
void check_identity(const json& m, const CheckpointIdentity& id, const fs::path& dir) {
  const std::string what = (dir / kManifestName).string();
  constexpr const char* kHow = "use a new output folder, or --restart to discard this checkpoint and start over";
  const std::string fp = m.at("model").at("fingerprint");
  if (!kept_model_matches(fp, id.model_fingerprint, id.model, what))
    SCALPEL_INPUT_ERROR("{}: the checkpoint belongs to model {} (fingerprint {}), this run prunes {} "
                        "(fingerprint {}); {}",
                        what, m.at("model").at("name").get<std::string>(), fp, id.model, id.model_fingerprint, kHow);
  const std::string ch = m.at("config_hash");
  if (ch != id.config_hash) {
    const auto changed = settings_change(m.value("settings", json()), id.settings);
    SCALPEL_INPUT_ERROR("{}: the checkpoint was written with config hash {}, this run's configuration hashes "
                        "to {} ({}); {}",
                        what, ch, id.config_hash,
                        changed.empty() ? "the pruning settings changed" : "changed: " + changed, kHow);
  }
  const std::int64_t n = m.at("num_layers");
  if (n != id.num_layers)
    SCALPEL_INPUT_ERROR("{}: the checkpoint has {} layers, this run's model has {}; {}", what, n, id.num_layers, kHow);
}


// Removes the shard and temp files no committed layer records: what an interrupted commit left.
std::vector<std::string> remove_unrecorded(const fs::path& dir, const json& m) {
  std::set<std::string> keep;
  for (const auto& layer : m.at("layers"))
    if (layer.at("status") == "committed")
      for (const auto& f : layer.at("files")) keep.insert(f.at("file").get<std::string>());
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    bool ours = false;
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
      const std::string base = name.substr(0, name.size() - 4);
      ours = base == kManifestName || parse_shard_file_name(base).has_value();
    } else if (parse_shard_file_name(name)) {
      ours = !keep.count(name);
    }
    if (!ours) continue;
    if (::unlink(entry.path().c_str()) != 0 && errno != ENOENT)
      SCALPEL_RUNTIME_ERROR("{}: cannot remove a stale checkpoint file: {}", entry.path().string(),
                            std::strerror(errno));
    removed.push_back(name);
  }
  if (ec) SCALPEL_RUNTIME_ERROR("{}: cannot list the checkpoint folder: {}", dir.string(), ec.message());
  std::sort(removed.begin(), removed.end());
  if (!removed.empty()) fsync_path(dir, true);
  return removed;
}

// A folder holding LLM Surgeon's multi-shot state is not a layer checkpoint: refused, or with
// --restart discarded like one.
void refuse_or_discard_shot_state(const fs::path& dir, bool restart) {
  if (!ShotCheckpoint::is_shot_state(dir)) return;
  if (!restart)
    SCALPEL_INPUT_ERROR("{}: holds an LLM Surgeon state ({}), not a layer checkpoint; use another output.dir or "
                        "output.checkpoint, or --restart to discard it",
                        dir.string(), kShotPointerName);
  ShotCheckpoint::discard(dir);
}

// A folder holding `scalpel depth`'s progress is not a layer checkpoint either: refused, or with
// --restart its state removed (a depth run and a prune sharing one folder replaced each other's
// export and wrote beside each other's state).
void refuse_or_discard_depth_state(const fs::path& dir, bool restart) {
  const fs::path state = dir / kDepthStateName;
  std::error_code ec;
  if (!fs::exists(state, ec)) return;
  if (!restart)
    SCALPEL_INPUT_ERROR("{}: holds the progress of a scalpel depth run ({}), not a layer checkpoint; use another "
                        "output.dir or output.checkpoint, or --restart to discard it",
                        dir.string(), kDepthStateName);
  if (::unlink(state.c_str()) != 0)
    SCALPEL_RUNTIME_ERROR("{}: cannot remove for --restart: {}", state.string(), std::strerror(errno));
}

// What the files the opening removed were: the layers --restart or --restart-from or a damaged
// shard discards, layers no manifest records (it was removed: they are computed again), or the
// files of a commit a kill interrupted.
void say_removed(const fs::path& dir, std::size_t n, const CheckpointOptions& options, bool had_manifest,
                 std::optional<std::int64_t> discarded_from) {
  if (options.restart)
    log::info("checkpoint {}: discarded {} file(s) {}", dir.string(), n, options.discarded);
  else if (discarded_from)
    log::info("checkpoint {}: removed {} file(s) of the layers from {} on", dir.string(), n, *discarded_from);
  else if (!had_manifest)
    log::warn("checkpoint {}: removed {} file(s) that no manifest records ({} is missing: the layers they held are "
              "computed again)", dir.string(), n, kManifestName);
  else
    log::info("checkpoint {}: removed {} file(s) of an interrupted commit", dir.string(), n);
}

// The manifest a writable opening starts from: a fresh one where there is none (or --restart
// removed it) or where the one found holds no committed work; else the one found, which must
// belong to this run's model and settings.
json opening_manifest(const fs::path& dir, const CheckpointIdentity& id, bool restart) {
  const fs::path mpath = dir / kManifestName;
  if (restart && fs::exists(mpath)) {
    // Manifest first: once it is gone nothing is committed, and the cleanup removes the rest.
    if (::unlink(mpath.c_str()) != 0)
      SCALPEL_RUNTIME_ERROR("{}: cannot remove for --restart: {}", mpath.string(), std::strerror(errno));
    fsync_path(dir, true);
  }
  if (!fs::exists(mpath)) return fresh_manifest(id);
  json m = read_manifest(mpath);
  if (!holds_work(m) && !same_identity(m, id)) {
    // Nothing committed (a run that stopped on an input error before its first layer, say):
    // no work is lost by starting afresh, and a corrected rerun must not need --restart.
    log::info("checkpoint {}: no layer was committed; started afresh for this run's model and settings",
              dir.string());
    return fresh_manifest(id);
  }
  check_identity(m, id, dir);
  m["model"]["fingerprint"] = id.model_fingerprint;  // an earlier release's, accepted: now with values
  return m;
}

// The first committed layer below `end` with a shard file missing or of another size.
std::optional<ShardDamage> find_damaged_shard(const fs::path& dir, const json& m, std::int64_t end) {
  const auto& layers = m.at("layers");
  for (std::size_t l = 0; l < std::min(layers.size(), static_cast<std::size_t>(end)); ++l) {
    if (layers[l].at("status") != "committed") continue;
    for (const auto& f : layers[l].at("files")) {
      const fs::path p = dir / f.at("file").get<std::string>();
      const auto bytes = f.at("bytes").get<std::uint64_t>();
      const auto layer = static_cast<std::int64_t>(l);
      struct stat st {};
      if (::stat(p.c_str(), &st) != 0) {
        const int err = errno;
        // Only a file that is not there is damage: another failure (a permission, a stalled or
        // failing file system) must not cost the layers that a retry would find whole.
        if (err != ENOENT)
          SCALPEL_RUNTIME_ERROR("{}: cannot stat the shard file of committed layer {}: {}", p.string(), l,
                                std::strerror(err));
        return ShardDamage{layer, fmt::format("{}: shard file of committed layer {} is missing", p.string(), l)};
      }
      if (static_cast<std::uint64_t>(st.st_size) != bytes)
        return ShardDamage{layer, fmt::format("{}: shard file of committed layer {} has {} bytes, the manifest "
                                              "recorded {}", p.string(), l, st.st_size, bytes)};
    }
  }
  return std::nullopt;
}

// Layers >= layer pending (their files then count as unrecorded) and the run not complete; the
// evaluation state kept in "extra" was of the model as it was, so it goes too.
void uncommit_from(json& m, std::int64_t layer) {
  auto& layers = m.at("layers");
  for (auto l = static_cast<std::size_t>(layer); l < layers.size(); ++l)
    if (layers[l].at("status") == "committed") layers[l] = pending_entry();
  m["complete"] = false;
  m["summary"] = nullptr;
  m["extra"] = json::object();
}

// The first layer this opening uncommits, if any committed one goes: the first with a damaged
// shard file (computed again rather than the whole run refused: the layers before it stand), or
// --restart-from's. Said once, with what is kept.
std::optional<std::int64_t> layers_to_redo(const fs::path& dir, const json& m, const CheckpointOptions& o) {
  const std::int64_t n = m.at("num_layers");
  if (o.restart_from >= n)
    SCALPEL_INPUT_ERROR("--restart-from {}: the model has {} layers (0..{})", o.restart_from, n, n - 1);
  const bool flag = o.restart_from >= 0;
  // Only the layers that stay are looked at: those --restart-from discards may be unreadable.
  const auto damage = o.check_files ? find_damaged_shard(dir, m, flag ? o.restart_from : n) : std::nullopt;
  const std::int64_t from = damage ? damage->layer : o.restart_from;
  if (from < 0) return std::nullopt;
  const auto dropped = count_committed_from(m, from), kept = count_committed_from(m, 0) - dropped;
  if (damage) {
    log::warn("checkpoint {}: {}; layers {} and after are computed again ({} committed layer(s) before it kept{})",
              dir.string(), damage->what, from, kept,
              flag ? fmt::format(", before --restart-from {}", o.restart_from) : "");
  } else if (dropped == 0) {
    log::info("checkpoint {}: --restart-from {}: no layer from {} on is committed; nothing to discard", dir.string(),
              from, from);
    return std::nullopt;
  } else {
    log::info("checkpoint {}: --restart-from {}: {} committed layer(s) from layer {} on discarded, the {} before it "
              "kept", dir.string(), from, dropped, from, kept);
  }
  return from;
}

}  // namespace

int lock_checkpoint_folder(const fs::path& dir) {
  const fs::path path = dir / kLockName;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) SCALPEL_RUNTIME_ERROR("{}: cannot create the lock file: {}", path.string(), std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
  const int err = errno;
  ::close(fd);
  if (err == EWOULDBLOCK)
    SCALPEL_INPUT_ERROR("{}: another process is writing this checkpoint (it holds {}); wait for it to end or "
                        "use another output folder",
                        dir.string(), path.string());
  // Some parallel file systems refuse flock: go on without, as the job scheduler runs one job per folder.
  log::warn("{}: cannot lock ({}); going on without a lock", path.string(), std::strerror(err));
  return -1;
}

// ---------------------------------------------------------------------------------------------
// Opening

Checkpoint Checkpoint::open_or_create(const fs::path& dir, const CheckpointIdentity& id,
                                      const CheckpointOptions& options) {
  SCALPEL_CHECK(id.num_layers >= 0 && id.num_layers <= kMaxShardIndex + 1, "num_layers {}", id.num_layers);
  SCALPEL_CHECK(!id.model_fingerprint.empty() && !id.config_hash.empty(),
                "a checkpoint needs a model fingerprint and a config hash");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) SCALPEL_RUNTIME_ERROR("{}: cannot create the checkpoint folder: {}", dir.string(), ec.message());

  Checkpoint c;
  c.dir_ = dir;
  c.writable_ = true;
  c.lock_fd_ = lock_checkpoint_folder(dir);
  refuse_or_discard_shot_state(dir, options.restart);
  refuse_or_discard_depth_state(dir, options.restart);

  const bool had_manifest = fs::exists(c.manifest_path());
  json m = opening_manifest(dir, id, options.restart);
  // Before anything else: a stale shard under a committed-looking name must not survive into a
  // later commit of the same layer (what a kill during a commit left, or *.tmp leftovers).
  c.removed_ = remove_unrecorded(dir, m);
  const auto discarded_from = layers_to_redo(dir, m, options);
  if (discarded_from) uncommit_from(m, *discarded_from);
  const std::int64_t resume_at = first_pending(m);
  m["grid"] = id.grid;
  m["updated"] = utc_now_iso();
  json run = {{"started", m["updated"]}, {"grid", id.grid}, {"first_uncommitted", resume_at}};
  if (discarded_from) run["discarded_from"] = *discarded_from;
  m["runs"].push_back(std::move(run));
  // The manifest first, then the files of the layers it no longer records: a kill in between
  // leaves them unrecorded, and the next opening removes them (a discard is never half done).
  c.replace_manifest(std::move(m));
  if (discarded_from) {
    const auto discarded = remove_unrecorded(dir, c.manifest_);
    c.removed_.insert(c.removed_.end(), discarded.begin(), discarded.end());
    std::sort(c.removed_.begin(), c.removed_.end());
  }
  if (!c.removed_.empty()) say_removed(dir, c.removed_.size(), options, had_manifest, discarded_from);
  return c;
}

std::optional<ShardDamage> Checkpoint::first_damaged_shard() const {
  return find_damaged_shard(dir_, manifest_, num_layers());
}

Checkpoint Checkpoint::open_read(const fs::path& dir) {
  Checkpoint c;
  c.dir_ = dir;
  const fs::path mpath = c.manifest_path();
  SCALPEL_CHECK_INPUT(fs::exists(mpath), "{}: no checkpoint here ({} is missing)", dir.string(), kManifestName);
  c.manifest_ = read_manifest(mpath);
  return c;
}

Checkpoint::Checkpoint(Checkpoint&& o) noexcept
    : dir_(std::move(o.dir_)),
      manifest_(std::move(o.manifest_)),
      writable_(std::exchange(o.writable_, false)),
      lock_fd_(std::exchange(o.lock_fd_, -1)),
      removed_(std::move(o.removed_)) {}

Checkpoint& Checkpoint::operator=(Checkpoint&& o) noexcept {
  if (this != &o) {
    if (lock_fd_ >= 0) ::close(lock_fd_);
    dir_ = std::move(o.dir_);
    manifest_ = std::move(o.manifest_);
    writable_ = std::exchange(o.writable_, false);
    lock_fd_ = std::exchange(o.lock_fd_, -1);
    removed_ = std::move(o.removed_);
  }
  return *this;
}

Checkpoint::~Checkpoint() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

// ---------------------------------------------------------------------------------------------
// State

std::int64_t Checkpoint::num_layers() const { return manifest_.at("num_layers").get<std::int64_t>(); }

bool Checkpoint::committed(std::int64_t layer) const {
  return layer >= 0 && layer < num_layers() && manifest_["layers"][layer]["status"] == "committed";
}

std::int64_t Checkpoint::first_uncommitted() const { return first_pending(manifest_); }

std::int64_t Checkpoint::committed_count() const {
  std::int64_t n = 0;
  for (std::int64_t l = 0; l < num_layers(); ++l) n += committed(l);
  return n;
}

bool Checkpoint::complete() const { return manifest_.at("complete").get<bool>(); }

LayerEntry Checkpoint::layer_entry(std::int64_t layer) const {
  SCALPEL_CHECK(committed(layer), "layer {} is not committed", layer);
  return LayerEntry::from_json(manifest_["layers"][layer], layer, manifest_path().string());
}

void Checkpoint::require_writable(const char* op) const {
  SCALPEL_CHECK(writable_, "{} on checkpoint {} opened read-only", op, dir_.string());
}

void Checkpoint::check_layer_index(std::int64_t layer) const {
  SCALPEL_CHECK(layer >= 0 && layer < num_layers(), "layer {} outside the checkpoint's {} layers", layer,
                num_layers());
}

void Checkpoint::replace_manifest(json next) {
  write_file_atomic(manifest_path(), next.dump(2) + "\n", "manifest");
  manifest_ = std::move(next);
}

// ---------------------------------------------------------------------------------------------
// Writing and committing

ShardInfo Checkpoint::write_layer_shard(std::int64_t layer, std::int64_t shard, const std::vector<TensorRecord>& tensors,
                                        const json& metrics) {
  require_writable("write_layer_shard");
  check_layer_index(layer);
  SCALPEL_CHECK(!committed(layer), "layer {} is already committed: roll it back before rewriting its shards", layer);
  return write_shard_file(dir_, layer, shard, tensors, metrics);
}

void Checkpoint::commit_layer(std::int64_t layer, const std::vector<ShardInfo>& shards, const json& metrics) {
  require_writable("commit_layer");
  check_layer_index(layer);
  SCALPEL_CHECK(!committed(layer), "layer {} is already committed", layer);
  LayerEntry entry = LayerEntry::from_shards(layer, shards, metrics, utc_now_iso());
  // The writers made their files durable; make sure they are the files described before the
  // manifest vouches for them.
  for (const auto& f : entry.files) {
    const fs::path p = dir_ / f.file;
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != f.bytes)
      SCALPEL_RUNTIME_ERROR("{}: shard {} of layer {} is missing or not {} bytes at commit; nothing is committed",
                            p.string(), f.shard, layer, f.bytes);
  }
  json next = manifest_;
  next["layers"][layer] = entry.to_json();
  next["updated"] = entry.time;
  replace_manifest(std::move(next));
}

void Checkpoint::mark_complete(const json& summary) {
  require_writable("mark_complete");
  SCALPEL_CHECK(first_uncommitted() == num_layers(), "mark_complete with layer {} uncommitted", first_uncommitted());
  json next = manifest_;
  next["complete"] = true;
  next["summary"] = summary;
  next["updated"] = utc_now_iso();
  replace_manifest(std::move(next));
}

void Checkpoint::set_extra(const json& extra) {
  require_writable("set_extra");
  json next = manifest_;
  next["extra"] = extra;
  next["updated"] = utc_now_iso();
  replace_manifest(std::move(next));
}

void Checkpoint::rollback_to(std::int64_t layer) {
  require_writable("rollback_to");
  SCALPEL_CHECK(layer >= 0 && layer <= num_layers(), "rollback_to({}) of {} layers", layer, num_layers());
  std::vector<std::string> files;
  for (std::int64_t l = layer; l < num_layers(); ++l) {
    if (!committed(l)) continue;
    for (const auto& f : manifest_["layers"][l]["files"]) files.push_back(f.at("file").get<std::string>());
  }
  json next = manifest_;
  uncommit_from(next, layer);
  next["updated"] = utc_now_iso();
  // Uncommit first: if we die before the unlinks, the next open removes the unrecorded files.
  replace_manifest(std::move(next));
  for (const auto& f : files) ::unlink((dir_ / f).c_str());
  if (!files.empty()) fsync_path(dir_, true);
}

// ---------------------------------------------------------------------------------------------
// Reading

const LayerTensor* LayerData::find(const std::string& name) const {
  const auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                                   [](const LayerTensor& t, const std::string& n) { return t.name < n; });
  return it != tensors.end() && it->name == name ? &*it : nullptr;
}

const LayerTensor& LayerData::at(const std::string& name) const {
  const LayerTensor* t = find(name);
  SCALPEL_CHECK(t != nullptr, "layer {} has no tensor '{}'", layer, name);
  return *t;
}

namespace {

// One tensor of a committed layer from its shard files (opened in `readers`), every slice checked
// against the manifest (dtype, shape, digests) and merged into the whole tensor.
LayerTensor read_entry_tensor(std::int64_t layer, const std::string& name, const ManifestTensor& t,
                              const std::map<std::string, ShardReader>& readers,
                              const std::map<std::string, std::int64_t>& shard_of, bool with_mask) {
  LayerTensor lt;
  lt.name = name;
  lt.data = Tensor::empty(t.shape, t.dtype);
  const std::int64_t cols = shape_numel(t.shape) / std::max<std::int64_t>(1, t.shape[0]);
  const std::size_t row_bytes = static_cast<std::size_t>(cols) * dtype_size(t.dtype);
  const bool mask = t.mask && with_mask;
  if (mask) lt.packed_mask.assign(packed_mask_bytes(shape_numel(t.shape)), 0);
  for (std::size_t i = 0; i < t.slices.size(); ++i) {
    const ManifestSlice& s = t.slices[i];
    const SliceInfo want = t.slice_info(name, i);
    const ShardReader& r = readers.at(s.file);
    r.read_data(layer, want, static_cast<char*>(lt.data.raw()) + static_cast<std::size_t>(s.row_begin) * row_bytes);
    if (mask) {
      const auto m = r.read_mask(layer, want);
      copy_mask_bits(m.data(), (s.row_end - s.row_begin) * cols, lt.packed_mask.data(), s.row_begin * cols);
    }
    lt.slices.push_back({s.row_begin, s.row_end, shard_of.at(s.file), r.tensor_metrics(layer, name)});
  }
  return lt;
}

// A shard file holding a tensor its layer's entry does not record means the manifest was edited
// (or is not the one the files were committed with): a reader of the entry alone would take that
// tensor's dense weights and export a partly unpruned model without a word.
void check_no_unrecorded_tensors(std::int64_t layer, const LayerEntry& entry,
                                 const std::map<std::string, ShardReader>& readers) {
  std::map<std::string, std::set<std::string>> recorded;  // by file
  for (const auto& [name, t] : entry.tensors)
    for (const auto& s : t.slices) recorded[s.file].insert(name);
  for (const auto& [file, r] : readers)
    for (const auto& s : r.list(layer))
      SCALPEL_CHECK_INPUT(recorded[file].count(s.tensor) > 0,
                          "{}: holds tensor '{}' of layer {}, which the manifest does not record: the manifest "
                          "was edited or belongs to other files",
                          r.path().string(), s.tensor, layer);
}

}  // namespace

// A committed layer's entry and its shard files, open.
struct Checkpoint::LayerFiles {
  LayerEntry entry;
  std::map<std::string, ShardReader> readers;
  std::map<std::string, std::int64_t> shard_of;
};

void Checkpoint::with_layer_files(std::int64_t layer, const std::function<void(const LayerFiles&)>& read) const {
  check_layer_index(layer);
  SCALPEL_CHECK_INPUT(committed(layer), "{}: layer {} is not committed in this checkpoint", dir_.string(), layer);
  try {
    LayerFiles files;
    files.entry = layer_entry(layer);
    for (const auto& f : files.entry.files) {
      files.readers.emplace(f.file, ShardReader(dir_ / f.file, f.bytes));
      files.shard_of[f.file] = f.shard;
    }
    read(files);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::input) throw;
    // Say what it means for the run, not only what is wrong with the file.
    if (ShotCheckpoint::is_shot_folder(dir_))  // a step of LLM Surgeon's shots: the state is the whole model
      SCALPEL_INPUT_ERROR("{} [layer {} of the shot checkpoint {} cannot be used; rerun the prune with --restart to "
                          "compute the shots again]",
                          e.what(), layer, dir_.string());
    SCALPEL_INPUT_ERROR("{} [layer {} of checkpoint {} cannot be used; rerun the prune with --restart-from {} to "
                        "compute it and the layers after it again (the layers before it are kept), or with --restart "
                        "to start over]",
                        e.what(), layer, dir_.string(), layer);
  }
}

LayerData Checkpoint::read_layer(std::int64_t layer) const {
  LayerData out;
  with_layer_files(layer, [&](const LayerFiles& f) {
    out.layer = layer;
    out.metrics = f.entry.metrics;
    check_no_unrecorded_tensors(layer, f.entry, f.readers);
    for (const auto& [name, t] : f.entry.tensors)  // std::map: by name, as LayerData::find expects
      out.tensors.push_back(read_entry_tensor(layer, name, t, f.readers, f.shard_of, true));
    for (const auto& [file, r] : f.readers) out.shard_metrics[f.shard_of.at(file)] = r.shard_metrics(layer);
  });
  return out;
}

LayerTensor Checkpoint::read_tensor(std::int64_t layer, const std::string& name, bool with_mask) const {
  LayerTensor out;
  with_layer_files(layer, [&](const LayerFiles& f) {
    check_no_unrecorded_tensors(layer, f.entry, f.readers);  // the export reads tensor by tensor
    const auto it = f.entry.tensors.find(name);
    SCALPEL_CHECK_INPUT(it != f.entry.tensors.end(), "{}: layer {} has no tensor '{}'", dir_.string(), layer, name);
    out = read_entry_tensor(layer, name, it->second, f.readers, f.shard_of, with_mask);
  });
  return out;
}

}  // namespace scalpel::io
