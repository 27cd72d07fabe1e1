// manifest.json: typed layer entries and their validation, the atomic durable replace that is the
// commit point of the checkpoint, and the model fingerprint that ties a checkpoint to its model.
#include "scalpel/io/manifest.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/io/safetensors.hpp"

namespace scalpel::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Durable writes

void fsync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) SCALPEL_RUNTIME_ERROR("{}: cannot open to fsync: {}", path.string(), std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems cannot fsync a directory (EINVAL); their renames are ordered anyway.
  if (rc != 0 && !(directory && (err == EINVAL || err == ENOTSUP)))
    SCALPEL_RUNTIME_ERROR("{}: fsync failed: {}", path.string(), std::strerror(err));
}

void write_file_atomic(const fs::path& path, std::string_view bytes, std::string_view crash_tag) {
  fs::path tmp = path;
  tmp += ".tmp";
  const std::string what = tmp.string();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) SCALPEL_RUNTIME_ERROR("{}: cannot create: {}", what, std::strerror(errno));
  auto fail = [&](const char* op) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    SCALPEL_RUNTIME_ERROR("{}: {} failed: {}", what, op, std::strerror(err));
  };
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("write");
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) fail("fsync");
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    SCALPEL_RUNTIME_ERROR("{}: close failed: {}", what, std::strerror(errno));
  }
  detail::crash_point(fmt::format("{}.synced", crash_tag));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    SCALPEL_RUNTIME_ERROR("{}: cannot rename {} into place: {}", path.string(), what, std::strerror(err));
  }
  detail::crash_point(fmt::format("{}.renamed", crash_tag));
  // The rename is durable only once the directory entry is.
  const fs::path dir = path.parent_path();
  fsync_path(dir.empty() ? fs::path(".") : dir, true);
}

std::string utc_now_iso() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Layer entries

