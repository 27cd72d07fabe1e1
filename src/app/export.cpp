// Export to a Hugging Face folder and sparsity inspection.
#include "scalpel/app/export.hpp"

#include "scalpel/app/commands.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <optional>

#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/io/hf_checkpoint.hpp"
#include "scalpel/io/manifest.hpp"
#include "scalpel/io/shot_checkpoint.hpp"
#include "scalpel/model/spec.hpp"
#include "root_work.hpp"

namespace fs = std::filesystem;

namespace scalpel::app {
namespace {

const char* kCopied[] = {"config.json",       "generation_config.json", "tokenizer.json",          "vocab.json",
                         "merges.txt",        "tokenizer.model",        "tokenizer_config.json", "special_tokens_map.json",
                         "added_tokens.json"};

// One output tensor: its name and size, and how to get it (a zero-copy view of the source, an
// eager replacement, or a lazy one made when its shard is written).
struct Entry {
  std::string name;
  std::int64_t bytes = 0;
  std::function<Tensor()> get;
};

// The output tensors of a rewrite, in output-name order: renamed, dropped or replaced.
std::vector<Entry> rewritten_tensors(const io::HfCheckpoint& src, const ExportRewrite& rw) {
  std::map<std::string, Entry> all;
  for (const auto& name : src.tensor_names()) {
    const auto out = rw.rename ? rw.rename(name) : name;
    if (out.empty()) continue;
    if (all.count(out)) SCALPEL_CHECK(false, "export: two tensors of {} are both named '{}'", src.folder().string(), out);
    const auto& info = src.info(name);
    const auto check = [&info, out](const Tensor& t) {
      if (t.shape() != info.shape || t.dtype() != info.dtype)
        SCALPEL_CHECK(false, "export of '{}': {} {} replaces {} {}", out, dtype_name(t.dtype()), shape_str(t.shape()),
                      dtype_name(info.dtype), shape_str(info.shape));
      return t;
    };
    Entry e{out, static_cast<std::int64_t>(shape_numel(info.shape) * dtype_size(info.dtype)), {}};
    if (auto it = rw.replaced.find(out); it != rw.replaced.end()) {
      check(it->second);
      e.get = [t = it->second] { return t; };
    } else if (rw.lazy.names.count(out)) {
      e.get = [&rw, out, check] { return check(rw.lazy.load(out)); };
    } else {
      e.get = [&src, name] { return src.view(name); };
    }
    all.emplace(out, std::move(e));
  }
  for (const auto& [name, t] : rw.replaced)
    if (!all.count(name) && (rw.rename || !src.has(name))) SCALPEL_CHECK(false, "export: '{}' is not a tensor of {}", name, src.folder().string());
  for (const auto& name : rw.lazy.names)
    if (!all.count(name)) SCALPEL_CHECK(false, "export: '{}' is not a tensor of {}", name, src.folder().string());
  std::vector<Entry> out;
  for (auto& [n, e] : all) out.push_back(std::move(e));
  return out;
}

// Which rank writes shard i: the ranks of the communicator in turn (one process: all of them).
struct Writers {
  int rank = 0, size = 1;
  bool mine(std::size_t shard) const { return static_cast<int>(shard % static_cast<std::size_t>(size)) == rank; }
};

// model.safetensors, or shards of at most shard_bytes (a tensor larger than that gets a shard of
// its own) plus the index (rank 0), in the given order; one shard's tensors in memory at a time.
// Every rank plans the same shards and writes its own.
void write_tensors(const fs::path& dir, const std::vector<Entry>& all, std::int64_t shard_bytes, const Writers& w) {
  std::vector<std::vector<const Entry*>> shards(1);
  std::int64_t current = 0, total = 0;
  for (const auto& e : all) {
    if (current > 0 && current + e.bytes > shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(&e);
    current += e.bytes;
    total += e.bytes;
  }
  const auto write = [&](const fs::path& file, const std::vector<const Entry*>& shard) {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto* e : shard) tensors.emplace_back(e->name, e->get());
    io::write_safetensors(file, tensors);
  };
  if (shards.size() == 1) {
    if (w.mine(0)) write(dir / "model.safetensors", shards[0]);
    return;
  }
  nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", nlohmann::json::object()}};
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const auto file = fmt::format("model-{:05}-of-{:05}.safetensors", i + 1, shards.size());
    if (w.mine(i)) write(dir / file, shards[i]);
    for (const auto* e : shards[i]) index["weight_map"][e->name] = file;
  }
  if (w.rank == 0) std::ofstream(dir / "model.safetensors.index.json") << index.dump(2) << '\n';
}

// What every export writes last (the same bytes each time): an existing folder is replaced only
// when it holds this file (an export scalpel wrote), never a model saved by other tools, which
// has the same file names.
constexpr const char* kExportMarker = "scalpel-export.json";

// A file an export writes (its tensors, index, config and tokenizer files, the marker).
bool is_export_file(const std::string& name) {
  if (name == "model.safetensors" || name == "model.safetensors.index.json" || name == kExportMarker) return true;
  if (name.rfind("model-", 0) == 0 && name.size() > 12 && name.substr(name.size() - 12) == ".safetensors") return true;
  for (const char* f : kCopied)
    if (name == f) return true;
  return false;
}

}  // namespace

