// Checkpoint shard files in HDF5: the durable writer (temp file, flush, fsync, rename, fsync the
// folder), the verifying reader, mask packing and XXH3 digests. Files use the HDF5 1.10 format
// (libver latest) because it checksums the metadata too, so damage anywhere in a file is caught.
#include "scalpel/io/checkpoint_shard.hpp"

#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <set>

#include "hdf5_handle.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/io/manifest.hpp"

namespace scalpel::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "scalpel assumes a little-endian host");

// ---------------------------------------------------------------------------------------------
// HDF5 session and error text

namespace h5 {

namespace {
std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex m;
  return m;
}

herr_t collect_error(unsigned, const H5E_error2_t* e, void* data) {
  auto* msgs = static_cast<std::vector<std::string>*>(data);
  if (e && e->desc && *e->desc) {
    std::string d = e->desc;
    if (std::find(msgs->begin(), msgs->end(), d) == msgs->end()) msgs->push_back(std::move(d));
  }
  return 0;
}
}  // namespace

Session::Session() : lock_(hdf5_mutex()) {
  // After a metadata checksum failure HDF5 1.10 keeps some internal state it cannot free, and its
  // atexit() cleanup then prints "infinite loop closing library" under our own clean error
  // message. Every file scalpel opens is closed (and fsync'd) before the call that opened it
  // returns, so nothing needs that cleanup; it must be switched off before the library starts.
  static const bool no_atexit = (H5dont_atexit(), true);
  (void)no_atexit;
  H5Eget_auto2(H5E_DEFAULT, &old_func_, &old_data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

Session::~Session() { H5Eset_auto2(H5E_DEFAULT, old_func_, old_data_); }

std::string last_error() {
  std::vector<std::string> msgs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_error, &msgs);
  H5Eclear2(H5E_DEFAULT);
  // The innermost few causes say what is wrong; the outer frames only repeat "unable to ...".
  std::string out;
  for (std::size_t i = 0; i < msgs.size() && i < 3; ++i) {
    if (i) out += "; ";
    out += msgs[i];
  }
  return out.empty() ? "no HDF5 error detail" : out;
}

}  // namespace h5

// ---------------------------------------------------------------------------------------------
// Crash-test seam