namespace {

// Typed getters for manifest validation: each failure names the manifest and the key path.
const json& field(const json& j, const char* key, const std::string& ctx) {
  SCALPEL_CHECK_INPUT(j.is_object(), "{}: expected an object", ctx);
  const auto it = j.find(key);
  SCALPEL_CHECK_INPUT(it != j.end(), "{}: missing key \"{}\"", ctx, key);
  return *it;
}
std::string get_string(const json& j, const char* key, const std::string& ctx) {
  const json& v = field(j, key, ctx);
  SCALPEL_CHECK_INPUT(v.is_string(), "{}.{}: expected a string, found {}", ctx, key, v.dump());
  return v.get<std::string>();
}
std::int64_t get_index(const json& j, const char* key, const std::string& ctx) {
  const json& v = field(j, key, ctx);
  SCALPEL_CHECK_INPUT(v.is_number_integer() && v.get<std::int64_t>() >= 0,
                      "{}.{}: expected a non-negative integer, found {}", ctx, key, v.dump());
  return v.get<std::int64_t>();
}

bool is_digest(const std::string& s) {
  return s.size() == 21 && s.compare(0, 5, "xxh3:") == 0 &&
         std::all_of(s.begin() + 5, s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

// Why the slices of `t` (sorted) do not tile its rows exactly, or "".
std::string tiling_problem(const ManifestTensor& t) {
  std::int64_t pos = 0;
  for (const auto& s : t.slices) {
    if (s.row_begin > pos) return fmt::format("rows [{}, {}) are in no slice", pos, s.row_begin);
    if (s.row_begin < pos) return fmt::format("rows [{}, {}) are in two slices", s.row_begin, pos);
    if (s.row_end < s.row_begin) return fmt::format("slice [{}, {}) is reversed", s.row_begin, s.row_end);
    pos = s.row_end;
  }
  const std::int64_t rows = t.shape.empty() ? 0 : t.shape[0];
  if (pos != rows) return fmt::format("rows [{}, {}) are in no slice", pos, rows);
  return "";
}

void sort_slices(ManifestTensor& t) {
  std::stable_sort(t.slices.begin(), t.slices.end(),
                   [](const ManifestSlice& a, const ManifestSlice& b) {
                     return a.row_begin != b.row_begin ? a.row_begin < b.row_begin : a.row_end < b.row_end;
                   });
}

// The entries of a layer's "files" (sorted by shard), each checked to name a shard of `layer`;
// their names are added to `file_names`.
std::vector<ManifestFile> parse_layer_files(const json& j, std::int64_t layer, const std::string& ctx,
                                            std::set<std::string>& file_names) {
  const json& files = field(j, "files", ctx);
  SCALPEL_CHECK_INPUT(files.is_array() && !files.empty(), "{}.files: expected a non-empty array", ctx);
  std::vector<ManifestFile> out;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const std::string fctx = fmt::format("{}.files[{}]", ctx, i);
    ManifestFile f;
    f.file = get_string(files[i], "file", fctx);
    f.shard = get_index(files[i], "shard", fctx);
    f.bytes = static_cast<std::uint64_t>(get_index(files[i], "bytes", fctx));
    const auto parsed = parse_shard_file_name(f.file);
    SCALPEL_CHECK_INPUT(parsed && parsed->first == layer && parsed->second == f.shard,
                        "{}: file \"{}\" is not shard {} of layer {}", fctx, f.file, f.shard, layer);
    SCALPEL_CHECK_INPUT(file_names.insert(f.file).second, "{}: file \"{}\" listed twice", fctx, f.file);
    out.push_back(std::move(f));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.shard < b.shard; });
  return out;
}

// One entry of a tensor's "slices": its file must be one of `file_names`; "mask_digest" is read
// only when the tensor has a mask.
ManifestSlice parse_manifest_slice(const json& sj, const std::string& sctx, bool mask,
                                   const std::set<std::string>& file_names) {
  ManifestSlice s;
  s.file = get_string(sj, "file", sctx);
  SCALPEL_CHECK_INPUT(file_names.count(s.file), "{}: file \"{}\" is not among the layer's files", sctx, s.file);
  const json& rows = field(sj, "rows", sctx);
  SCALPEL_CHECK_INPUT(rows.is_array() && rows.size() == 2 && rows[0].is_number_integer() &&
                          rows[1].is_number_integer(),
                      "{}.rows: expected [begin, end]", sctx);
  s.row_begin = rows[0].get<std::int64_t>();
  s.row_end = rows[1].get<std::int64_t>();
  s.digest = get_string(sj, "digest", sctx);
  SCALPEL_CHECK_INPUT(is_digest(s.digest), "{}.digest: \"{}\" is not an xxh3 digest", sctx, s.digest);
  if (mask) {
    s.mask_digest = get_string(sj, "mask_digest", sctx);
    SCALPEL_CHECK_INPUT(is_digest(s.mask_digest), "{}.mask_digest: \"{}\" is not an xxh3 digest", sctx,
                        s.mask_digest);
  }
  return s;
}

// One entry of a layer's "tensors": dtype, shape, mask flag, and slices that tile its rows exactly.
ManifestTensor parse_manifest_tensor(const json& tj, const std::string& tctx,
                                     const std::set<std::string>& file_names) {
  ManifestTensor t;
  const auto dt = dtype_from_safetensors(get_string(tj, "dtype", tctx));
  SCALPEL_CHECK_INPUT(dt.has_value(), "{}.dtype: unknown dtype", tctx);
  t.dtype = *dt;
  const json& shape = field(tj, "shape", tctx);
  SCALPEL_CHECK_INPUT(shape.is_array() && !shape.empty() &&
                          std::all_of(shape.begin(), shape.end(),
                                      [](const json& d) { return d.is_number_integer() && d.get<std::int64_t>() >= 0; }),
                      "{}.shape: expected a non-empty array of non-negative integers", tctx);
  t.shape = shape.get<Shape>();
  const json& mask = field(tj, "mask", tctx);
  SCALPEL_CHECK_INPUT(mask.is_boolean(), "{}.mask: expected true or false", tctx);
  t.mask = mask.get<bool>();
  const json& slices = field(tj, "slices", tctx);
  SCALPEL_CHECK_INPUT(slices.is_array() && !slices.empty(), "{}.slices: expected a non-empty array", tctx);
  for (std::size_t i = 0; i < slices.size(); ++i)
    t.slices.push_back(parse_manifest_slice(slices[i], fmt::format("{}.slices[{}]", tctx, i), t.mask, file_names));
  sort_slices(t);
  const std::string why = tiling_problem(t);
  SCALPEL_CHECK_INPUT(why.empty(), "{}: {}", tctx, why);
  return t;
}
}  // namespace

SliceInfo ManifestTensor::slice_info(const std::string& name, std::size_t i) const {
  const auto& s = slices.at(i);
  SliceInfo out;
  out.tensor = name;
  out.dtype = dtype;
  out.shape = shape;
  out.shape[0] = s.row_end - s.row_begin;
  out.row_begin = s.row_begin;
  out.row_end = s.row_end;
  out.total_rows = shape[0];
  out.digest = s.digest;
  out.mask_digest = s.mask_digest;
  return out;
}