namespace {

// `p` or the nearest of its parents that exists ("" when none does, for a relative path).
fs::path nearest_existing(fs::path p) {
  std::error_code ec;
  for (; !p.empty(); p = p.parent_path()) {
    if (fs::exists(p, ec)) return p;
    if (p == p.parent_path()) break;
  }
  return {};
}

// The first entry of `dir` that no export writes ("" when none); with `partial`, also a file's
// "<name>.tmp" (a shard or file an interrupted export was writing).
std::string foreign_entry(const fs::path& dir, const fs::path& out, bool partial = false) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (partial && name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) name.resize(name.size() - 4);
    std::error_code fe;
    if (!e.is_regular_file(fe) || !is_export_file(name)) return e.path().filename().string();
  }
  if (ec) SCALPEL_INPUT_ERROR("export to {}: cannot list {}: {}", out.string(), dir.string(), ec.message());
  return "";
}

// The folders beside `out` an export uses: the new export is written into FOLDER.tmp-export, and
// an earlier export is moved to FOLDER.old-export before the new one is renamed into place, then
// removed; a kill leaves one folder or the other whole, never a half-removed export.
struct ExportScratch {
  fs::path tmp, old;
};

ExportScratch export_scratch(fs::path out) {
  while (!out.has_filename() && out.has_relative_path()) out = out.parent_path();
  return {out.string() + ".tmp-export", out.string() + ".old-export"};
}

// The scratch folders (removed before the export starts): absent, or leftovers of an earlier
// export holding export files only.
void check_export_scratch(const fs::path& out) {
  const auto scratch = export_scratch(out);
  for (const auto& dir : {scratch.tmp, scratch.old}) {
    std::error_code ec;
    const auto st = fs::symlink_status(dir, ec);
    if (ec || !fs::exists(st)) continue;
    if (!fs::is_directory(st))
      SCALPEL_INPUT_ERROR("export to {}: {} is a file, where the export puts a folder of its own (removed first): "
                          "move it away", out.string(), dir.string());
    if (const auto what = foreign_entry(dir, out, true); !what.empty())
      SCALPEL_INPUT_ERROR("export to {}: {} holds '{}', which no export writes; the export removes that folder "
                          "before writing (it is where an interrupted export left its files): move what you keep out "
                          "of it", out.string(), dir.string(), what);
  }
}

// Whether `out` is an export of a release from before scalpel-export.json, which a rerun replaces
// as it always did: it sits in a run folder beside a scalpel checkpoint (a folder holding
// manifest.json or shots.json), or its config.json records a depth removal (scalpel_depth).
bool earlier_release_export(const fs::path& out) {
  std::error_code ec;
  try {
    if (nlohmann::json::parse(std::ifstream(out / "config.json")).contains("scalpel_depth")) return true;
  } catch (const std::exception&) {
  }
  const auto parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  for (const auto& e : fs::directory_iterator(parent, ec))
    if (e.path() != out && e.is_directory(ec) &&
        (fs::exists(e.path() / io::kManifestName, ec) || fs::exists(e.path() / io::kShotPointerName, ec)))
      return true;
  return false;
}

