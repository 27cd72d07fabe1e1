// safetensors: header parsing and validation (hardened against arbitrary bytes: it is fuzzed),
// the read-only memory map behind lazy views and row reads, and the atomic writer used by export.
#include "scalpel/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "scalpel/core/error.hpp"

namespace scalpel::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Tensor bytes are written and viewed as they lie in memory; safetensors is little-endian.
static_assert(std::endian::native == std::endian::little, "scalpel assumes a little-endian host");

namespace {

// A legitimate header nests three levels (root -> entry -> shape); anything much deeper is
// malformed, and refusing it early bounds the parser's work on hostile input.
constexpr int kMaxJsonDepth = 8;

std::uint64_t read_le64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

// A JSON value as a non-negative integer that fits in int64 (shapes are int64; offsets must be
// within a file, so the same bound costs nothing). Returns false otherwise.
bool as_index(const json& j, std::uint64_t& out) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (j.is_number_unsigned()) {
    out = j.get<std::uint64_t>();
    return out <= kMax;
  }
  if (j.is_number_integer()) {
    const auto v = j.get<std::int64_t>();
    if (v < 0) return false;
    out = static_cast<std::uint64_t>(v);
    return true;
  }
  return false;
}

// Why a JSON value is not an index, for messages.
std::string not_index_reason(const json& j) {
  if (j.is_number_integer() && !j.is_number_unsigned()) return "negative";
  if (j.is_number_unsigned()) return "too large";
  if (j.is_number_float()) return "not an integer";
  return fmt::format("a {}, not an integer", j.type_name());
}

// Truncates a dumped JSON value so that hostile input cannot make error messages huge.
std::string short_dump(const json& j) {
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 64) s = s.substr(0, 61) + "...";
  return s;
}

bool is_float_dtype(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16 || t == DType::f64;
}

// "<what>: tensor '<name>'", the start of every message about one header entry.
std::string entry_prefix(const std::string& what, const std::string& name) {
  return fmt::format("{}: tensor '{}'", what, name);
}

// The entry's "dtype": present, a string, and one scalpel knows.
DType parse_entry_dtype(const std::string& what, const std::string& name, const json& e) {
  const auto d = e.find("dtype");
  SCALPEL_CHECK_INPUT(d != e.end(), "{}: header entry has no \"dtype\"", entry_prefix(what, name));
  SCALPEL_CHECK_INPUT(d->is_string(), "{}: \"dtype\" is a {}, not a string", entry_prefix(what, name),
                      d->type_name());
  const auto dtype = dtype_from_safetensors(d->get_ref<const std::string&>());
  SCALPEL_CHECK_INPUT(dtype.has_value(),
                      "{}: unknown dtype {} (expected F16, BF16, F32, F64, I32, I64, U8 or BOOL)",
                      entry_prefix(what, name), short_dump(*d));
  return *dtype;
}

// Fills t.shape from the entry's "shape" and returns the tensor's byte count (t.dtype set).
std::uint64_t parse_entry_shape(const std::string& what, const json& e, TensorInfo& t) {
  const auto s = e.find("shape");
  SCALPEL_CHECK_INPUT(s != e.end(), "{}: header entry has no \"shape\"", entry_prefix(what, t.name));
  SCALPEL_CHECK_INPUT(s->is_array(), "{}: \"shape\" is a {}, not an array", entry_prefix(what, t.name),
                      s->type_name());
  // numel for the byte count; `extent` (zeros counted as 1) so that every partial product a
  // reader forms later (the row length of a tensor with 0 rows, say) is known not to overflow.
  std::uint64_t numel = 1, extent = 1;
  bool overflow = false;
  for (std::size_t i = 0; i < s->size(); ++i) {
    std::uint64_t dim = 0;
    SCALPEL_CHECK_INPUT(as_index((*s)[i], dim), "{}: shape dimension {} is {} ({})", entry_prefix(what, t.name),
                        i, short_dump((*s)[i]), not_index_reason((*s)[i]));
    t.shape.push_back(static_cast<std::int64_t>(dim));
    overflow = overflow || __builtin_mul_overflow(numel, dim, &numel) ||
               __builtin_mul_overflow(extent, std::max<std::uint64_t>(dim, 1), &extent);
  }
  std::uint64_t nbytes = 0;
  overflow = overflow || __builtin_mul_overflow(numel, dtype_size(t.dtype), &nbytes) ||
             extent > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  SCALPEL_CHECK_INPUT(!overflow, "{}: shape {} overflows 64-bit element/byte counts", entry_prefix(what, t.name),
                      shape_str(t.shape));
  return nbytes;
}

