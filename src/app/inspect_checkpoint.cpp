// `scalpel inspect` of a pruning checkpoint: where a run stands before it is resumed or after the
// folder was copied elsewhere. The layers (or LLM Surgeon's shots) committed, the runs that wrote
// them, the time a layer took so far and what the rest would take at that pace, the sparsity the
// committed layers recorded, and with `verify` every committed file read back against the
// manifest's digests, so that a damaged checkpoint is found before a job is queued on it.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>

#include "scalpel/app/export.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/io/checkpoint.hpp"
#include "scalpel/io/checkpoint_shard.hpp"
#include "scalpel/io/shot_checkpoint.hpp"
#include "depth_state.hpp"

namespace fs = std::filesystem;

namespace scalpel::app {
namespace {

using json = nlohmann::json;
using I = std::int64_t;

std::string mb_str(double bytes) { return fmt::format("{:.2f} MB", bytes / 1e6); }

// "0-2, 5" from a sorted list of layer indices.
std::string ranges_str(const std::vector<I>& v) {
  std::string out;
  for (std::size_t i = 0; i < v.size();) {
    std::size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    out += (out.empty() ? "" : ", ") + (i == j ? fmt::format("{}", v[i]) : fmt::format("{}-{}", v[i], v[j]));
    i = j + 1;
  }
  return out.empty() ? "none" : out;
}

// The committed layers: files, bytes, seconds and the pruned counts their metrics recorded.
json committed_layers(const io::Checkpoint& ck) {
  std::vector<I> layers;
  I files = 0, bytes = 0, pruned = 0, weights = 0;
  double seconds = 0;
  int timed = 0;
  for (I l = 0; l < ck.num_layers(); ++l) {
    if (!ck.committed(l)) continue;
    layers.push_back(l);
    const auto e = ck.layer_entry(l);
    files += static_cast<I>(e.files.size());
    for (const auto& f : e.files) bytes += static_cast<I>(f.bytes);
    if (e.metrics.is_object() && e.metrics.contains("seconds") && e.metrics["seconds"].is_number()) {
      seconds += e.metrics["seconds"].get<double>();
      ++timed;
    }
    if (e.metrics.is_object() && e.metrics.contains("linears"))
      for (const auto& [name, lin] : e.metrics["linears"].items()) {
        pruned += lin.value("pruned", I{0});
        weights += lin.value("weights", I{0});
      }
  }
  return {{"layers", layers},         {"files", files},   {"bytes", bytes},
          {"pruned", pruned},         {"weights", weights},
          {"seconds_mean", timed ? seconds / timed : 0.0}};
}

// Every committed layer read back (sizes, HDF5 checksums, digests) up to the first mismatch:
// "ok" false with the error (naming the file, the tensor and the way out) and its exit code, the
// counts those before it.
json verify_layers(const io::Checkpoint& ck) {
  I layers = 0, tensors = 0, bytes = 0;
  json j = {{"ok", true}};
  try {
    for (I l = 0; l < ck.num_layers(); ++l) {
      if (!ck.committed(l)) continue;
      const auto d = ck.read_layer(l);
      ++layers;
      for (const auto& t : d.tensors) {
        ++tensors;
        bytes += static_cast<I>(t.data.nbytes() + t.packed_mask.size());
      }
    }
  } catch (const Error& e) {
    j = {{"ok", false}, {"error", e.what()}, {"exit_code", exit_code(e.kind())}};
  }
  j.update({{"layers", layers}, {"tensors", tensors}, {"bytes", bytes}});
  return j;
}

// Without --verify, what costs a stat per file: every committed shard present with the size the
// manifest recorded. Null when so; else a failed "verified" record naming the first bad file (the
// table took the sizes from the manifest and said "complete" with shards missing).
json stat_files(const io::Checkpoint& ck) {
  const auto damage = ck.first_damaged_shard();
  if (!damage) return nullptr;
  I layers = 0;  // the committed layers before it, which a stat found whole
  for (I l = 0; l < damage->layer; ++l) layers += ck.committed(l);
  return {{"ok", false}, {"error", damage->what}, {"exit_code", exit_code(ErrorKind::input)}, {"layers", layers},
          {"tensors", 0}, {"bytes", 0}, {"files_only", true}};
}

json inspect_layers(const io::Checkpoint& ck, bool verify) {
  const auto& m = ck.manifest();
  json j = {{"dir", ck.dir().string()},
            {"format", m.value("format", "")},
            {"format_version", m.value("format_version", 0)},
            {"model", m.at("model")},
            {"config_hash", m.value("config_hash", "")},
            {"grid", m.value("grid", json::object())},
            {"runs", m.value("runs", json::array())},
            {"num_layers", ck.num_layers()},
            {"committed", committed_layers(ck)},
            {"first_uncommitted", ck.first_uncommitted()},
            {"complete", ck.complete()},
            {"summary", m.value("summary", json(nullptr))}};
  // No estimate before a layer is committed (no pace to go by): null, not 0 s.
  const I left = ck.num_layers() - ck.committed_count();
  j["remaining_seconds_estimate"] = ck.committed_count() > 0
                                        ? json(static_cast<double>(left) * j["committed"]["seconds_mean"].get<double>())
                                        : json(nullptr);
  j["verified"] = verify ? verify_layers(ck) : stat_files(ck);
  return j;
}

void print_verified(const json& j) {
  const auto& v = j["verified"];
  if (v.is_null()) return;
  if (!v["ok"].get<bool>() && v.value("files_only", false))
    fmt::print("DAMAGED (a stat of the shard files): {}\n(a rerun of the prune computes that layer and the ones "
               "after it again; the layers before it are kept)\n",
               v["error"].get<std::string>());
  else if (!v["ok"].get<bool>())
    fmt::print("verify FAILED after {} good layer(s): {}\n", v["layers"].get<I>(), v["error"].get<std::string>());
  else
    fmt::print("verified: {} layer(s), {} tensor(s), {} read back; every size, checksum and digest matches the "
               "manifest\n",
               j["verified"]["layers"].get<I>(), j["verified"]["tensors"].get<I>(),
               mb_str(j["verified"]["bytes"].get<double>()));
}

void print_layers(const json& j) {
  const auto& c = j["committed"];
  const auto& g = j["grid"];
  fmt::print("checkpoint {}: {} v{}, model {} ({}), config hash {}\n", j["dir"].get<std::string>(),
             j["format"].get<std::string>(), j["format_version"].get<int>(),
             j["model"].value("name", "?"), j["model"].value("fingerprint", "?"), j["config_hash"].get<std::string>());
  const auto& runs = j["runs"];
  fmt::print("grid: {} stage(s) x {} data, determinism {}; {} run(s){}\n", g.value("stages", 1), g.value("data", 1),
             g.value("determinism", "?"), runs.size(),
             runs.empty() ? "" : fmt::format(", the last started {} at layer {}", runs.back().value("started", "?"),
                                             runs.back().value("first_uncommitted", I{0})));
  const I n = j["num_layers"], done = static_cast<I>(c["layers"].size());
  fmt::print("layers: {} of {} committed ({}); {} shard file(s), {}\n", done, n,
             ranges_str(c["layers"].get<std::vector<I>>()), c["files"].get<I>(), mb_str(c["bytes"].get<double>()));
  if (c["weights"].get<I>() > 0)
    fmt::print("committed linears: {} of {} weights pruned ({:.2f}%)\n", c["pruned"].get<I>(), c["weights"].get<I>(),
               100.0 * c["pruned"].get<double>() / c["weights"].get<double>());
  if (j["complete"].get<bool>() && !j["summary"].contains("method")) {
    fmt::print("complete\n");  // a shot of an LLM Surgeon state: its summary is the shot's sparsity
  } else if (j["complete"].get<bool>()) {
    const auto& s = j["summary"];
    const auto from = s.value("resumed_at_layer", I{0});
    fmt::print("complete: {} {}, {:.2f}% of the target weights zero, {:.1f} s on {} rank(s){}\n", s.value("method", "?"),
               s.value("pattern", "?"), 100.0 * s.value("sparsity", 0.0), s.value("seconds", 0.0), s.value("ranks", 0),
               from <= 0 ? std::string() : from >= n ? std::string(" (of the run that only exported)")
                                                     : fmt::format(" (of the run that resumed at layer {})", from));
  } else if (done == n) {
    fmt::print("every layer committed, not marked complete: the rerun writes the export and the summary\n");
  } else if (done == 0) {
    fmt::print("not complete: no layer committed yet; the rerun starts at layer 0\n");
  } else {
    fmt::print("not complete: the rerun starts at layer {}; at the {:.1f} s a committed layer took, the {} left take "
               "about {:.0f} s on the same grid\n",
               j["first_uncommitted"].get<I>(), c["seconds_mean"].get<double>(), n - done,
               j["remaining_seconds_estimate"].get<double>());
  }
  print_verified(j);
}

}  // namespace

bool is_checkpoint_folder(const fs::path& dir) {
  return fs::exists(dir / io::kManifestName) || io::ShotCheckpoint::is_shot_state(dir);
}

namespace {

// Layer shard files without the manifest that records them: a checkpoint whose manifest.json was
// removed or lost (copied without it, a damaged file system).
bool holds_orphan_shards(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (io::parse_shard_file_name(e.path().filename().string())) return true;
  return false;
}

// What a depth run's state file says about its run, for the error that sends the user on: the
// blocks scored, and the folder its pruned model was exported to.
std::string depth_state_summary(const fs::path& file) {
  try {
    const auto kept = json::parse(std::ifstream(file)).at("kept");
    std::vector<std::string> says;
    if (kept.contains("scores")) says.push_back(fmt::format("scores of {} blocks", kept["scores"].size()));
    if (kept.contains("rounds")) says.push_back(fmt::format("{} ppl rounds", kept["rounds"].size()));
    if (kept.contains("attempts")) says.push_back(fmt::format("{} laco attempts", kept["attempts"].size()));
    if (kept.contains("exported") && kept["exported"].is_object())
      says.push_back(fmt::format("the pruned model exported to {} (inspect that folder)",
                                 kept["exported"].at("dir").get<std::string>()));
    return says.empty() ? "nothing kept yet" : fmt::format("{}", fmt::join(says, "; "));
  } catch (const std::exception&) {
    return "unreadable";
  }
}

}  // namespace

void refuse_run_folder(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || is_checkpoint_folder(dir) || fs::exists(dir / "config.json", ec)) return;
  if (fs::exists(dir / kDepthStateFile, ec))
    SCALPEL_INPUT_ERROR("{}: a scalpel depth run's state ({}: {}), not a model or a pruning checkpoint; the run's "
                        "scores and removals are in its metrics.jsonl", dir.string(), kDepthStateFile,
                        depth_state_summary(dir / kDepthStateFile));
  if (holds_orphan_shards(dir))
    SCALPEL_INPUT_ERROR("{}: holds layer shard files (layer-LLLLL.shard-SSSSS.h5) but no manifest.json, the record "
                        "of what is committed: nothing in it counts as committed, and the prune's rerun with this "
                        "folder as its checkpoint starts it afresh", dir.string());
  std::vector<std::string> held;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_directory(ec)) continue;
    if (is_checkpoint_folder(e.path())) held.push_back(e.path().filename().string() + " (a checkpoint)");
    else if (fs::exists(e.path() / kDepthStateFile, ec))
      held.push_back(e.path().filename().string() + " (a depth run's state)");
    else if (fs::exists(e.path() / "config.json", ec))
      held.push_back(e.path().filename().string() + " (a Hugging Face model)");
    else if (holds_orphan_shards(e.path()))
      held.push_back(e.path().filename().string() + " (a checkpoint without its manifest.json: nothing in it counts "
                     "as committed)");
  }
  std::sort(held.begin(), held.end());
  if (!held.empty())
    SCALPEL_INPUT_ERROR("{}: is neither a model (config.json) nor a checkpoint (manifest.json or shots.json); it holds "
                        "{}: inspect one of those",
                        dir.string(), fmt::join(held, ", "));
}