// The folder an export writes: `given` without trailing separators, or the folder a link names.
fs::path export_destination(const fs::path& given) {
  if (given.empty()) SCALPEL_INPUT_ERROR("export: the output folder's path is empty; name the folder to write");
  // "model/" (as shell completion writes it) names the folder "model": its temporary folder goes
  // beside it, not inside the folder the export replaces.
  fs::path out = given;
  while (!out.has_filename() && out.has_relative_path()) out = out.parent_path();
  // "." or ".." last ("--out ." from inside the folder) names the folder by its full path, so
  // that its scratch folders go beside it ("..tmp-export" went inside its parent).
  if (out.filename() == "." || out.filename() == "..") {
    out = fs::absolute(out).lexically_normal();
    while (!out.has_filename() && out.has_relative_path()) out = out.parent_path();
  }
  std::error_code ec;
  if (!fs::is_symlink(out, ec)) return out;
  // A link names where the export goes: the folder it points to is replaced, the link stays.
  const auto target = fs::weakly_canonical(out, ec);
  if (ec || !fs::exists(target, ec))
    SCALPEL_INPUT_ERROR("export to {}: it is a link to {}, which does not exist; create the folder or name another",
                        out.string(), fs::read_symlink(out, ec).string());
  return target;
}

}  // namespace

void check_export_target(const fs::path& out_given, const fs::path& source_model) {
  const auto out = export_destination(out_given);
  check_export_scratch(out);
  std::error_code ec;
  const auto status = fs::status(out, ec);  // a link to a folder is judged by the folder
  if (ec || !fs::exists(status)) {
    // Created later: the nearest of its parents that exists must be a folder.
    if (const auto f = nearest_existing(out.parent_path()); !f.empty() && !fs::is_directory(f, ec))
      SCALPEL_INPUT_ERROR("export to {}: {} is a file, not a folder", out.string(), f.string());
    return;
  }
  if (!fs::is_directory(status))
    SCALPEL_INPUT_ERROR("export to {}: it is a file, not a folder; nothing was replaced", out.string());
  if (fs::weakly_canonical(out, ec) == fs::weakly_canonical(source_model, ec))
    SCALPEL_INPUT_ERROR("export to {}: it is the source model's folder; choose another one", out.string());
  if (const auto name = foreign_entry(out, out); !name.empty())
    SCALPEL_INPUT_ERROR("export to {}: the folder holds '{}', which no export writes (a checkpoint, a run folder or "
                        "other files?); scalpel replaces only an earlier export: choose a new or empty folder",
                        out.string(), name);
  if (!fs::is_empty(out, ec) && !fs::exists(out / kExportMarker, ec) && !earlier_release_export(out))
    SCALPEL_INPUT_ERROR("export to {}: the folder holds a model that scalpel did not export (no {}: a model saved "
                        "by other tools, or an export of an earlier scalpel, which wrote none?); scalpel replaces "
                        "only its own exports: choose a new or empty folder, or remove this one yourself",
                        out.string(), kExportMarker);
}

void check_export_folder(const Config& cfg) {
  std::error_code ec;
  // output.dir, or the nearest of its parents that exists, must be a folder (it is created later).
  if (const auto f = nearest_existing(cfg.output.dir); !f.empty() && !fs::is_directory(f, ec))
    SCALPEL_INPUT_ERROR("config: 'output.dir' {}{} is a file, not a folder", cfg.output.dir,
                        f == fs::path(cfg.output.dir) ? "" : fmt::format(": {}", f.string()));
  if (cfg.output.export_dir.empty()) return;
  // Before the run creates output.dir, a path through it ("../x") cannot be resolved yet: it is
  // judged as it will resolve then, a real folder's parent (lexically).
  auto target = fs::path(cfg.output.dir) / cfg.output.export_dir;
  if (!fs::exists(cfg.output.dir, ec)) target = target.lexically_normal();
  check_export_target(target, cfg.model);
}

namespace {

// Exports into one folder take turns: world rank 0 of each holds an flock on the folder's parent
// from the removal of the scratch folders to the rename (two runs sharing an output folder
// removed each other's FOLDER.tmp-export and both failed; the second now waits, then replaces the
// first's export). A file system that refuses flock on a folder: a warning, no lock.
class ExportTurn {
 public:
  ExportTurn(const fs::path& out, const fs::path& parent) {
    std::error_code ec;
    fs::create_directories(parent, ec);  // a failure is named when the scratch folder is created
    fd_ = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_ < 0) return;
    if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
    if (errno == EWOULDBLOCK) {
      log::info("export to {}: another export into {} is under way; waiting for it to end", out.string(),
                parent.string());
      int rc;
      while ((rc = ::flock(fd_, LOCK_EX)) != 0 && errno == EINTR) {
      }
      if (rc == 0) return;
    }
    log::warn("export to {}: cannot lock {} ({}); going on without", out.string(), parent.string(),
              std::strerror(errno));
    ::close(fd_);
    fd_ = -1;
  }
  ~ExportTurn() {
    if (fd_ >= 0) ::close(fd_);
  }
  ExportTurn(const ExportTurn&) = delete;
  ExportTurn& operator=(const ExportTurn&) = delete;

