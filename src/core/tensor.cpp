// Tensor storage and views.
#include "scalpel/core/tensor.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

#include "scalpel/core/error.hpp"

namespace scalpel {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::int64_t shape_numel(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::shared_ptr<Buffer> Buffer::host(std::size_t bytes, bool zero) {
  const std::size_t rounded = (bytes + 63) / 64 * 64;
  void* p = rounded ? std::aligned_alloc(64, rounded) : nullptr;
  if (rounded && !p) SCALPEL_RUNTIME_ERROR("out of host memory allocating {} bytes", bytes);
  if (zero && p) std::memset(p, 0, rounded);
  return std::make_shared<Buffer>(p, bytes, Device::cpu, [](void* q) { std::free(q); });
}

Tensor::Tensor(std::shared_ptr<Buffer> buf, std::size_t byte_offset, Shape shape, DType dtype)
    : buf_(std::move(buf)), offset_(byte_offset), shape_(std::move(shape)), dtype_(dtype) {
  for (auto d : shape_) SCALPEL_CHECK(d >= 0, "negative dimension in {}", shape_str(shape_));
  SCALPEL_CHECK(!buf_ || offset_ + nbytes() <= buf_->bytes(), "tensor {} past its buffer",
                shape_str(shape_));
}

Tensor Tensor::empty(Shape shape, DType dtype) {
  const auto bytes = static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype);
  return Tensor(Buffer::host(bytes), 0, std::move(shape), dtype);
}

Tensor Tensor::zeros(Shape shape, DType dtype) {
  const auto bytes = static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype);
  return Tensor(Buffer::host(bytes, true), 0, std::move(shape), dtype);
}

Tensor Tensor::from(std::span<const float> values, Shape shape) {
  SCALPEL_CHECK(static_cast<std::int64_t>(values.size()) == shape_numel(shape),
                "{} values for shape {}", values.size(), shape_str(shape));
  Tensor t = empty(std::move(shape));
  std::memcpy(t.raw(), values.data(), values.size() * 4);
  return t;
}

Tensor Tensor::wrap(void* data, Shape shape, DType dtype, Device device, std::shared_ptr<void> keep) {
  const auto bytes = static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype);
  auto buf = std::make_shared<Buffer>(data, bytes, device, [keep](void*) {});
  return Tensor(std::move(buf), 0, std::move(shape), dtype);
}

std::int64_t Tensor::size(int d) const {
  const int n = dim();
  if (d < 0) d += n;
  SCALPEL_CHECK(d >= 0 && d < n, "dim {} of a {}-d tensor", d, n);
  return shape_[d];
}

float* Tensor::f32() const {
  SCALPEL_CHECK(dtype_ == DType::f32, "tensor is {}, not F32", dtype_name(dtype_));
  return data<float>();
}

double* Tensor::f64() const {
  SCALPEL_CHECK(dtype_ == DType::f64, "tensor is {}, not F64", dtype_name(dtype_));
  return data<double>();
}

Tensor Tensor::slice_rows(std::int64_t begin, std::int64_t end) const {
  SCALPEL_CHECK(dim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
                "rows [{}, {}) of {}", begin, end, shape_str(shape_));
  Shape s = shape_;
  s[0] = end - begin;
  const auto row_bytes = static_cast<std::size_t>(cols()) * dtype_size(dtype_);
  return Tensor(buf_, offset_ + static_cast<std::size_t>(begin) * row_bytes, std::move(s), dtype_);
}

Tensor Tensor::reshape(Shape shape) const {
  SCALPEL_CHECK(shape_numel(shape) == numel(), "reshape {} to {}", shape_str(shape_), shape_str(shape));
  return Tensor(buf_, offset_, std::move(shape), dtype_);
}

Tensor Tensor::clone() const {
  SCALPEL_CHECK(device() == Device::cpu, "clone() of a device tensor");
  Tensor t = empty(shape_, dtype_);
  std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

Tensor Tensor::to_f32() const {
  SCALPEL_CHECK(device() == Device::cpu, "to_f32() of a device tensor");
  Tensor t = empty(shape_, DType::f32);
  convert_to_f32(dtype_, raw(), t.f32(), static_cast<std::size_t>(numel()));
  return t;
}

}  // namespace scalpel