// Fills t.begin and t.end from the entry's "data_offsets", checked against the data section.
void parse_entry_offsets(const std::string& what, const json& e, std::uint64_t data_bytes, TensorInfo& t) {
  const auto o = e.find("data_offsets");
  SCALPEL_CHECK_INPUT(o != e.end(), "{}: header entry has no \"data_offsets\"", entry_prefix(what, t.name));
  SCALPEL_CHECK_INPUT(o->is_array() && o->size() == 2,
                      "{}: \"data_offsets\" is {}, not an array [begin, end]", entry_prefix(what, t.name),
                      short_dump(*o));
  for (int k = 0; k < 2; ++k) {
    std::uint64_t& v = k == 0 ? t.begin : t.end;
    SCALPEL_CHECK_INPUT(as_index((*o)[k], v), "{}: data_offsets {} is {} ({})", entry_prefix(what, t.name),
                        k == 0 ? "begin" : "end", short_dump((*o)[k]), not_index_reason((*o)[k]));
  }
  SCALPEL_CHECK_INPUT(t.begin <= t.end, "{}: data_offsets begin {} > end {}", entry_prefix(what, t.name),
                      t.begin, t.end);
  SCALPEL_CHECK_INPUT(t.end <= data_bytes,
                      "{}: data_offsets [{}, {}] run past the end of the data section ({} bytes)",
                      entry_prefix(what, t.name), t.begin, t.end, data_bytes);
}

TensorInfo parse_entry(const std::string& what, const std::string& name, const json& e,
                       std::uint64_t data_bytes) {
  SCALPEL_CHECK_INPUT(e.is_object(), "{}: header entry is a {}, not a JSON object", entry_prefix(what, name),
                      e.type_name());
  TensorInfo t;
  t.name = name;
  t.dtype = parse_entry_dtype(what, name, e);
  const std::uint64_t nbytes = parse_entry_shape(what, e, t);
  parse_entry_offsets(what, e, data_bytes, t);
  SCALPEL_CHECK_INPUT(nbytes == t.end - t.begin,
                      "{}: shape {} of {} needs {} bytes but data_offsets [{}, {}] hold {}",
                      entry_prefix(what, name), shape_str(t.shape), dtype_name(t.dtype), nbytes, t.begin,
                      t.end, t.end - t.begin);
  return t;
}

// The length of the JSON header, checked against the file size and the header limit.
std::uint64_t parse_header_length(std::span<const std::byte> file, const std::string& what) {
  SCALPEL_CHECK_INPUT(file.size() >= 8,
                      "{}: file is {} bytes, shorter than the 8-byte safetensors header length",
                      what, file.size());
  const std::uint64_t header_bytes = read_le64(file.data());
  const std::uint64_t rest = file.size() - 8;
  SCALPEL_CHECK_INPUT(header_bytes <= rest,
                      "{}: header length {} runs past the end of the file ({} bytes): not a "
                      "safetensors file, or truncated",
                      what, header_bytes, file.size());
  SCALPEL_CHECK_INPUT(header_bytes <= kMaxSafetensorsHeaderBytes,
                      "{}: header length {} exceeds the {}-byte limit: not a safetensors file", what,
                      header_bytes, kMaxSafetensorsHeaderBytes);
  return header_bytes;
}