 private:
  int fd_ = -1;
};

// The written export `tmp` becomes `out`: an earlier export there is renamed to `old` first and
// removed last, so that a kill between any two steps leaves a whole export (old, new, or both)
// and the next export cleans up. Each rename is made durable (fsync of the parent folder).
void move_into_place(const fs::path& tmp, const fs::path& out, const fs::path& old) {
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  std::error_code ec;
  const bool earlier = fs::exists(fs::symlink_status(out, ec));
  if (earlier) {
    fs::rename(out, old, ec);
    if (ec) SCALPEL_RUNTIME_ERROR("{}: cannot move the earlier export aside to {}: {}", out.string(), old.string(),
                                  ec.message());
  }
  fs::rename(tmp, out, ec);
  if (ec) {
    std::error_code back;
    if (earlier) fs::rename(old, out, back);  // the earlier export stays in place
    SCALPEL_RUNTIME_ERROR("{}: cannot move the export into place: {}", out.string(), ec.message());
  }
  io::fsync_path(parent, true);
  fs::remove_all(old, ec);
}

// Rank 0, once it has its turn: puts back an earlier export a kill left aside (FOLDER.old-export
// and no FOLDER: removing it first lost it when this export failed too), judges the folder
// again (what appeared while it waited for its turn is refused like the rest), and makes an empty
// FOLDER.tmp-export.
void prepare_scratch(const fs::path& out, const ExportScratch& s, const fs::path& source) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(out, ec)) && fs::exists(s.old / kExportMarker, ec)) {
    fs::rename(s.old, out, ec);
    if (ec) SCALPEL_RUNTIME_ERROR("{}: cannot put back the earlier export from {}: {}", out.string(), s.old.string(),
                                  ec.message());
    log::info("export to {}: put back the earlier export an interrupted export left in {}", out.string(),
              s.old.string());
  }
  check_export_target(out, source);
  fs::remove_all(s.tmp, ec);
  fs::remove_all(s.old, ec);
  fs::create_directories(s.tmp, ec);
  if (ec) SCALPEL_RUNTIME_ERROR("{}: cannot create the export folder: {}", s.tmp.string(), ec.message());
}

// Every writer's shards of the export into `tmp`. A failed export leaves no half-written folder
// behind: a writer's error is every writer's (on_every_rank), and rank 0 removes the folder before
// any of them ends the job. A rank that dies outright leaves it to the next export, which starts
// by removing it.
void write_export_shards(const io::HfCheckpoint& src, const ExportRewrite& rw, const fs::path& out,
                         const fs::path& tmp, std::int64_t shard_bytes, const Writers& w, dist::Comm* comm) {
  std::exception_ptr failed;
  try {
    const auto write = [&] {
      try {
        write_tensors(tmp, rewritten_tensors(src, rw), shard_bytes, w);
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {  // out of memory, a file system error: shared as well
        SCALPEL_RUNTIME_ERROR("export to {}: {}", out.string(), e.what());
      }
    };
    if (comm) detail::on_every_rank(*comm, write);
    else write();
  } catch (...) {
    failed = std::current_exception();
  }
  if (!failed) return;
  std::error_code ec;
  if (w.rank == 0) fs::remove_all(tmp, ec);
  if (comm) comm->barrier();
  std::rethrow_exception(failed);
}

// Rank 0, every shard written: the source's small files (tokenizer, generation config), the
// rewritten config.json and the marker beside the shards in `tmp`.
void write_export_files(const io::HfCheckpoint& src, const ExportRewrite& rw, const fs::path& tmp) {
  std::error_code ec;
  for (const char* f : kCopied)
    if (fs::exists(src.folder() / f)) {
      fs::copy_file(src.folder() / f, tmp / f, fs::copy_options::overwrite_existing);
      // A read-only source (a shared model store) gave read-only copies, which a later export
      // by another user, and config.json's rewrite below, could not replace.
      fs::permissions(tmp / f, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add, ec);
    }
  if (!rw.config.is_null()) {
    std::ofstream cfg(tmp / "config.json", std::ios::trunc);
    cfg << rw.config.dump(2) << '\n';
    if (!cfg) SCALPEL_RUNTIME_ERROR("{}: cannot write config.json", tmp.string());
  }
  // The same bytes in every export (no path, no time): exports stay comparable byte for byte.
  std::ofstream marker(tmp / kExportMarker, std::ios::trunc);
  marker << nlohmann::json{{"written_by", "scalpel"}}.dump() << '\n';
  if (!marker) SCALPEL_RUNTIME_ERROR("{}: cannot write {}", tmp.string(), kExportMarker);
}

}  // namespace

