// Private to src/io: RAII owners for HDF5 ids (files, groups, datasets, dataspaces, datatypes,
// property lists, attributes) and a guard that serialises HDF5 calls and turns its error stack into
// text for scalpel Errors, so no HDF5 handle leaks on an exception and nothing prints to stderr.
#pragma once
#include <hdf5.h>

#include <mutex>
#include <string>
#include <utility>

namespace scalpel::io::h5 {

// One owned hid_t with the close function of its kind. Move-only; invalid (<0) ids are allowed so
// that a failed create can be checked after wrapping.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  explicit operator bool() const { return valid(); }
  // Closes now and reports whether HDF5 accepted it (a file close flushes, so it can fail).
  bool close() {
    if (id_ < 0) return true;
    const herr_t rc = close_(id_);
    id_ = -1;
    return rc >= 0;
  }

 private:
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

inline Handle file(hid_t id) { return {id, H5Fclose}; }
inline Handle group(hid_t id) { return {id, H5Gclose}; }
inline Handle dataset(hid_t id) { return {id, H5Dclose}; }
inline Handle dataspace(hid_t id) { return {id, H5Sclose}; }
inline Handle datatype(hid_t id) { return {id, H5Tclose}; }
inline Handle plist(hid_t id) { return {id, H5Pclose}; }
inline Handle attribute(hid_t id) { return {id, H5Aclose}; }

// The serial HDF5 build is not thread-safe, and its default error handler prints a stack trace to
// stderr. Every use of HDF5 in scalpel holds one Session: it locks the process-wide HDF5 mutex and
// silences the automatic printing (restoring the previous handler after), so failures surface only
// as scalpel Errors carrying last_error().
class Session {
 public:
  Session();
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

 private:
  std::unique_lock<std::recursive_mutex> lock_;
  H5E_auto2_t old_func_ = nullptr;
  void* old_data_ = nullptr;
};

// The messages on HDF5's error stack (innermost cause first, e.g. "data error detected by
// Fletcher32 checksum"), joined with "; ", and the stack cleared. "" when the stack is empty.
std::string last_error();

}  // namespace scalpel::io::h5