json LayerEntry::to_json() const {
  json f = json::array();
  for (const auto& x : files) f.push_back({{"file", x.file}, {"shard", x.shard}, {"bytes", x.bytes}});
  json t = json::object();
  for (const auto& [name, x] : tensors) {
    json sl = json::array();
    for (const auto& s : x.slices) {
      json e = {{"file", s.file}, {"rows", {s.row_begin, s.row_end}}, {"digest", s.digest}};
      if (x.mask) e["mask_digest"] = s.mask_digest;
      sl.push_back(std::move(e));
    }
    t[name] = {{"dtype", std::string(dtype_name(x.dtype))}, {"shape", x.shape}, {"mask", x.mask},
               {"slices", std::move(sl)}};
  }
  return {{"status", "committed"}, {"time", time}, {"metrics", metrics}, {"files", std::move(f)},
          {"tensors", std::move(t)}};
}

LayerEntry LayerEntry::from_json(const json& j, std::int64_t layer, const std::string& what) {
  const std::string ctx = fmt::format("{}: layers[{}]", what, layer);
  LayerEntry e;
  e.layer = layer;
  SCALPEL_CHECK_INPUT(get_string(j, "status", ctx) == "committed", "{}: not a committed layer", ctx);
  e.time = get_string(j, "time", ctx);
  e.metrics = j.contains("metrics") ? j.at("metrics") : json::object();
  std::set<std::string> file_names;
  e.files = parse_layer_files(j, layer, ctx, file_names);
  const json& tensors = field(j, "tensors", ctx);
  SCALPEL_CHECK_INPUT(tensors.is_object(), "{}.tensors: expected an object", ctx);
  for (const auto& [name, tj] : tensors.items())
    e.tensors.emplace(name, parse_manifest_tensor(tj, fmt::format("{}.tensors[\"{}\"]", ctx, name), file_names));
  return e;
}

LayerEntry LayerEntry::from_shards(std::int64_t layer, const std::vector<ShardInfo>& shards, json metrics,
                                   std::string time) {
  LayerEntry e;
  e.layer = layer;
  e.metrics = std::move(metrics);
  e.time = std::move(time);
  SCALPEL_CHECK(!shards.empty(), "layer {}: commit without shard files", layer);
  std::set<std::int64_t> seen;
  for (const auto& sh : shards) {
    SCALPEL_CHECK(sh.layer == layer, "layer {}: shard {} was written for layer {}", layer, sh.shard, sh.layer);
    SCALPEL_CHECK(sh.file == shard_file_name(layer, sh.shard), "layer {}: shard {} names file {}", layer,
                  sh.shard, sh.file);
    SCALPEL_CHECK(seen.insert(sh.shard).second, "layer {}: shard {} given twice", layer, sh.shard);
    e.files.push_back({sh.file, sh.shard, sh.bytes});
    for (const auto& s : sh.slices) {
      SCALPEL_CHECK(!s.shape.empty() && s.shape[0] == s.row_end - s.row_begin,
                    "layer {} tensor '{}': slice shape {} for rows [{}, {})", layer, s.tensor,
                    shape_str(s.shape), s.row_begin, s.row_end);
      Shape whole = s.shape;
      whole[0] = s.total_rows;
      const bool has_mask = !s.mask_digest.empty();
      auto [it, inserted] = e.tensors.try_emplace(s.tensor);
      ManifestTensor& t = it->second;
      if (inserted) {
        t.dtype = s.dtype;
        t.shape = whole;
        t.mask = has_mask;
      } else {
        SCALPEL_CHECK(t.dtype == s.dtype && t.shape == whole && t.mask == has_mask,
                      "layer {} tensor '{}': shard {} holds a {} {} slice{} of a {} {} tensor{}", layer, s.tensor,
                      sh.shard, dtype_name(s.dtype), shape_str(whole), has_mask ? " with mask" : "",
                      dtype_name(t.dtype), shape_str(t.shape), t.mask ? " with mask" : "");
      }
      t.slices.push_back({sh.file, s.row_begin, s.row_end, s.digest, s.mask_digest});
    }
  }
  std::sort(e.files.begin(), e.files.end(), [](const auto& a, const auto& b) { return a.shard < b.shard; });
  for (auto& [name, t] : e.tensors) {
    sort_slices(t);
    const std::string why = tiling_problem(t);
    SCALPEL_CHECK(why.empty(), "layer {} tensor '{}': {}; nothing is committed", layer, name, why);
  }
  return e;
}