// The header text as a JSON object, refusing nesting deeper than kMaxJsonDepth while parsing.
json parse_header_json(const char* first, const char* last, const std::string& what) {
  json root;
  try {
    const json::parser_callback_t limit_depth = [&](int depth, json::parse_event_t ev, json&) {
      if ((ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) &&
          depth >= kMaxJsonDepth)
        SCALPEL_INPUT_ERROR("{}: header JSON nests deeper than {} levels", what, kMaxJsonDepth);
      return true;
    };
    root = json::parse(first, last, limit_depth);
  } catch (const json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: header is not valid JSON: {}", what, e.what());
  }
  SCALPEL_CHECK_INPUT(root.is_object(), "{}: header is a JSON {}, not an object", what,
                      root.type_name());
  return root;
}

// Copies the string values of the "__metadata__" object `m` into `out`.
void parse_header_metadata(const json& m, const std::string& what, std::map<std::string, std::string>& out) {
  SCALPEL_CHECK_INPUT(m.is_object(), "{}: __metadata__ is a {}, not an object", what, m.type_name());
  for (auto kv = m.begin(); kv != m.end(); ++kv) {
    SCALPEL_CHECK_INPUT(kv.value().is_string(), "{}: __metadata__ '{}' is a {}, not a string", what,
                        kv.key(), kv.value().type_name());
    out[kv.key()] = kv.value().get<std::string>();
  }
}

// Sorts `tensors` by offset and refuses two non-empty tensors that share a byte.
void sort_and_check_overlap(std::vector<TensorInfo>& tensors, const std::string& what) {
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Empty tensors own no bytes, so they may sit anywhere; non-empty ones must not share a byte.
  const TensorInfo* prev = nullptr;
  for (const auto& t : tensors) {
    if (t.begin == t.end) continue;
    SCALPEL_CHECK_INPUT(!prev || t.begin >= prev->end,
                        "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] have overlapping data_offsets",
                        what, prev ? prev->name : "", prev ? prev->begin : 0, prev ? prev->end : 0,
                        t.name, t.begin, t.end);
    if (!prev || t.end > prev->end) prev = &t;
  }
}

}  // namespace

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, const std::string& what) {
  SafetensorsHeader h;
  h.header_bytes = parse_header_length(file, what);
  const std::uint64_t data_bytes = file.size() - 8 - h.header_bytes;
  const char* first = reinterpret_cast<const char*>(file.data()) + 8;
  const json root = parse_header_json(first, first + h.header_bytes, what);
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__")
      parse_header_metadata(it.value(), what, h.metadata);
    else
      h.tensors.push_back(parse_entry(what, it.key(), it.value(), data_bytes));
  }
  sort_and_check_overlap(h.tensors, what);
  return h;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& path) {
  const std::string what = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT || e == ENOTDIR || e == EACCES || e == ELOOP || e == ENAMETOOLONG)
      SCALPEL_INPUT_ERROR("{}: cannot open safetensors file: {}", what, std::strerror(e));
    SCALPEL_RUNTIME_ERROR("{}: cannot open safetensors file: {}", what, std::strerror(e));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    SCALPEL_RUNTIME_ERROR("{}: cannot stat: {}", what, std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    SCALPEL_INPUT_ERROR("{}: not a regular file", what);
  }
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->size_ = static_cast<std::size_t>(st.st_size);
  if (f->size_ > 0) {
    // Private read-only mapping: pages are faulted in only where a tensor is read, and the kernel
    // may drop them again under memory pressure, so models larger than RAM can be walked.
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      SCALPEL_RUNTIME_ERROR("{}: cannot mmap {} bytes: {}", what, f->size_, std::strerror(e));
    }
    const std::size_t n = f->size_;
    f->map_ = std::shared_ptr<void>(p, [n](void* q) { ::munmap(q, n); });
    f->base_ = static_cast<const std::byte*>(p);
  }
  ::close(fd);  // the mapping stays valid without the descriptor

  f->header_ = parse_safetensors_header({f->base_, f->size_}, what);
  for (std::size_t i = 0; i < f->header_.tensors.size(); ++i)
    f->index_.emplace(f->header_.tensors[i].name, i);
  return f;
}