void export_hf_rewritten(const io::HfCheckpoint& src, const ExportRewrite& rw, const fs::path& out_given,
                         std::int64_t shard_bytes, dist::Comm* comm) {
  const Writers w = comm ? Writers{comm->rank(), comm->size()} : Writers{};
  const fs::path out = export_destination(out_given);
  const auto scratch = export_scratch(out);
  check_export_target(out, src.folder());  // every rank: all refuse alike, before anything is removed
  if (comm) comm->barrier();  // every rank has looked at the scratch folders before rank 0 removes them
  std::optional<ExportTurn> turn;
  const auto prepare = [&] {
    turn.emplace(out, out.has_parent_path() ? out.parent_path() : fs::path("."));
    prepare_scratch(out, scratch, src.folder());
  };
  if (comm)
    detail::on_root(*comm, prepare);  // a refusal after the wait is every rank's
  else
    prepare();
  write_export_shards(src, rw, out, scratch.tmp, shard_bytes, w, comm);
  if (comm) comm->barrier();  // every shard written
  if (w.rank == 0) {
    write_export_files(src, rw, scratch.tmp);
    move_into_place(scratch.tmp, out, scratch.old);
  }
  if (comm) comm->barrier();  // the folder is in place
}

void export_hf_folder(const io::HfCheckpoint& src, const std::map<std::string, Tensor>& replaced,
                      const fs::path& out, std::int64_t shard_bytes) {
  ExportRewrite rw;
  rw.replaced = replaced;
  export_hf_rewritten(src, rw, out, shard_bytes);
}

void export_hf_folder(const io::HfCheckpoint& src, const LazyReplacement& replaced, const fs::path& out,
                      std::int64_t shard_bytes, dist::Comm* comm) {
  ExportRewrite rw;
  rw.lazy = replaced;
  export_hf_rewritten(src, rw, out, shard_bytes, comm);
}

namespace {

// Whether each entry is zero (+0 or -0), read off the stored bits: an fp16 or bf16 value is zero
// exactly when its widened fp32 is, so nothing is converted (an OPT-175B layer is 1.8e9 entries,
// counted on every export).
template <typename Bits, Bits kMagnitude>
std::int64_t zero_flags_of(const void* raw, std::size_t n, std::uint8_t* flags) {
  const auto* b = static_cast<const Bits*>(raw);
  std::int64_t zeros = 0;
#pragma omp parallel for reduction(+ : zeros) if (n > (1u << 20)) schedule(static)
  for (std::size_t i = 0; i < n; ++i) {
    const bool zero = (b[i] & kMagnitude) == 0;
    zeros += zero;
    if (flags) flags[i] = zero;
  }
  return zeros;
}

// The zero count of w (host), with the per-entry flags into `flags` when not null.
std::int64_t zero_flags(const Tensor& w, std::uint8_t* flags) {
  const auto n = static_cast<std::size_t>(w.numel());
  switch (w.dtype()) {
    case DType::f32:
      return zero_flags_of<std::uint32_t, 0x7fffffffu>(w.raw(), n, flags);
    case DType::f16:
    case DType::bf16:
      return zero_flags_of<std::uint16_t, 0x7fffu>(w.raw(), n, flags);
    default: {
      const Tensor f = w.to_f32();
      return zero_flags_of<std::uint32_t, 0x7fffffffu>(f.raw(), n, flags);
    }
  }
}

}  // namespace

std::int64_t count_zeros(const Tensor& w) { return zero_flags(w, nullptr); }