// ---------------------------------------------------------------------------------------------
// Whole manifest

void validate_manifest(const json& m, const std::string& what) {
  SCALPEL_CHECK_INPUT(m.is_object(), "{}: not a checkpoint manifest (expected a JSON object)", what);
  const auto format = m.find("format");
  SCALPEL_CHECK_INPUT(format != m.end() && format->is_string() && *format == kCheckpointFormat,
                      "{}: not a scalpel checkpoint manifest (\"format\" is not \"{}\")", what, kCheckpointFormat);
  const std::int64_t version = get_index(m, "format_version", what);
  SCALPEL_CHECK_INPUT(version <= kCheckpointFormatVersion,
                      "{}: written by a newer scalpel (checkpoint format {}, this build reads up to {}); "
                      "use that version, or --restart to discard the checkpoint",
                      what, version, kCheckpointFormatVersion);
  SCALPEL_CHECK_INPUT(version >= 1, "{}: format_version {} is invalid", what, version);
  const json& model = field(m, "model", what);
  get_string(model, "name", what + ": model");
  get_string(model, "fingerprint", what + ": model");
  get_string(m, "config_hash", what);
  const std::int64_t n = get_index(m, "num_layers", what);
  SCALPEL_CHECK_INPUT(n <= kMaxShardIndex + 1, "{}: num_layers {} is more than {}", what, n, kMaxShardIndex + 1);
  const json& complete = field(m, "complete", what);
  SCALPEL_CHECK_INPUT(complete.is_boolean(), "{}: \"complete\" must be true or false", what);
  if (m.contains("runs")) SCALPEL_CHECK_INPUT(m["runs"].is_array(), "{}: \"runs\" must be an array", what);
  const json& layers = field(m, "layers", what);
  SCALPEL_CHECK_INPUT(layers.is_array() && static_cast<std::int64_t>(layers.size()) == n,
                      "{}: \"layers\" must be an array of num_layers = {} entries", what, n);
  bool all = true;
  for (std::int64_t l = 0; l < n; ++l) {
    const std::string ctx = fmt::format("{}: layers[{}]", what, l);
    const std::string status = get_string(layers[l], "status", ctx);
    if (status == "pending") {
      all = false;
      continue;
    }
    SCALPEL_CHECK_INPUT(status == "committed", "{}.status: \"{}\" is neither \"pending\" nor \"committed\"", ctx,
                        status);
    LayerEntry::from_json(layers[l], l, what);
  }
  SCALPEL_CHECK_INPUT(!complete.get<bool>() || all, "{}: marked complete with uncommitted layers", what);
}

// ---------------------------------------------------------------------------------------------
// Model fingerprint