namespace detail {
namespace {
std::atomic<CrashHook> g_crash_hook{nullptr};
}
void set_crash_hook(CrashHook hook) { g_crash_hook.store(hook); }
void crash_point(std::string_view point) {
  if (auto hook = g_crash_hook.load()) hook(point);
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Names, digests, masks

std::string shard_file_name(std::int64_t layer, std::int64_t shard) {
  SCALPEL_CHECK(layer >= 0 && layer <= kMaxShardIndex && shard >= 0 && shard <= kMaxShardIndex,
                "layer {} / shard {} outside [0, {}]", layer, shard, kMaxShardIndex);
  return fmt::format("layer-{:05d}.shard-{:05d}.h5", layer, shard);
}

std::optional<std::pair<std::int64_t, std::int64_t>> parse_shard_file_name(std::string_view name) {
  // Exactly "layer-" 5 digits ".shard-" 5 digits ".h5": anything else is not ours to touch.
  constexpr std::string_view kA = "layer-", kB = ".shard-", kC = ".h5";
  if (name.size() != kA.size() + 5 + kB.size() + 5 + kC.size()) return std::nullopt;
  if (name.substr(0, kA.size()) != kA || name.substr(kA.size() + 5, kB.size()) != kB ||
      name.substr(name.size() - kC.size()) != kC)
    return std::nullopt;
  auto digits = [](std::string_view s, std::int64_t& v) {
    if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
    return std::from_chars(s.data(), s.data() + s.size(), v).ec == std::errc();
  };
  std::int64_t layer = 0, shard = 0;
  if (!digits(name.substr(kA.size(), 5), layer) || !digits(name.substr(kA.size() + 5 + kB.size(), 5), shard))
    return std::nullopt;
  return std::make_pair(layer, shard);
}

std::string digest_bytes(const void* data, std::size_t bytes) {
  return fmt::format("xxh3:{:016x}", static_cast<std::uint64_t>(XXH3_64bits(data, bytes)));
}

std::size_t packed_mask_bytes(std::int64_t elements) {
  SCALPEL_CHECK(elements >= 0, "negative mask size {}", elements);
  return static_cast<std::size_t>((elements + 7) / 8);
}

std::vector<std::uint8_t> pack_mask(std::span<const std::uint8_t> keep) {
  std::vector<std::uint8_t> out(packed_mask_bytes(static_cast<std::int64_t>(keep.size())), 0);
  // Eight flags per output byte without branches (the compiler vectorises it): masks of a few
  // hundred million weights per layer are packed on every commit.
  const std::size_t full = keep.size() / 8;
#pragma omp parallel for if (full > (1u << 20)) schedule(static)
  for (std::size_t b = 0; b < full; ++b) {
    const std::uint8_t* k = keep.data() + 8 * b;
    unsigned v = 0;
    for (unsigned j = 0; j < 8; ++j) v |= static_cast<unsigned>(k[j] != 0) << j;
    out[b] = static_cast<std::uint8_t>(v);
  }
  for (std::size_t i = 8 * full; i < keep.size(); ++i)
    if (keep[i]) out[i >> 3] |= static_cast<std::uint8_t>(1u << (i & 7));
  return out;
}

std::vector<std::uint8_t> pack_mask(const Tensor& keep) {
  SCALPEL_CHECK(keep.dtype() == DType::u8 || keep.dtype() == DType::boolean,
                "pack_mask of a {} tensor (U8 or BOOL expected)", dtype_name(keep.dtype()));
  SCALPEL_CHECK(keep.device() == Device::cpu, "pack_mask of a device tensor");
  return pack_mask({keep.data<std::uint8_t>(), static_cast<std::size_t>(keep.numel())});
}

std::vector<std::uint8_t> unpack_mask(std::span<const std::uint8_t> packed, std::int64_t elements) {
  SCALPEL_CHECK(packed.size() == packed_mask_bytes(elements), "{} packed bytes for {} elements",
                packed.size(), elements);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(elements));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = (packed[i >> 3] >> (i & 7)) & 1u;
  return out;
}

void copy_mask_bits(const std::uint8_t* src, std::int64_t bits, std::uint8_t* dst, std::int64_t dst_bit) {
  // ORs whole source bytes shifted into place: the slices of one tensor never overlap and the
  // destination starts zeroed, so OR is a copy, and row slices of 8k columns take the memcpy-like
  // path (shift 0) at memory speed.
  if (bits <= 0) return;
  const std::int64_t nbytes = (bits + 7) / 8;
  const int shift = static_cast<int>(dst_bit & 7);
  std::uint8_t* d = dst + (dst_bit >> 3);
  const std::int64_t dst_last = (dst_bit + bits - 1) >> 3;  // last destination byte touched
  for (std::int64_t i = 0; i < nbytes; ++i) {
    std::uint8_t b = src[i];
    if (i == nbytes - 1 && (bits & 7)) b &= static_cast<std::uint8_t>((1u << (bits & 7)) - 1);
    d[i] |= static_cast<std::uint8_t>(b << shift);
    if (shift && (dst_bit >> 3) + i + 1 <= dst_last) d[i + 1] |= static_cast<std::uint8_t>(b >> (8 - shift));
  }
}

// ---------------------------------------------------------------------------------------------
// ShardInfo <-> JSON

json ShardInfo::to_json() const {
  json s = json::array();
  for (const auto& sl : slices) {
    s.push_back({{"tensor", sl.tensor},
                 {"dtype", std::string(dtype_name(sl.dtype))},
                 {"shape", sl.shape},
                 {"rows", {sl.row_begin, sl.row_end, sl.total_rows}},
                 {"digest", sl.digest},
                 {"mask_digest", sl.mask_digest}});
  }
  return {{"layer", layer}, {"shard", shard}, {"file", file}, {"bytes", bytes}, {"slices", std::move(s)}};
}

ShardInfo ShardInfo::from_json(const json& j, const std::string& what) {
  try {
    ShardInfo info;
    info.layer = j.at("layer").get<std::int64_t>();
    info.shard = j.at("shard").get<std::int64_t>();
    info.file = j.at("file").get<std::string>();
    info.bytes = j.at("bytes").get<std::uint64_t>();
    for (const auto& s : j.at("slices")) {
      SliceInfo sl;
      sl.tensor = s.at("tensor").get<std::string>();
      const auto dt = dtype_from_safetensors(s.at("dtype").get<std::string>());
      SCALPEL_CHECK_INPUT(dt.has_value(), "{}: unknown dtype {}", what, s.at("dtype").dump());
      sl.dtype = *dt;
      sl.shape = s.at("shape").get<Shape>();
      const auto rows = s.at("rows").get<std::vector<std::int64_t>>();
      SCALPEL_CHECK_INPUT(rows.size() == 3, "{}: \"rows\" must be [begin, end, total]", what);
      sl.row_begin = rows[0];
      sl.row_end = rows[1];
      sl.total_rows = rows[2];
      sl.digest = s.at("digest").get<std::string>();
      sl.mask_digest = s.at("mask_digest").get<std::string>();
      info.slices.push_back(std::move(sl));
    }
    return info;
  } catch (const json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: not a shard description: {}", what, e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// HDF5 helpers

namespace {

constexpr const char* kShardFormat = "scalpel-checkpoint-shard";
// Chunks of about 1 MiB: large enough that the per-chunk B-tree and checksum overheads vanish,
// small enough that one flipped bit condemns little and partial reads stay cheap.
constexpr std::uint64_t kChunkBytes = 1u << 20;
constexpr const char* kMaskSuffix = ".mask";
constexpr const char* kMaskLayout = "row-major, LSB first, 1 = kept";

struct H5Types {
  hid_t file;
  hid_t mem;
};

// F16/BF16 have no HDF5 1.10 type: their 16-bit words are stored as uint16 and the "dtype"
// attribute says how to read them, so they round-trip bitwise.
H5Types h5_types(DType t) {
  switch (t) {
    case DType::f32: return {H5T_IEEE_F32LE, H5T_NATIVE_FLOAT};
    case DType::f64: return {H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE};
    case DType::f16:
    case DType::bf16: return {H5T_STD_U16LE, H5T_NATIVE_UINT16};
    case DType::i32: return {H5T_STD_I32LE, H5T_NATIVE_INT32};
    case DType::i64: return {H5T_STD_I64LE, H5T_NATIVE_INT64};
    case DType::u8:
    case DType::boolean: return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
  }
  SCALPEL_CHECK(false, "dtype {}", static_cast<int>(t));
  return {};
}

std::vector<hsize_t> to_dims(const Shape& s) { return {s.begin(), s.end()}; }

// Trailing dimensions whole while they fit in kChunkBytes, then as many leading rows as fit.
std::vector<hsize_t> chunk_dims(const Shape& shape, std::size_t elem_bytes) {
  const std::uint64_t target = std::max<std::uint64_t>(1, kChunkBytes / elem_bytes);
  std::vector<hsize_t> c(shape.size());
  std::uint64_t inner = 1;
  for (std::size_t k = shape.size(); k-- > 0;) {
    const auto d = static_cast<std::uint64_t>(shape[k]);
    const std::uint64_t room = std::max<std::uint64_t>(1, target / inner);
    c[k] = std::min(d, room);
    inner *= c[k];
  }
  return c;
}

h5::Handle file_access_plist() {
  auto fapl = h5::plist(H5Pcreate(H5P_FILE_ACCESS));
  SCALPEL_CHECK(fapl.valid(), "H5Pcreate(FILE_ACCESS): {}", h5::last_error());
  // The 1.10 format checksums object headers, B-trees and the superblock.
  H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
  // Close means close: no object left open keeps the file half-written.
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
  // The checkpoint has its own lock; HDF5's flock fails on some parallel file systems (Lustre
  // mounted without flock), which would make every shard unreadable there.
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl.get(), false, true);
#endif
  return fapl;
}

// Object-creation lists with modification times off: the same data give the same bytes, so a
// resumed run's shard files are bitwise those of an uninterrupted run.
h5::Handle creation_plist(hid_t cls) {
  auto p = h5::plist(H5Pcreate(cls));
  SCALPEL_CHECK(p.valid(), "H5Pcreate: {}", h5::last_error());
  H5Pset_obj_track_times(p.get(), false);
  return p;
}

void write_attr_string(hid_t obj, const char* name, std::string_view value, const std::string& what) {
  auto type = h5::datatype(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), std::max<std::size_t>(1, value.size()));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  auto space = h5::dataspace(H5Screate(H5S_SCALAR));
  auto attr = h5::attribute(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
  std::string buf(value);
  if (buf.empty()) buf.push_back('\0');
  if (!attr.valid() || H5Awrite(attr.get(), type.get(), buf.data()) < 0)
    SCALPEL_RUNTIME_ERROR("{}: cannot write attribute '{}': {}", what, name, h5::last_error());
}

void write_attr_i64(hid_t obj, const char* name, std::int64_t v, const std::string& what) {
  auto space = h5::dataspace(H5Screate(H5S_SCALAR));
  auto attr = h5::attribute(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attr.valid() || H5Awrite(attr.get(), H5T_NATIVE_INT64, &v) < 0)
    SCALPEL_RUNTIME_ERROR("{}: cannot write attribute '{}': {}", what, name, h5::last_error());
}

void write_attr_json(hid_t obj, const char* name, const json& v, const std::string& what) {
  std::string text;
  try {
    text = v.dump();
  } catch (const json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: attribute '{}' holds a string that is not valid UTF-8 ({})", what, name,
                        e.what());
  }
  write_attr_string(obj, name, text, what);
}

// Attribute readers: nullopt when absent; a present attribute of the wrong kind, or one HDF5
// cannot read, is an input Error (the file is damaged or not ours).
std::optional<std::string> read_attr_string(hid_t obj, const char* name, const std::string& what) {
  const htri_t exists = H5Aexists(obj, name);
  if (exists < 0)
    SCALPEL_INPUT_ERROR("{}: cannot look up attribute '{}': {}", what, name, h5::last_error());
  if (exists == 0) return std::nullopt;
  auto attr = h5::attribute(H5Aopen(obj, name, H5P_DEFAULT));
  auto type = h5::datatype(attr.valid() ? H5Aget_type(attr.get()) : -1);
  if (!type.valid() || H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) != 0)
    SCALPEL_INPUT_ERROR("{}: attribute '{}' is not a fixed-length string ({})", what, name,
                        h5::last_error());
  // Read with the stored string type itself (same size, padding and character set): no conversion.
  const std::size_t size = H5Tget_size(type.get());
  std::string buf(size, '\0');
  if (size == 0 || H5Aread(attr.get(), type.get(), buf.data()) < 0)
    SCALPEL_INPUT_ERROR("{}: cannot read attribute '{}': {}", what, name, h5::last_error());
  buf.erase(std::find(buf.begin(), buf.end(), '\0'), buf.end());
  return buf;
}

std::optional<std::int64_t> read_attr_i64(hid_t obj, const char* name, const std::string& what) {
  const htri_t exists = H5Aexists(obj, name);
  if (exists < 0)
    SCALPEL_INPUT_ERROR("{}: cannot look up attribute '{}': {}", what, name, h5::last_error());
  if (exists == 0) return std::nullopt;
  auto attr = h5::attribute(H5Aopen(obj, name, H5P_DEFAULT));
  auto type = h5::datatype(attr.valid() ? H5Aget_type(attr.get()) : -1);
  std::int64_t v = 0;
  if (!type.valid() || H5Tget_class(type.get()) != H5T_INTEGER ||
      H5Aread(attr.get(), H5T_NATIVE_INT64, &v) < 0)
    SCALPEL_INPUT_ERROR("{}: attribute '{}' is not a readable integer ({})", what, name, h5::last_error());
  return v;
}

json read_attr_json(hid_t obj, const char* name, const std::string& what) {
  const auto text = read_attr_string(obj, name, what);
  if (!text) return nullptr;
  try {
    return json::parse(*text);
  } catch (const json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: attribute '{}' is not valid JSON ({})", what, name, e.what());
  }
}

// A chunked, Fletcher32-checksummed dataset holding `data` (empty datasets stay contiguous: HDF5
// cannot chunk a zero extent, and there is nothing to checksum).
h5::Handle write_dataset(hid_t group, const std::string& name, const Shape& shape, DType dtype,
                         const void* data, const std::string& what) {
  const H5Types types = h5_types(dtype);
  const auto dims = to_dims(shape);
  auto space = h5::dataspace(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  auto dcpl = creation_plist(H5P_DATASET_CREATE);
  const bool any = shape_numel(shape) > 0;
  if (any) {
    const auto chunk = chunk_dims(shape, dtype_size(dtype));
    if (H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) < 0 ||
        H5Pset_fletcher32(dcpl.get()) < 0)
      SCALPEL_RUNTIME_ERROR("{}: cannot set chunking/Fletcher32 for '{}': {}", what, name, h5::last_error());
    // Every chunk is written in full, so fill values would only be written to be overwritten.
    H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
  }
  auto dset = h5::dataset(
      H5Dcreate2(group, name.c_str(), types.file, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
  if (!dset.valid())
    SCALPEL_RUNTIME_ERROR("{}: cannot create dataset '{}': {}", what, name, h5::last_error());
  if (any && H5Dwrite(dset.get(), types.mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    SCALPEL_RUNTIME_ERROR("{}: cannot write dataset '{}': {}", what, name, h5::last_error());
  write_attr_string(dset.get(), "dtype", dtype_name(dtype), what);
  return dset;
}

void check_tensor_name(const std::string& name) {
  SCALPEL_CHECK(!name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos,
                "tensor name '{}' cannot be an HDF5 link name", name);
  SCALPEL_CHECK(!(name.size() >= 5 && name.compare(name.size() - 5, 5, kMaskSuffix) == 0),
                "tensor name '{}' ends in '.mask', which names mask datasets", name);
}

// Removes the temp file unless the write got as far as renaming it.
struct TmpGuard {
  fs::path path;
  bool done = false;
  ~TmpGuard() {
    if (!done) ::unlink(path.c_str());
  }
};

std::string layer_group_path(std::int64_t layer) { return fmt::format("/layers/{}", layer); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

// The slice one record describes (rows, digest, mask digest), after checking that its tensor is a
// host tensor with a leading dim, that its row range fits, and that its packed mask is well formed.
SliceInfo describe_record(const TensorRecord& r, const std::string& what) {
  SCALPEL_CHECK(r.data.defined() && r.data.device() == Device::cpu, "{}: tensor '{}' is not a host tensor",
                what, r.name);
  SCALPEL_CHECK(r.data.dim() >= 1, "{}: tensor '{}' is 0-d (row slices need a leading dim)", what, r.name);
  SliceInfo s;
  s.tensor = r.name;
  s.dtype = r.data.dtype();
  s.shape = r.data.shape();
  if (r.total_rows < 0) {
    s.row_begin = 0;
    s.row_end = s.total_rows = r.data.rows();
  } else {
    s.row_begin = r.row_begin;
    s.row_end = r.row_end;
    s.total_rows = r.total_rows;
    SCALPEL_CHECK(0 <= s.row_begin && s.row_begin <= s.row_end && s.row_end <= s.total_rows &&
                      s.row_end - s.row_begin == r.data.rows(),
                  "{}: tensor '{}': rows [{}, {}) of {} for a slice of {} rows", what, r.name,
                  s.row_begin, s.row_end, s.total_rows, r.data.rows());
  }
  s.digest = digest_bytes(r.data.raw(), r.data.nbytes());
  if (!r.packed_mask.empty()) {
    const std::int64_t n = r.data.numel();
    SCALPEL_CHECK(r.packed_mask.size() == packed_mask_bytes(n), "{}: tensor '{}': mask of {} bytes for {} elements",
                  what, r.name, r.packed_mask.size(), n);
    // Padding bits must be zero: they are digested, and merging slices ORs them into place.
    SCALPEL_CHECK(n % 8 == 0 || (r.packed_mask.back() >> (n % 8)) == 0,
                  "{}: tensor '{}': mask padding bits are not zero", what, r.name);
    s.mask_digest = digest_bytes(r.packed_mask.data(), r.packed_mask.size());
  }
  return s;
}

// Checks every record and digests it before touching the disk: a bad argument leaves no file.
std::vector<SliceInfo> describe_records(const std::vector<TensorRecord>& tensors, const std::string& what) {
  std::vector<SliceInfo> slices;
  std::set<std::string> names;
  for (const auto& r : tensors) {
    check_tensor_name(r.name);
    SCALPEL_CHECK(names.insert(r.name).second, "{}: tensor '{}' given twice", what, r.name);
    slices.push_back(describe_record(r, what));
  }
  return slices;
}

// One record's dataset with its row and digest attributes, and its mask dataset when it has one.
void write_record(hid_t group, const TensorRecord& r, const SliceInfo& s, const std::string& tmp_what) {
  auto dset = write_dataset(group, r.name, s.shape, s.dtype, r.data.raw(), tmp_what);
  write_attr_i64(dset.get(), "row_begin", s.row_begin, tmp_what);
  write_attr_i64(dset.get(), "row_end", s.row_end, tmp_what);
  write_attr_i64(dset.get(), "total_rows", s.total_rows, tmp_what);
  write_attr_string(dset.get(), "digest", s.digest, tmp_what);
  if (!r.metrics.is_null()) write_attr_json(dset.get(), "metrics", r.metrics, tmp_what);
  if (!r.packed_mask.empty()) {
    auto mset = write_dataset(group, r.name + kMaskSuffix, {static_cast<std::int64_t>(r.packed_mask.size())},
                              DType::u8, r.packed_mask.data(), tmp_what);
    write_attr_i64(mset.get(), "bits", r.data.numel(), tmp_what);
    write_attr_string(mset.get(), "layout", kMaskLayout, tmp_what);
    write_attr_string(mset.get(), "digest", s.mask_digest, tmp_what);
  }
}

// /layers/<layer> in `file`, with the shard's attributes and every record's datasets.
void write_layer_group(hid_t file, const ShardInfo& info, const std::vector<TensorRecord>& tensors,
                       const json& metrics, const std::string& tmp_what) {
  auto gcpl = creation_plist(H5P_GROUP_CREATE);
  auto layers = h5::group(H5Gcreate2(file, "/layers", H5P_DEFAULT, gcpl.get(), H5P_DEFAULT));
  auto group = h5::group(layers.valid() ? H5Gcreate2(layers.get(), std::to_string(info.layer).c_str(),
                                                     H5P_DEFAULT, gcpl.get(), H5P_DEFAULT)
                                        : -1);
  if (!group.valid()) SCALPEL_RUNTIME_ERROR("{}: cannot create group {}: {}", tmp_what,
                                            layer_group_path(info.layer), h5::last_error());
  write_attr_i64(group.get(), "layer", info.layer, tmp_what);
  write_attr_i64(group.get(), "shard", info.shard, tmp_what);
  if (!metrics.is_null()) write_attr_json(group.get(), "metrics", metrics, tmp_what);
  for (std::size_t i = 0; i < tensors.size(); ++i) write_record(group.get(), tensors[i], info.slices[i], tmp_what);
  group.close();
  layers.close();
}

// Writes the whole shard file at `tmp_path` and flushes and closes it (no fsync yet).
void write_shard_contents(const fs::path& tmp_path, const ShardInfo& info, const std::vector<TensorRecord>& tensors,
                          const json& metrics) {
  const std::string tmp_what = tmp_path.string();
  h5::Session session;
  auto fapl = file_access_plist();
  auto fcpl = creation_plist(H5P_FILE_CREATE);
  auto file = h5::file(H5Fcreate(tmp_path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()));
  if (!file.valid()) SCALPEL_RUNTIME_ERROR("{}: cannot create: {}", tmp_what, h5::last_error());
  write_attr_string(file.get(), "format", kShardFormat, tmp_what);
  write_attr_i64(file.get(), "format_version", kShardFormatVersion, tmp_what);
  write_layer_group(file.get(), info, tensors, metrics, tmp_what);
  if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0 || !file.close())
    SCALPEL_RUNTIME_ERROR("{}: cannot flush and close: {}", tmp_what, h5::last_error());
}

// fsyncs the temp file, renames it to `final_path` and fsyncs the folder `dir`.
void publish_shard(TmpGuard& tmp, const fs::path& final_path, const fs::path& dir, const std::string& what) {
  // HDF5's sec2 driver never fsyncs: make the bytes durable before the name says they exist.
  fsync_path(tmp.path, false);
  detail::crash_point("shard.synced");
  if (::rename(tmp.path.c_str(), final_path.c_str()) != 0)
    SCALPEL_RUNTIME_ERROR("{}: cannot rename {} into place: {}", what, tmp.path.string(), std::strerror(errno));
  tmp.done = true;
  detail::crash_point("shard.renamed");
  fsync_path(dir.empty() ? fs::path(".") : dir, true);
}

std::uint64_t written_file_bytes(const fs::path& final_path, const std::string& what) {
  struct stat st {};
  if (::stat(final_path.c_str(), &st) != 0)
    SCALPEL_RUNTIME_ERROR("{}: cannot stat after writing: {}", what, std::strerror(errno));
  return static_cast<std::uint64_t>(st.st_size);
}

}  // namespace

ShardInfo write_shard_file(const fs::path& dir, std::int64_t layer, std::int64_t shard,
                           const std::vector<TensorRecord>& tensors, const json& metrics) {
  ShardInfo info;
  info.layer = layer;
  info.shard = shard;
  info.file = shard_file_name(layer, shard);  // checks the ranges
  const fs::path final_path = dir / info.file;
  const std::string what = final_path.string();
  info.slices = describe_records(tensors, what);

  TmpGuard tmp{final_path};
  tmp.path += ".tmp";
  write_shard_contents(tmp.path, info, tensors, metrics);
  publish_shard(tmp, final_path, dir, what);
  info.bytes = written_file_bytes(final_path, what);
  return info;
}

// ---------------------------------------------------------------------------------------------
// Reader

struct ShardReader::Impl {
  h5::Handle file;
  std::string what;

  // Opens /layers/<layer>/<name> or fails naming file and dataset.
  h5::Handle open_dataset(std::int64_t layer, const std::string& name) const {
    const std::string p = layer_group_path(layer) + "/" + name;
    const htri_t exists = H5Lexists(file.get(), layer_group_path(layer).c_str(), H5P_DEFAULT) > 0
                              ? H5Lexists(file.get(), p.c_str(), H5P_DEFAULT)
                              : 0;
    if (exists <= 0)
      SCALPEL_INPUT_ERROR("{}: tensor '{}': dataset {} is missing ({})", what, name, p,
                          exists < 0 ? h5::last_error() : "no such link");
    auto d = h5::dataset(H5Dopen2(file.get(), p.c_str(), H5P_DEFAULT));
    if (!d.valid())
      SCALPEL_INPUT_ERROR("{}: tensor '{}': cannot open dataset {}: {}", what, name, p, h5::last_error());
    return d;
  }

  // Checks the stored type and extent of `d` against what the manifest recorded.
  void check_layout(hid_t d, const std::string& label, DType dtype, const Shape& shape) const {
    auto type = h5::datatype(H5Dget_type(d));
    if (!type.valid() || H5Tequal(type.get(), h5_types(dtype).file) <= 0)
      SCALPEL_INPUT_ERROR("{}: {}: stored element type is not the one {} is written with", what, label,
                          dtype_name(dtype));
    auto space = h5::dataspace(H5Dget_space(d));
    const int rank = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
    std::vector<hsize_t> dims(rank > 0 ? static_cast<std::size_t>(rank) : 0);
    if (rank < 0 || (rank > 0 && H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0))
      SCALPEL_INPUT_ERROR("{}: {}: unreadable extent: {}", what, label, h5::last_error());
    const Shape got(dims.begin(), dims.end());
    if (got != shape)
      SCALPEL_INPUT_ERROR("{}: {}: stored shape {} differs from the committed {}", what, label,
                          shape_str(got), shape_str(shape));
  }

  void read_checked(hid_t d, const std::string& label, DType dtype, const Shape& shape, void* dst,
                    const std::string& want_digest) const {
    const auto n = static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype);
    // HDF5 verifies each chunk's Fletcher32 here and fails the read on a mismatch.
    if (n > 0 && H5Dread(d, h5_types(dtype).mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
      SCALPEL_INPUT_ERROR("{}: {}: cannot read the data ({}): the shard is corrupted", what, label,
                          h5::last_error());
    const std::string got = digest_bytes(dst, n);
    if (got != want_digest)
      SCALPEL_INPUT_ERROR("{}: {}: digest {} differs from the committed {}: the shard is corrupted or "
                          "was replaced after the commit",
                          what, label, got, want_digest);
  }
};

ShardReader::ShardReader(fs::path path, std::optional<std::uint64_t> expected_bytes)
    : path_(std::move(path)), impl_(std::make_unique<Impl>()) {
  impl_->what = path_.string();
  const std::string& what = impl_->what;
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0)
    SCALPEL_INPUT_ERROR("{}: checkpoint shard file is missing ({})", what, std::strerror(errno));
  if (expected_bytes && static_cast<std::uint64_t>(st.st_size) != *expected_bytes)
    SCALPEL_INPUT_ERROR("{}: checkpoint shard file has {} bytes, the manifest recorded {}: it is {}", what,
                        st.st_size, *expected_bytes,
                        static_cast<std::uint64_t>(st.st_size) < *expected_bytes ? "truncated" : "not the committed file");
  h5::Session session;
  try {
    auto fapl = file_access_plist();
    impl_->file = h5::file(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, fapl.get()));
    if (!impl_->file.valid())
      SCALPEL_INPUT_ERROR("{}: not a readable HDF5 checkpoint shard: {}", what, h5::last_error());
    const auto format = read_attr_string(impl_->file.get(), "format", what);
    SCALPEL_CHECK_INPUT(format && *format == kShardFormat, "{}: not a scalpel checkpoint shard (format {})",
                        what, format ? *format : "absent");
    const auto version = read_attr_i64(impl_->file.get(), "format_version", what);
    SCALPEL_CHECK_INPUT(version && *version >= 1 && *version <= kShardFormatVersion,
                        "{}: shard format version {} is not one this scalpel reads (1..{})", what,
                        version ? std::to_string(*version) : "absent", kShardFormatVersion);
  } catch (...) {
    impl_->file.close();  // while the session still serialises HDF5
    throw;
  }
}

ShardReader::~ShardReader() {
  if (impl_) {
    h5::Session session;  // HDF5 calls (the close) stay serialised
    impl_.reset();
  }
}
ShardReader::ShardReader(ShardReader&&) noexcept = default;
ShardReader& ShardReader::operator=(ShardReader&&) noexcept = default;

void ShardReader::read_data(std::int64_t layer, const SliceInfo& want, void* dst) const {
  h5::Session session;
  const std::string label = fmt::format("tensor '{}' (dataset {}/{})", want.tensor, layer_group_path(layer), want.tensor);
  auto d = impl_->open_dataset(layer, want.tensor);
  impl_->check_layout(d.get(), label, want.dtype, want.shape);
  const auto dt = read_attr_string(d.get(), "dtype", impl_->what);
  SCALPEL_CHECK_INPUT(dt && *dt == dtype_name(want.dtype), "{}: {}: stored dtype {} differs from the committed {}",
                      impl_->what, label, dt ? *dt : "absent", dtype_name(want.dtype));
  const auto rb = read_attr_i64(d.get(), "row_begin", impl_->what);
  const auto re = read_attr_i64(d.get(), "row_end", impl_->what);
  const auto tr = read_attr_i64(d.get(), "total_rows", impl_->what);
  SCALPEL_CHECK_INPUT(rb == want.row_begin && re == want.row_end && tr == want.total_rows,
                      "{}: {}: stored rows [{}, {}) of {} differ from the committed [{}, {}) of {}", impl_->what,
                      label, rb.value_or(-1), re.value_or(-1), tr.value_or(-1), want.row_begin, want.row_end,
                      want.total_rows);
  impl_->read_checked(d.get(), label, want.dtype, want.shape, dst, want.digest);
}

std::vector<std::uint8_t> ShardReader::read_mask(std::int64_t layer, const SliceInfo& want) const {
  SCALPEL_CHECK(!want.mask_digest.empty(), "read_mask of '{}', which has no mask", want.tensor);
  h5::Session session;
  const std::string name = want.tensor + kMaskSuffix;
  const std::string label = fmt::format("tensor '{}' (mask dataset {}/{})", want.tensor, layer_group_path(layer), name);
  auto d = impl_->open_dataset(layer, name);
  const auto bytes = static_cast<std::int64_t>(packed_mask_bytes(shape_numel(want.shape)));
  impl_->check_layout(d.get(), label, DType::u8, {bytes});
  const auto bits = read_attr_i64(d.get(), "bits", impl_->what);
  SCALPEL_CHECK_INPUT(bits == shape_numel(want.shape), "{}: {}: {} mask bits stored for {} elements",
                      impl_->what, label, bits.value_or(-1), shape_numel(want.shape));
  std::vector<std::uint8_t> out(static_cast<std::size_t>(bytes));
  impl_->read_checked(d.get(), label, DType::u8, {bytes}, out.data(), want.mask_digest);
  return out;
}

json ShardReader::tensor_metrics(std::int64_t layer, const std::string& tensor) const {
  h5::Session session;
  auto d = impl_->open_dataset(layer, tensor);
  return read_attr_json(d.get(), "metrics", impl_->what);
}

json ShardReader::shard_metrics(std::int64_t layer) const {
  h5::Session session;
  auto g = h5::group(H5Gopen2(impl_->file.get(), layer_group_path(layer).c_str(), H5P_DEFAULT));
  if (!g.valid())
    SCALPEL_INPUT_ERROR("{}: group {} is missing: {}", impl_->what, layer_group_path(layer), h5::last_error());
  return read_attr_json(g.get(), "metrics", impl_->what);
}

std::vector<SliceInfo> ShardReader::list(std::int64_t layer) const {
  h5::Session session;
  const std::string& what = impl_->what;
  auto g = h5::group(H5Gopen2(impl_->file.get(), layer_group_path(layer).c_str(), H5P_DEFAULT));
  if (!g.valid()) SCALPEL_INPUT_ERROR("{}: group {} is missing: {}", what, layer_group_path(layer), h5::last_error());
  // By index rather than H5Literate, whose callback type changed in HDF5 1.12.
  H5G_info_t ginfo{};
  if (H5Gget_info(g.get(), &ginfo) < 0)
    SCALPEL_INPUT_ERROR("{}: cannot list {}: {}", what, layer_group_path(layer), h5::last_error());
  std::vector<std::string> links;
  for (hsize_t i = 0; i < ginfo.nlinks; ++i) {
    const ssize_t n = H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    std::string name(n > 0 ? static_cast<std::size_t>(n) + 1 : 0, '\0');
    if (n <= 0 || H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(),
                                     H5P_DEFAULT) < 0)
      SCALPEL_INPUT_ERROR("{}: cannot list {}: {}", what, layer_group_path(layer), h5::last_error());
    name.resize(static_cast<std::size_t>(n));
    links.push_back(std::move(name));
  }
  const std::set<std::string> all(links.begin(), links.end());
  std::vector<SliceInfo> out;
  for (const auto& name : links) {
    if (name.size() >= 5 && name.compare(name.size() - 5, 5, kMaskSuffix) == 0) continue;
    auto d = impl_->open_dataset(layer, name);
    SliceInfo s;
    s.tensor = name;
    const auto dt = read_attr_string(d.get(), "dtype", what);
    const auto parsed = dt ? dtype_from_safetensors(*dt) : std::nullopt;
    SCALPEL_CHECK_INPUT(parsed.has_value(), "{}: tensor '{}': missing or unknown dtype attribute", what, name);
    s.dtype = *parsed;
    auto space = h5::dataspace(H5Dget_space(d.get()));
    const int rank = H5Sget_simple_extent_ndims(space.get());
    SCALPEL_CHECK_INPUT(rank >= 1, "{}: tensor '{}': unreadable extent", what, name);
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    s.shape.assign(dims.begin(), dims.end());
    s.row_begin = read_attr_i64(d.get(), "row_begin", what).value_or(0);
    s.row_end = read_attr_i64(d.get(), "row_end", what).value_or(s.shape[0]);
    s.total_rows = read_attr_i64(d.get(), "total_rows", what).value_or(s.shape[0]);
    s.digest = read_attr_string(d.get(), "digest", what).value_or("");
    if (all.count(name + kMaskSuffix)) {
      auto m = impl_->open_dataset(layer, name + kMaskSuffix);
      s.mask_digest = read_attr_string(m.get(), "digest", what).value_or("");
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace scalpel::io