SafetensorsFile::~SafetensorsFile() = default;

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  const TensorInfo* t = find(name);
  SCALPEL_CHECK_INPUT(t, "{}: no tensor '{}' in this file", path_.string(), name);
  return *t;
}

Tensor SafetensorsFile::view(std::string_view name) const {
  const TensorInfo& t = info(name);
  // const_cast: Tensor has no const flavour; the pages are PROT_READ, so a write would fault
  // rather than corrupt the file.
  auto* p = const_cast<std::byte*>(base_ + header_.data_start() + t.begin);
  return Tensor::wrap(p, t.shape, t.dtype, Device::cpu, map_);
}

namespace {

// Converts n elements at `src` (any alignment) into a new fp32 tensor of `shape`.
Tensor convert_bytes(DType dtype, const std::byte* src, std::size_t n, Shape shape) {
  Tensor out = Tensor::empty(std::move(shape), DType::f32);
  if (n == 0) return out;
  const std::size_t esize = dtype_size(dtype);
  if (reinterpret_cast<std::uintptr_t>(src) % esize == 0) {
    convert_to_f32(dtype, src, out.f32(), n);
  } else {
    // A file may place a tensor at an offset that is not a multiple of its element size; typed
    // loads from there are undefined behaviour, so stage the bytes through an aligned buffer.
    const auto staged = Buffer::host(n * esize);
    std::memcpy(staged->data(), src, n * esize);
    convert_to_f32(dtype, staged->data(), out.f32(), n);
  }
  return out;
}

}  // namespace

Tensor SafetensorsFile::read_rows_f32(std::string_view name, std::int64_t r0, std::int64_t r1) const {
  const TensorInfo& t = info(name);
  SCALPEL_CHECK_INPUT(is_float_dtype(t.dtype), "{}: tensor '{}' is {}, which does not convert to F32",
                      path_.string(), name, dtype_name(t.dtype));
  SCALPEL_CHECK_INPUT(!t.shape.empty(), "{}: tensor '{}' is a scalar and has no rows", path_.string(),
                      name);
  const std::int64_t rows = t.shape[0];
  SCALPEL_CHECK_INPUT(0 <= r0 && r0 <= r1 && r1 <= rows,
                      "{}: rows [{}, {}) of tensor '{}' outside its {} rows (shape {})",
                      path_.string(), r0, r1, name, rows, shape_str(t.shape));
  // The header check bounded every partial product of the shape, so these cannot overflow.
  std::size_t cols = 1;
  for (std::size_t i = 1; i < t.shape.size(); ++i) cols *= static_cast<std::size_t>(t.shape[i]);
  const std::size_t row_bytes = cols * dtype_size(t.dtype);
  Shape out = t.shape;
  out[0] = r1 - r0;
  const std::byte* src =
      base_ + header_.data_start() + t.begin + static_cast<std::size_t>(r0) * row_bytes;
  return convert_bytes(t.dtype, src, static_cast<std::size_t>(r1 - r0) * cols, std::move(out));
}

Tensor SafetensorsFile::read_f32(std::string_view name) const {
  const TensorInfo& t = info(name);
  if (t.shape.empty()) {
    SCALPEL_CHECK_INPUT(is_float_dtype(t.dtype),
                        "{}: tensor '{}' is {}, which does not convert to F32", path_.string(), name,
                        dtype_name(t.dtype));
    return convert_bytes(t.dtype, base_ + header_.data_start() + t.begin, 1, {});
  }
  return read_rows_f32(name, 0, t.shape[0]);
}