SparsityStats sparsity_stats(const Tensor& w) {
  SparsityStats s;
  s.rows = w.dim() >= 1 ? w.size(0) : 1;
  s.cols = w.cols();
  std::vector<std::uint8_t> zero(static_cast<std::size_t>(w.numel()));
  s.zeros = zero_flags(w, zero.data());
  const std::uint8_t* p = zero.data();
  std::vector<std::uint8_t> col_nz(static_cast<std::size_t>(s.cols), 0);
  for (std::int64_t r = 0; r < s.rows; ++r) {
    std::int64_t z = 0;
    for (std::int64_t c = 0; c < s.cols; ++c) {
      const bool is_zero = p[r * s.cols + c] != 0;
      z += is_zero;
      col_nz[static_cast<std::size_t>(c)] |= static_cast<std::uint8_t>(!is_zero);
    }
    s.zero_rows += z == s.cols;
  }
  for (const auto nz : col_nz) s.zero_cols += nz == 0;
  // The most specific N:M that every group of every row satisfies (1:2 implies 2:4 implies 4:8).
  for (auto [n, m] : {std::pair{1, 2}, std::pair{2, 4}, std::pair{4, 8}}) {
    if (s.cols % m != 0 || s.zeros == 0) continue;
    bool ok = true;
    for (std::int64_t r = 0; r < s.rows && ok; ++r)
      for (std::int64_t c = 0; c < s.cols && ok; c += m) {
        int z = 0;
        for (int k = 0; k < m; ++k) z += p[r * s.cols + c + k];
        ok = z >= n;
      }
    if (ok) {
      s.nm = fmt::format("{}:{}", n, m);
      break;
    }
  }
  return s;
}

nlohmann::json inspect_hf_folder(const fs::path& folder, bool print) {
  io::HfCheckpoint ckpt(folder);
  const auto spec = model_spec(ckpt);
  nlohmann::json rows = nlohmann::json::array();
  std::int64_t zeros = 0, total = 0;
  // A depth export says what `scalpel depth` removed (its config.json's record), first.
  const auto depth = ckpt.config().value("scalpel_depth", nlohmann::json());
  if (print && depth.is_object())
    fmt::print("depth-pruned ({}): blocks {} of the {} removed, {} kept{}{}\n", depth.value("criterion", "?"),
               depth.value("removed", nlohmann::json::array()).dump(), depth.value("original_num_hidden_layers", 0),
               depth.value("kept", nlohmann::json::array()).dump(),
               depth.contains("merged") ? ", merged " + depth["merged"].dump() : std::string(),
               depth.contains("previous") ? " (depth-pruned before that too: config.json's scalpel_depth.previous)"
                                          : "");
  if (print)
    fmt::print("{:<48} {:>14} {:>5} {:>9} {:>5} {:>9} {:>9}\n", "tensor", "shape", "dtype", "sparsity", "N:M",
               "zero rows", "zero cols");
  for (std::int64_t l = 0; l < spec.layers; ++l) {
    for (const auto& lin : spec.linears()) {
      const auto name = spec.layer_prefix(l) + lin.name + ".weight";
      const auto stored = ckpt.resolve(name);
      if (stored.empty()) SCALPEL_INPUT_ERROR("{}: tensor '{}' is missing", folder.string(), name);
      const auto s = sparsity_stats(ckpt.view(stored));
      zeros += s.zeros;
      total += s.rows * s.cols;
      rows.push_back({{"tensor", stored}, {"rows", s.rows}, {"cols", s.cols}, {"zeros", s.zeros},
                      {"sparsity", s.sparsity()}, {"nm", s.nm.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.nm)}, {"zero_rows", s.zero_rows}, {"zero_cols", s.zero_cols}});
      if (print)
        fmt::print("{:<48} {:>14} {:>5} {:>8.2f}% {:>5} {:>9} {:>9}\n", stored, fmt::format("{}x{}", s.rows, s.cols),
                   dtype_name(ckpt.info(stored).dtype), 100 * s.sparsity(), s.nm.empty() ? "-" : s.nm, s.zero_rows,
                   s.zero_cols);
    }
  }
  const double sp = total ? static_cast<double>(zeros) / static_cast<double>(total) : 0;
  if (print) fmt::print("decoder linears: {} of {} weights are zero ({:.2f}%)\n", zeros, total, 100 * sp);
  nlohmann::json report{{"tensors", rows}, {"total", {{"zeros", zeros}, {"weights", total}, {"sparsity", sp}}}};
  if (depth.is_object()) report["depth"] = depth;
  return report;
}

}  // namespace scalpel::app