namespace {

json inspect_any(const fs::path& dir, bool verify, bool print) {
  if (!io::ShotCheckpoint::is_shot_state(dir)) {
    auto j = inspect_layers(io::Checkpoint::open_read(dir), verify);
    const bool shot = io::ShotCheckpoint::is_shot_folder(dir);
    j["kind"] = shot ? "shot" : "layers";
    if (print && shot)
      fmt::print("{} is one shot of the LLM Surgeon state above it (inspect that folder for the run)\n", dir.string());
    if (print) print_layers(j);
    return j;
  }
  // LLM Surgeon's state: the last committed shot is a complete layer checkpoint of its own.
  const auto state = io::ShotCheckpoint::open_read(dir);
  const auto& p = state.pointer();
  json j = {{"kind", "shots"},
            {"dir", dir.string()},
            {"model", {{"name", p.value("model", "")}, {"fingerprint", p.value("model_fingerprint", "")}}},
            {"config_hash", p.value("config_hash", "")},
            {"shots", {{"committed", state.last_shot()}, {"total", state.total_shots()}}},
            {"complete", state.exported()},
            {"summary", p.value("summary", json(nullptr))},
            {"history", p.value("history", json::array())}};
  if (print) {
    fmt::print("LLM Surgeon state {}: model {} ({}), config hash {}; {} of {} shot(s) committed\n", dir.string(),
               j["model"]["name"].get<std::string>(), j["model"]["fingerprint"].get<std::string>(),
               j["config_hash"].get<std::string>(), state.last_shot(), state.total_shots());
    if (state.exported()) {
      const auto& s = j["summary"];
      fmt::print("complete: surgeon ({} cost) {}, {:.2f}% of the target weights and biases zero, {:.1f} s on {} "
                 "rank(s), export {:.1f} s\n", s.value("cost", "?"), s.value("pattern", "?"),
                 100.0 * s.value("sparsity", 0.0), s.value("seconds", 0.0), s.value("ranks", 0),
                 s.value("export_s", 0.0));
    } else if (state.complete()) {
      fmt::print("every shot committed, not marked complete: the rerun writes the export and the summary\n");
    } else {
      fmt::print("not complete: the rerun starts at shot {}\n", state.last_shot() + 1);
    }
  }
  if (state.last_shot() > 0) {
    j["last_shot"] = inspect_layers(state.last(), verify);
    if (print) {
      const auto& h = j["history"];
      const auto& c = j["last_shot"]["committed"];
      fmt::print("shot {}: committed {}, sparsity reached {}; {} layer(s) in {} shard file(s), {}\n", state.last_shot(),
                 h.empty() ? "?" : h.back().value("committed", "?"),
                 h.empty() ? json("?").dump() : h.back().value("metrics", json::object()).value("reached", json("?")).dump(),
                 c["layers"].size(), c["files"].get<I>(), mb_str(c["bytes"].get<double>()));
      print_verified(j["last_shot"]);
    }
  }
  return j;
}

}  // namespace

json inspect_checkpoint(const fs::path& dir, bool verify, bool print) {
  // A manifest or pointer field of the wrong type (a hand-edited or damaged file) is an input
  // error naming the folder, not an internal one.
  try {
    return inspect_any(dir, verify, print);
  } catch (const nlohmann::json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: the checkpoint's manifest ({} or shots.json) has a field of the wrong type or missing: {}",
                        dir.string(), io::kManifestName, e.what());
  }
}

std::optional<std::pair<std::string, int>> verification_failure(const json& report) {
  const auto& v = report.contains("last_shot") ? report["last_shot"]["verified"] : report.value("verified", json());
  if (!v.is_object() || v["ok"].get<bool>()) return std::nullopt;
  return std::make_pair(v["error"].get<std::string>(), v["exit_code"].get<int>());
}

}  // namespace scalpel::app