namespace {

std::string slurp(const fs::path& path, const std::string& folder) {
  std::ifstream in(path, std::ios::binary);
  SCALPEL_CHECK_INPUT(in, "{}: cannot read {} (missing or unreadable)", folder, path.filename().string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The 8-byte length prefix and the JSON header of a safetensors file (not its data).
std::string safetensors_header_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  SCALPEL_CHECK_INPUT(in, "{}: cannot open (missing or unreadable)", path.string());
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  SCALPEL_CHECK_INPUT(in.gcount() == 8, "{}: shorter than a safetensors length prefix", path.string());
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(len[i]) << (8 * i);
  SCALPEL_CHECK_INPUT(n <= kMaxSafetensorsHeaderBytes, "{}: header length {} is implausible", path.string(), n);
  std::string out(reinterpret_cast<const char*>(len), 8);
  out.resize(8 + n);
  in.read(out.data() + 8, static_cast<std::streamsize>(n));
  SCALPEL_CHECK_INPUT(static_cast<std::uint64_t>(in.gcount()) == n, "{}: truncated header", path.string());
  return out;
}

// The weight files of a Hugging Face folder, by name: model.safetensors, or the files the index
// names (each once, in name order).
std::vector<std::string> weight_files(const fs::path& folder, const std::string& where) {
  if (fs::exists(folder / "model.safetensors")) return {"model.safetensors"};
  const fs::path index = folder / "model.safetensors.index.json";
  SCALPEL_CHECK_INPUT(fs::exists(index), "{}: has neither model.safetensors nor model.safetensors.index.json", where);
  std::set<std::string> uniq;
  try {
    const json j = json::parse(slurp(index, where));
    for (const auto& [name, file] : j.at("weight_map").items()) uniq.insert(file.get<std::string>());
  } catch (const json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: model.safetensors.index.json is malformed: {}", where, e.what());
  }
  for (const auto& f : uniq)
    SCALPEL_CHECK_INPUT(f.find('/') == std::string::npos && f != ".." && !f.empty(),
                        "{}: weight file \"{}\" is not a plain file name", where, f);
  return {uniq.begin(), uniq.end()};
}

// Bytes of a tensor's data the fingerprint reads: all of a small one, else four windows spread
// from its first byte to its last (a replaced tensor, or weights trained further, differ there).
constexpr std::size_t kSampleWindow = 64;

void feed_samples(XXH3_state_t* st, const fs::path& file) {
  const auto f = SafetensorsFile::open(file);
  for (const auto& info : f->header().tensors) {
    const std::size_t n = info.end - info.begin;
    if (n == 0) continue;
    const Tensor t = f->view(info.name);
    const auto* p = static_cast<const unsigned char*>(t.raw());
    if (n <= 4 * kSampleWindow) {
      XXH3_64bits_update(st, p, n);
      continue;
    }
    const std::size_t last = n - kSampleWindow;
    for (const std::size_t at : {std::size_t{0}, last / 3, 2 * (last / 3), last})
      XXH3_64bits_update(st, p + at, kSampleWindow);
  }
}

// XXH3 over config.json and each weight file's header, and with `values` samples of each tensor's
// bytes; length-prefixed parts, so that no two different sequences of parts hash the same stream.
std::string fingerprint(const fs::path& folder, bool values) {
  const std::string where = folder.string();
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> st(XXH3_createState(), XXH3_freeState);
  SCALPEL_CHECK(st != nullptr, "XXH3_createState failed");
  XXH3_64bits_reset(st.get());
  auto feed = [&](std::string_view tag, const std::string& bytes) {
    const std::uint64_t lens[2] = {tag.size(), bytes.size()};
    XXH3_64bits_update(st.get(), lens, sizeof lens);
    XXH3_64bits_update(st.get(), tag.data(), tag.size());
    XXH3_64bits_update(st.get(), bytes.data(), bytes.size());
  };
  feed("config.json", slurp(folder / "config.json", where));
  for (const auto& f : weight_files(folder, where)) {
    feed(f, safetensors_header_bytes(folder / f));
    if (values) feed_samples(st.get(), folder / f);
  }
  return fmt::format("{}{:016x}", values ? kFingerprintPrefix : kHeaderFingerprintPrefix,
                     static_cast<std::uint64_t>(XXH3_64bits_digest(st.get())));
}

}  // namespace

std::string model_fingerprint(const fs::path& folder) { return fingerprint(folder, true); }

bool kept_model_matches(const std::string& kept, const std::string& now, const fs::path& folder,
                        const std::string& what) {
  if (kept == now) return true;
  if (kept.rfind(kHeaderFingerprintPrefix, 0) != 0) return false;
  try {
    if (kept != fingerprint(folder, false)) return false;
  } catch (const Error&) {
    return false;  // a folder that cannot be read is not the model (the caller says which it holds)
  }
  log::warn("{}: recorded by an earlier release, whose model fingerprint covered config.json and the weight files' "
            "headers but not the weights' values; taken as {}'s (same config and headers), which this run cannot "
            "confirm for the values",
            what, folder.string());
  return true;
}

bool kept_identity_matches(nlohmann::json kept, const nlohmann::json& now, const fs::path& folder,
                           const std::string& what) {
  if (!kept.is_object() || !now.is_object() || !kept.contains("model") || !now.contains("model") ||
      !kept["model"].is_string() || !now["model"].is_string())
    return kept == now;
  const std::string model = kept["model"];
  kept["model"] = now["model"];
  return kept == now && kept_model_matches(model, now["model"].get<std::string>(), folder, what);
}

std::string settings_change(const nlohmann::json& was, const nlohmann::json& now) {
  if (!was.is_object() || !now.is_object()) return "";
  const auto text = [](const nlohmann::json& j, const std::string& k) {
    return j.contains(k) ? (j[k].is_string() ? j[k].get<std::string>() : j[k].dump()) : std::string("-");
  };
  std::vector<std::string> keys;
  for (const auto& [k, v] : was.items()) keys.push_back(k);
  for (const auto& [k, v] : now.items())
    if (!was.contains(k)) keys.push_back(k);
  std::string out;
  for (const auto& k : keys) {
    const auto a = text(was, k), b = text(now, k);
    if (a == b) continue;
    out += fmt::format("{}{} {} -> {}", out.empty() ? "" : ", ", k, a, b);
  }
  return out;
}

}  // namespace scalpel::io
