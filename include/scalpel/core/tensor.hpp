// Tensor: a dense, row-major block of elements with a dtype, a shape and a device. Copies of a
// Tensor share storage (like a shared_ptr), so a view (a row range, a reshape) is just another
// Tensor over the same buffer; clone() makes a deep copy. Backends own the arithmetic; this file
// only knows memory.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "scalpel/core/dtype.hpp"

namespace scalpel {

enum class Device : std::uint8_t { cpu, cuda };

using Shape = std::vector<std::int64_t>;
std::string shape_str(const Shape& s);
std::int64_t shape_numel(const Shape& s);

// A block of bytes on a device. The deleter lets a backend (cuda) or a memory map own it.
class Buffer {
 public:
  Buffer(void* data, std::size_t bytes, Device device, std::function<void(void*)> deleter)
      : data_(data), bytes_(bytes), device_(device), deleter_(std::move(deleter)) {}
  ~Buffer() {
    if (deleter_) deleter_(data_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

  // 64-byte aligned host memory (zero-filled when `zero`).
  static std::shared_ptr<Buffer> host(std::size_t bytes, bool zero = false);

 private:
  void* data_;
  std::size_t bytes_;
  Device device_;
  std::function<void(void*)> deleter_;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Buffer> buf, std::size_t byte_offset, Shape shape, DType dtype);

  // Host tensors.
  static Tensor empty(Shape shape, DType dtype = DType::f32);
  static Tensor zeros(Shape shape, DType dtype = DType::f32);
  static Tensor from(std::span<const float> values, Shape shape);
  // A tensor over memory someone else owns (a memory map, a caller's array); `keep` keeps it alive.
  static Tensor wrap(void* data, Shape shape, DType dtype, Device device = Device::cpu,
                     std::shared_ptr<void> keep = nullptr);

  bool defined() const { return buf_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return buf_ ? buf_->device() : Device::cpu; }
  const Shape& shape() const { return shape_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  std::int64_t size(int d) const;  // negative d counts from the end
  std::int64_t numel() const { return shape_numel(shape_); }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  // Rows of a 2-D view (or the leading dim of an N-D one).
  std::int64_t rows() const { return shape_.empty() ? 1 : shape_[0]; }
  std::int64_t cols() const {
    std::int64_t n = 1;
    for (std::size_t i = 1; i < shape_.size(); ++i) n *= shape_[i];
    return n;
  }

  void* raw() const { return static_cast<char*>(buf_->data()) + offset_; }
  template <class T>
  T* data() const { return static_cast<T*>(raw()); }
  float* f32() const;  // checked: dtype must be f32 (a device address for a device tensor)
  double* f64() const;

  // Views sharing storage.
  Tensor slice_rows(std::int64_t begin, std::int64_t end) const;  // along dim 0
  Tensor reshape(Shape shape) const;
  // Deep copy of a host tensor (clone_on(backend, t) copies on a device).
  Tensor clone() const;
  // Host fp32 copy of any float dtype.
  Tensor to_f32() const;

 private:
  std::shared_ptr<Buffer> buf_;
  std::size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::f32;
};

}  // namespace scalpel