namespace {

void write_all(int fd, const void* data, std::size_t n, const std::string& what) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    // Linux writes at most ~2 GiB per call; loop on short writes and EINTR.
    const ssize_t w = ::write(fd, p, std::min<std::size_t>(n, 1u << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      SCALPEL_RUNTIME_ERROR("{}: write failed: {}", what, std::strerror(errno));
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

// Closes the descriptor and removes the temporary file unless the write was committed.
struct TmpFile {
  fs::path path;
  int fd = -1;
  bool committed = false;
  ~TmpFile() {
    if (fd >= 0) ::close(fd);
    if (!committed) ::unlink(path.c_str());
  }
};

// The header text for `tensors` and `metadata`, each name and tensor checked, ready to write.
std::string build_header(const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata, const std::string& what) {
  // ordered_json keeps the entries in the caller's order, which is also the data order.
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = h["__metadata__"];
    m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  std::set<std::string> seen;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    SCALPEL_CHECK_INPUT(name != "__metadata__", "{}: '__metadata__' cannot be a tensor name", what);
    SCALPEL_CHECK_INPUT(seen.insert(name).second, "{}: tensor '{}' given twice", what, name);
    SCALPEL_CHECK(t.defined(), "{}: tensor '{}' is undefined", what, name);
    SCALPEL_CHECK(t.device() == Device::cpu, "{}: tensor '{}' is not on the host", what, name);
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = std::string(dtype_name(t.dtype()));
    e["shape"] = t.shape();
    e["data_offsets"] = nlohmann::ordered_json::array({offset, offset + t.nbytes()});
    h[name] = std::move(e);
    offset += t.nbytes();
  }
  std::string header;
  try {
    header = h.dump();
  } catch (const nlohmann::json::exception& e) {
    SCALPEL_INPUT_ERROR("{}: a tensor name or metadata string is not valid UTF-8 ({})", what,
                        e.what());
  }
  // Pad with spaces (valid JSON whitespace) so that the data section starts 8-byte aligned.
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

// Writes the length, the header and every tensor's bytes to tmp.fd, then fsyncs and closes it.
void write_file_body(TmpFile& tmp, const std::string& header,
                     const std::vector<std::pair<std::string, Tensor>>& tensors) {
  const std::string tmp_what = tmp.path.string();
  std::byte len[8];
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::byte>((n >> (8 * i)) & 0xffu);
  write_all(tmp.fd, len, 8, tmp_what);
  write_all(tmp.fd, header.data(), header.size(), tmp_what);
  for (const auto& [name, t] : tensors)
    if (t.nbytes() > 0) write_all(tmp.fd, t.raw(), t.nbytes(), tmp_what);

  if (::fsync(tmp.fd) != 0) SCALPEL_RUNTIME_ERROR("{}: fsync failed: {}", tmp_what, std::strerror(errno));
  const int fd = tmp.fd;
  tmp.fd = -1;
  if (::close(fd) != 0) SCALPEL_RUNTIME_ERROR("{}: close failed: {}", tmp_what, std::strerror(errno));
}

// The rename is durable only once the directory entry is on disk too.
void fsync_parent_folder(const fs::path& path) {
  fs::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string what = path.string();
  const std::string header = build_header(tensors, metadata, what);

  TmpFile tmp;
  tmp.path = path;
  tmp.path += ".tmp";
  const std::string tmp_what = tmp.path.string();
  tmp.fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (tmp.fd < 0) SCALPEL_RUNTIME_ERROR("{}: cannot create: {}", tmp_what, std::strerror(errno));
  write_file_body(tmp, header, tensors);
  if (::rename(tmp.path.c_str(), path.c_str()) != 0)
    SCALPEL_RUNTIME_ERROR("{}: cannot rename {} into place: {}", what, tmp_what, std::strerror(errno));
  tmp.committed = true;
  fsync_parent_folder(path);
}

}  // namespace scalpel::io
