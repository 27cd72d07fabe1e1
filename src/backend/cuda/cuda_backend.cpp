// CUDA backend: cuBLAS for GEMM and SYRK (the forward and the Hessians), cuSOLVER for Cholesky,
// its inverse and SparseGPT's factor, and the kernels of kernels.hpp for the rest. One GPU per
// rank (local rank % visible devices). Everything runs in order on the legacy default stream;
// device memory comes from a caching allocator, since a layer allocates the same shapes batch
// after batch and cudaFree synchronises the device.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <vector>

#include "../lowp.hpp"
#include "../op_checks.hpp"
#include "kernels.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"

namespace scalpel {

std::shared_ptr<Uploader> make_cuda_uploader(int device, std::function<Tensor(const Shape&, DType)> alloc);  // uploader.cpp

namespace {

void check_cuda(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) SCALPEL_RUNTIME_ERROR("CUDA {}: {} ({})", what, cudaGetErrorString(rc), cudaGetErrorName(rc));
}
void launched(const char* what) { check_cuda(cudaGetLastError(), what); }

const char* cublas_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialised";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "error";
  }
}
void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) SCALPEL_RUNTIME_ERROR("cuBLAS {}: {} (status {})", what, cublas_name(s), int(s));
}
void check_cusolver(cusolverStatus_t s, const char* what) {
  if (s != CUSOLVER_STATUS_SUCCESS) SCALPEL_RUNTIME_ERROR("cuSOLVER {}: status {}", what, int(s));
}

// Size classes: powers of two up to 1 MiB, then multiples of 2 MiB. Freed blocks wait in their
// class for the next request of that class; when cudaMalloc fails, the cache is returned to the
// driver and the request tried once more.
class DeviceAllocator {
 public:
  explicit DeviceAllocator(int device) : device_(device) {}
  ~DeviceAllocator() { release_cached(); }

  void* allocate(std::size_t bytes) {
    const std::size_t size = size_class(std::max<std::size_t>(bytes, 1));
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= size;
        return p;
      }
    }
    void* p = nullptr;
    cudaError_t rc = cudaMalloc(&p, size);
    if (rc == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached();
      rc = cudaMalloc(&p, size);
    }
    if (rc != cudaSuccess) {
      cudaGetLastError();
      std::size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      SCALPEL_RUNTIME_ERROR("CUDA device {}: cannot allocate {:.2f} GB ({}); {:.2f} of {:.2f} GB free. Lower "
                            "calibration.batch or use more ranks (scalpel plan shows the per-rank peak)",
                            device_, double(size) / 1e9, cudaGetErrorString(rc), double(free_b) / 1e9,
                            double(total_b) / 1e9);
    }
    return p;
  }
  void release(void* p, std::size_t bytes) {
    const std::size_t size = size_class(std::max<std::size_t>(bytes, 1));
    std::lock_guard<std::mutex> lock(mu_);
    free_[size].push_back(p);
    cached_ += size;
  }
  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    cudaDeviceSynchronize();  // blocks in flight may still be read by enqueued work
    for (auto& [size, ptrs] : free_)
      for (void* p : ptrs) cudaFree(p);
    free_.clear();
    cached_ = 0;
  }

 private:
  static std::size_t size_class(std::size_t b) {
    constexpr std::size_t kMiB = std::size_t{1} << 20;
    if (b <= kMiB) {
      std::size_t c = 512;
      while (c < b) c <<= 1;
      return c;
    }
    return (b + 2 * kMiB - 1) / (2 * kMiB) * (2 * kMiB);
  }
  int device_;
  std::mutex mu_;
  std::map<std::size_t, std::vector<void*>> free_;
  std::size_t cached_ = 0;
};

void check_dev(const Tensor& t, DType dt, const char* what) {
  SCALPEL_CHECK(t.defined() && t.device() == Device::cuda && t.dtype() == dt, "{}: expected a CUDA {} tensor, got {} {}",
                what, dtype_name(dt), t.defined() && t.device() == Device::cuda ? "CUDA" : "host",
                t.defined() ? dtype_name(t.dtype()) : "undefined");
}
void check_f32(const Tensor& t, const char* what) { check_dev(t, DType::f32, what); }
void check_2d(const Tensor& t, const char* what) {
  check_f32(t, what);
  SCALPEL_CHECK(t.dim() == 2, "{}: expected 2-D, got {}", what, shape_str(t.shape()));
}
// A 2-D device tensor of a forward dtype (f32, f16, bf16).
void check_2d_float(const Tensor& t, const char* what) {
  SCALPEL_CHECK(t.defined() && t.device() == Device::cuda &&
                    (t.dtype() == DType::f32 || low_precision(t.dtype())) && t.dim() == 2,
                "{}: expected a 2-D CUDA float tensor", what);
}
cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::f16: return CUDA_R_16F;
    case DType::bf16: return CUDA_R_16BF;
    default: SCALPEL_CHECK(false, "no cuBLAS type for {}", dtype_name(t));
  }
}
// The 2-byte dtype all of these share, or f32 when they do not all share one (the call then
// takes the generic fp32 stand-ins).
DType shared_low(std::initializer_list<const Tensor*> ts) {
  DType seen = DType::f32;
  for (const Tensor* t : ts) {
    if (!t) continue;
    if (!low_precision(t->dtype()) || (seen != DType::f32 && seen != t->dtype())) return DType::f32;
    seen = t->dtype();
  }
  return seen;
}
void check_mask(const Tensor& t, const char* what) {
  check_dev(t, DType::u8, what);
  SCALPEL_CHECK(t.dim() == 2, "{}: expected 2-D, got {}", what, shape_str(t.shape()));
}
int as_int(std::int64_t v, const char* what) {
  SCALPEL_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "{} = {} exceeds the 32-bit sizes of cuBLAS/cuSOLVER",
                what, v);
  return static_cast<int>(v);
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const BackendOptions& o) : opt_(o) {
    int count = 0;
    const cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count == 0) {
      cudaGetLastError();
      SCALPEL_INPUT_ERROR("device 'cuda': no CUDA GPU is visible to this process ({}); use device: cpu, or run on a "
                          "GPU node (CUDA_VISIBLE_DEVICES, Slurm --gpus-per-task)",
                          rc != cudaSuccess ? cudaGetErrorString(rc) : "cudaGetDeviceCount found 0 devices");
    }
    device_ = o.local_rank % count;
    check_cuda(cudaSetDevice(device_), "SetDevice");
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, device_), "GetDeviceProperties");
    name_ = prop.name;
    memory_ = static_cast<std::int64_t>(prop.totalGlobalMem);
    alloc_ = std::make_shared<DeviceAllocator>(device_);
    check_cublas(cublasCreate(&blas_), "Create");
    check_cublas(cublasSetStream(blas_, nullptr), "SetStream");
    check_cusolver(cusolverDnCreate(&solver_), "Create");
    check_cusolver(cusolverDnSetStream(solver_, nullptr), "SetStream");
    info_ = empty({2}, DType::i32);
    if (const char* leaf = std::getenv("SCALPEL_CUDA_TRTRI_LEAF")) trtri_leaf_ = std::max(16L, std::atol(leaf));
    log::debug("cuda backend on device {} of {}: {} ({:.1f} GB), TF32 forward {} hessian {}", device_, count, name_,
               double(prop.totalGlobalMem) / 1e9, o.tf32_forward, o.tf32_hessian);
  }
  ~CudaBackend() override {
    info_ = Tensor();
    cudaDeviceSynchronize();
    if (solver_) cusolverDnDestroy(solver_);
    if (blas_) cublasDestroy(blas_);
  }

  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::cuda; }
  void set_threads(int) override {}
  void synchronize() override { check_cuda(cudaDeviceSynchronize(), "DeviceSynchronize"); }
  std::int64_t memory_bytes() const override { return memory_; }

  // ---- memory ----
  Tensor empty(const Shape& shape, DType dtype = DType::f32) override {
    const std::size_t bytes = static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype);
    auto alloc = alloc_;
    void* p = alloc->allocate(bytes);
    auto buf = std::make_shared<Buffer>(p, bytes, Device::cuda, [alloc, bytes](void* q) { alloc->release(q, bytes); });
    return Tensor(std::move(buf), 0, shape, dtype);
  }
  Tensor zeros(const Shape& shape, DType dtype = DType::f32) override {
    Tensor t = empty(shape, dtype);
    check_cuda(cudaMemsetAsync(t.raw(), 0, t.nbytes()), "MemsetAsync");
    return t;
  }
  Tensor upload(const Tensor& host) override {
    SCALPEL_CHECK(host.defined(), "upload of an undefined tensor");
    const DType dt = host.dtype();
    if (dt == DType::f16 || dt == DType::bf16) {
      // The 2-byte values travel as they are and widen on the device (half the PCIe bytes). A
      // device tensor (rows gathered by NCCL) widens in place of the copy.
      const Tensor raw = host.device() == Device::cuda ? host : upload_exact(host);
      Tensor out = empty(host.shape(), DType::f32);
      const auto* in = static_cast<const std::uint16_t*>(raw.raw());
      if (dt == DType::f16)
        cuda::f16_to_f32(in, out.f32(), host.numel());
      else
        cuda::bf16_to_f32(in, out.f32(), host.numel());
      launched("f16/bf16 -> f32");
      return out;
    }
    if (dt == DType::f64) return upload_exact(host.to_f32());
    return upload_exact(host);  // f32, masks and ids keep their type
  }
  Tensor upload_exact(const Tensor& host) override {
    Tensor out = empty(host.shape(), host.dtype());
    if (host.nbytes())
      check_cuda(cudaMemcpy(out.raw(), host.raw(), host.nbytes(),
                            host.device() == Device::cuda ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice),
                 "Memcpy to device");
    return out;
  }
  std::shared_ptr<Uploader> make_uploader() override {
    return make_cuda_uploader(device_, [this](const Shape& s, DType d) { return empty(s, d); });
  }
  Tensor download(const Tensor& t) override {
    if (t.device() == Device::cpu) return t;
    Tensor host = Tensor::empty(t.shape(), t.dtype());
    if (t.nbytes()) check_cuda(cudaMemcpy(host.raw(), t.raw(), t.nbytes(), cudaMemcpyDeviceToHost), "Memcpy to host");
    return host;
  }
  void copy(const Tensor& src, Tensor& dst) override {
    SCALPEL_CHECK(src.nbytes() == dst.nbytes() && src.dtype() == dst.dtype(), "copy {} -> {}", shape_str(src.shape()),
                  shape_str(dst.shape()));
    if (src.nbytes()) check_cuda(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDefault), "MemcpyAsync");
  }
  void convert(const Tensor& src, Tensor& dst) override {
    SCALPEL_CHECK(src.numel() == dst.numel() && src.device() == Device::cuda && dst.device() == Device::cuda,
                  "convert {} -> {}", shape_str(src.shape()), shape_str(dst.shape()));
    const auto n = src.numel();
    if (n == 0) return;
    if (src.dtype() == dst.dtype()) return copy(src, dst);
    if (src.dtype() != DType::f32 && dst.dtype() != DType::f32) {
      Tensor mid = empty(src.shape(), DType::f32);
      convert(src, mid);
      return convert(mid, dst);
    }
    if (src.dtype() == DType::f32) {
      check_dev(src, DType::f32, "convert src");
      SCALPEL_CHECK(low_precision(dst.dtype()), "convert F32 to {}", dtype_name(dst.dtype()));
      auto* out = static_cast<std::uint16_t*>(dst.raw());
      if (dst.dtype() == DType::f16) cuda::f32_to_f16(src.f32(), out, n);
      else cuda::f32_to_bf16(src.f32(), out, n);
    } else {
      SCALPEL_CHECK(low_precision(src.dtype()), "convert {} to F32", dtype_name(src.dtype()));
      const auto* in = static_cast<const std::uint16_t*>(src.raw());
      if (src.dtype() == DType::f16) cuda::f16_to_f32(in, dst.f32(), n);
      else cuda::bf16_to_f32(in, dst.f32(), n);
    }
    launched("convert");
  }

  void accumulate_f64(const Tensor& a, Tensor& acc) override {
    check_f32(a, "accumulate_f64 a");
    check_dev(acc, DType::f64, "accumulate_f64 acc");
    SCALPEL_CHECK(acc.numel() == a.numel(), "accumulate_f64 {} into {}", shape_str(a.shape()), shape_str(acc.shape()));
    cuda::accumulate_f64(a.f32(), acc.data<double>(), a.numel());
    launched("accumulate_f64");
  }
  void f64_to_f32(const Tensor& acc, double scale, Tensor& out) override {
    check_f32(out, "f64_to_f32 out");
    check_dev(acc, DType::f64, "f64_to_f32 acc");
    SCALPEL_CHECK(acc.numel() == out.numel(), "f64_to_f32 {} into {}", shape_str(acc.shape()), shape_str(out.shape()));
    cuda::f64_to_f32(acc.data<double>(), scale, out.f32(), out.numel());
    launched("f64_to_f32");
  }
  void accumulate_upper_f64(const Tensor& a, Tensor& acc) override {
    check_2d(a, "accumulate_upper_f64 a");
    check_dev(acc, DType::f64, "accumulate_upper_f64 acc");
    const auto d = a.size(0);
    SCALPEL_CHECK(a.size(1) == d && acc.numel() == d * (d + 1) / 2, "accumulate_upper_f64 {} into {}",
                  shape_str(a.shape()), shape_str(acc.shape()));
    cuda::accumulate_upper_f64(a.f32(), acc.data<double>(), d);
    launched("accumulate_upper_f64");
  }
  void upper_f64_to_symmetric(const Tensor& acc, double scale, Tensor& out) override {
    check_2d(out, "upper_f64_to_symmetric out");
    check_dev(acc, DType::f64, "upper_f64_to_symmetric acc");
    const auto d = out.size(0);
    SCALPEL_CHECK(out.size(1) == d && acc.numel() == d * (d + 1) / 2, "upper_f64_to_symmetric {} into {}",
                  shape_str(acc.shape()), shape_str(out.shape()));
    cuda::upper_f64_to_f32(acc.data<double>(), scale, out.f32(), d);
    cuda::mirror_upper_to_lower(out.f32(), d);
    launched("upper_f64_to_symmetric");
  }

  // ---- dense ----
  // Row-major C [m, n] = alpha op(A) op(B) + beta C as the column-major Cᵀ = op(B)ᵀ op(A)ᵀ.
  void rm_gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
               std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc, bool tf32) {
    math(tf32);
    check_cublas(cublasSgemm(blas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, as_int(n, "n"),
                             as_int(m, "m"), as_int(k, "k"), &alpha, b, as_int(ldb, "ldb"), a, as_int(lda, "lda"), &beta,
                             c, as_int(ldc, "ldc")),
                 "Sgemm");
  }
  void rm_gemm_batched(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                       std::int64_t lda, std::int64_t sa, const float* b, std::int64_t ldb, std::int64_t sb, float beta,
                       float* c, std::int64_t ldc, std::int64_t sc, std::int64_t count, bool tf32) {
    math(tf32);
    check_cublas(cublasSgemmStridedBatched(blas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                           as_int(n, "n"), as_int(m, "m"), as_int(k, "k"), &alpha, b, as_int(ldb, "ldb"),
                                           sb, a, as_int(lda, "lda"), sa, &beta, c, as_int(ldc, "ldc"), sc,
                                           as_int(count, "batch")),
                 "SgemmStridedBatched");
  }
  // The same with typed operands (2-byte A and B on tensor cores, C of any forward dtype), fp32
  // accumulation throughout (reduced-precision split-K reductions disallowed).
  void rm_gemm_ex(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const void* a,
                  cudaDataType_t at, std::int64_t lda, std::int64_t sa, const void* b, cudaDataType_t bt,
                  std::int64_t ldb, std::int64_t sb, float beta, void* c, cudaDataType_t ct, std::int64_t ldc,
                  std::int64_t sc, std::int64_t count = 1) {
    check_cublas(cublasSetMathMode(blas_, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                                    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
                 "SetMathMode");
    check_cublas(cublasGemmStridedBatchedEx(blas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                            as_int(n, "n"), as_int(m, "m"), as_int(k, "k"), &alpha, b, bt,
                                            as_int(ldb, "ldb"), sb, a, at, as_int(lda, "lda"), sa, &beta, c, ct,
                                            as_int(ldc, "ldc"), sc, as_int(count, "batch"), CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT),
                 "GemmStridedBatchedEx");
  }

  void gemm(Trans ta, Trans tb, float alpha, const Tensor& a, const Tensor& b, float beta, Tensor& c) override {
    check_2d(a, "gemm A");
    check_2d(b, "gemm B");
    check_2d(c, "gemm C");
    const auto [m, n, k] = op_checks::gemm(ta, tb, a, b, c);
    if (m == 0 || n == 0) return;
    rm_gemm(ta == Trans::yes, tb == Trans::yes, m, n, k, alpha, a.f32(), a.size(1), b.f32(), b.size(1), beta, c.f32(),
            c.size(1), opt_.tf32_forward);
  }

  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    if (lowp::any({&x, &w, bias, &y})) return linear_lowp(x, w, bias, y);
    check_2d(x, "linear x");
    check_2d(w, "linear W");
    check_2d(y, "linear y");
    op_checks::linear(x, w, bias, y);
    const auto n = x.size(0), out = w.size(0);
    float beta = 0.0f;
    if (bias) {
      check_f32(*bias, "linear bias");
      cuda::broadcast_rows(bias->f32(), y.f32(), n, out);
      launched("bias");
      beta = 1.0f;
    }
    gemm(Trans::no, Trans::yes, 1.0f, x, w, beta, y);
  }

  // linear with 2-byte tensors: one tensor-core GEMM when x, W, bias and y share the dtype (the
  // bias in C, beta = 1: added to the fp32 sum before the rounding), fp32 stand-ins otherwise.
  void linear_lowp(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
    lowp::check_one_dtype({&x, &w, bias, &y}, "linear");
    const DType dt = shared_low({&x, &w, bias, &y});
    if (dt == DType::f32) {
      lowp::F32Scope f(*this);
      linear(f.in(x), f.in(w), f.in(bias), f.out(y, false));
      return f.commit();
    }
    for (const Tensor* t : {&x, &w, static_cast<const Tensor*>(&y)}) check_2d_float(*t, "linear");
    op_checks::linear(x, w, bias, y);
    const auto n = x.size(0), out = w.size(0), in = x.size(1);
    if (n == 0 || out == 0) return;
    float beta = 0.0f;
    if (bias) {
      check_dev(*bias, dt, "linear bias");
      cuda::broadcast_rows_u16(static_cast<const std::uint16_t*>(bias->raw()), static_cast<std::uint16_t*>(y.raw()), n,
                               out);
      launched("bias");
      beta = 1.0f;
    }
    const auto ct = cuda_type(dt);
    rm_gemm_ex(false, true, n, out, in, 1.0f, x.raw(), ct, in, 0, w.raw(), ct, in, 0, beta, y.raw(), ct, out, 0);
  }

  void syrk(float alpha, const Tensor& x, float beta, Tensor& h) override {
    if (low_precision(x.dtype())) {
      // Xᵀ X of 2-byte activations into fp32 H: both triangles in one tensor-core GEMM (the
      // products are exact in fp32; only the summation order differs from an fp32 SYRK).
      check_2d_float(x, "syrk X");
      check_2d(h, "syrk H");
      op_checks::syrk(x, h);
      const auto n = x.size(0), d = x.size(1);
      if (d == 0) return;
      const auto xt = cuda_type(x.dtype());
      rm_gemm_ex(true, false, d, d, n, alpha, x.raw(), xt, d, 0, x.raw(), xt, d, 0, beta, h.raw(), CUDA_R_32F, d, 0);
      return;
    }
    check_2d(x, "syrk X");
    check_2d(h, "syrk H");
    op_checks::syrk(x, h);
    const auto n = x.size(0), d = x.size(1);
    if (d == 0) return;
    if (opt_.tf32_hessian) {
      // Tensor cores: the full product (both triangles) in one TF32 GEMM.
      rm_gemm(true, false, d, d, n, alpha, x.f32(), d, x.f32(), d, beta, h.f32(), d, true);
      return;
    }
    math(false);
    // X row-major [n, d] is column-major Xᵀ [d, n]: C = Xᵀ X is syrk with trans = N. The column-major
    // lower triangle is the row-major upper one, mirrored below.
    check_cublas(cublasSsyrk(blas_, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, as_int(d, "d"), as_int(n, "n"), &alpha,
                             x.f32(), as_int(d, "d"), &beta, h.f32(), as_int(d, "d")),
                 "Ssyrk");
    cuda::mirror_upper_to_lower(h.f32(), d);
    launched("mirror");
  }

  void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) override {
    if (lowp::any({&x, w, b, &out})) {
      lowp::check_one_dtype({&x, w, b, &out}, "layer_norm");
      lowp::F32Scope f(*this);
      layer_norm(f.in(x), f.in(w), f.in(b), eps, f.out(out, false));
      return f.commit();
    }
    check_2d(x, "layer_norm x");
    SCALPEL_CHECK(out.numel() == x.numel(), "layer_norm out {}", shape_str(out.shape()));
    cuda::layer_norm(x.f32(), w ? w->f32() : nullptr, b ? b->f32() : nullptr, eps, out.f32(), x.size(0), x.size(1));
    launched("layer_norm");
  }
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    if (lowp::any({&x, &w, &out})) {
      lowp::check_one_dtype({&x, &w, &out}, "rms_norm");
      lowp::F32Scope f(*this);
      rms_norm(f.in(x), f.in(w), eps, f.out(out, false));
      return f.commit();
    }
    check_2d(x, "rms_norm x");
    SCALPEL_CHECK(w.numel() == x.size(1) && out.numel() == x.numel(), "rms_norm shapes");
    cuda::rms_norm(x.f32(), w.f32(), eps, out.f32(), x.size(0), x.size(1));
    launched("rms_norm");
  }
  void add(Tensor& y, const Tensor& x) override {
    if (lowp::any({&y, &x})) {
      lowp::check_one_dtype({&y, &x}, "add");
      lowp::F32Scope f(*this);
      add(f.out(y, true), f.in(x));
      return f.commit();
    }
    SCALPEL_CHECK(y.numel() == x.numel(), "add {} += {}", shape_str(y.shape()), shape_str(x.shape()));
    cuda::add(y.f32(), x.f32(), y.numel());
    launched("add");
  }
  void scale(Tensor& y, float alpha) override {
    if (lowp::any({&y})) {
      lowp::F32Scope f(*this);
      scale(f.out(y, true), alpha);
      return f.commit();
    }
    cuda::scale(y.f32(), alpha, y.numel());
    launched("scale");
  }
  void relu(Tensor& y) override {
    if (lowp::any({&y})) {
      lowp::F32Scope f(*this);
      relu(f.out(y, true));
      return f.commit();
    }
    cuda::relu(y.f32(), y.numel());
    launched("relu");
  }
  void gelu(Tensor& y) override {
    if (lowp::any({&y})) {
      lowp::F32Scope f(*this);
      gelu(f.out(y, true));
      return f.commit();
    }
    cuda::gelu(y.f32(), y.numel());
    launched("gelu");
  }
  void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) override {
    if (lowp::any({&gate, &up, &out})) {
      lowp::check_one_dtype({&gate, &up, &out}, "silu_mul");
      lowp::F32Scope f(*this);
      silu_mul(f.in(gate), f.in(up), f.out(out, false));
      return f.commit();
    }
    SCALPEL_CHECK(gate.numel() == up.numel() && out.numel() == up.numel(), "silu_mul shapes");
    cuda::silu_mul(gate.f32(), up.f32(), out.f32(), out.numel());
    launched("silu_mul");
  }
  void rope(Tensor& x, std::int64_t seqlen, std::int64_t heads, std::int64_t head_dim, const Tensor& cos,
            const Tensor& sin) override {
    if (lowp::any({&x})) {
      lowp::F32Scope f(*this);
      rope(f.out(x, true), seqlen, heads, head_dim, cos, sin);
      return f.commit();
    }
    check_2d(x, "rope x");
    op_checks::rope(x, seqlen, heads, head_dim, cos);
    cuda::rope(x.f32(), x.size(0), seqlen, heads, head_dim, cos.f32(), sin.f32());
    launched("rope");
  }

  void attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor& out,
                 Tensor* probs) override {
    op_checks::attention(q, k, v, s, out, probs);
    if (lowp::any({&q, &k, &v, &out})) return attention_lowp(q, k, v, s, out, probs);
    const auto T = s.seqlen, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
    const std::int64_t ldq = H * hd, ldk = KV * hd, group = H / KV;
    // Per sequence: the scores of all heads [H, T, T] (q·kᵀ for every key, the causal softmax
    // zeroes the future), then P·V. Query heads h = kv * group + g share kv head kv, so each
    // g is one strided batch over the kv heads.
    Tensor scratch;
    if (!probs) scratch = empty({H, T, T});
    for (std::int64_t b = 0; b < s.batch; ++b) {
      float* p = probs ? probs->f32() + b * H * T * T : scratch.f32();
      const float* qb = q.f32() + b * T * ldq;
      const float* kb = k.f32() + b * T * ldk;
      const float* vb = v.f32() + b * T * ldk;
      float* ob = out.f32() + b * T * ldq;
      for (std::int64_t g = 0; g < group; ++g)
        rm_gemm_batched(false, true, T, T, hd, s.scale, qb + g * hd, ldq, group * hd, kb, ldk, hd, 0.0f, p + g * T * T, T,
                        group * T * T, KV, opt_.tf32_forward);
      cuda::causal_softmax(p, H, T);
      launched("causal_softmax");
      for (std::int64_t g = 0; g < group; ++g)
        rm_gemm_batched(false, false, T, hd, T, 1.0f, p + g * T * T, T, group * T * T, vb, ldk, hd, 0.0f, ob + g * hd,
                        ldq, group * hd, KV, opt_.tf32_forward);
    }
  }

  // attention with 2-byte q, k, v and out (one dtype): per sequence, the scores q·kᵀ summed in fp32
  // on tensor cores into fp32 [H, T, T], the causal softmax in fp32, P rounded to the dtype, and
  // P·V on tensor cores into out (the same batching over kv heads as the fp32 path).
  void attention_lowp(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor& out,
                      Tensor* probs) {
    lowp::check_one_dtype({&q, &k, &v, &out}, "attention");
    SCALPEL_CHECK(!probs, "attention: probs are kept for fp32 forwards only (LLM Surgeon's backward)");
    const DType dt = shared_low({&q, &k, &v, &out});
    SCALPEL_CHECK(dt != DType::f32, "attention: q, k, v and out must share one dtype");
    for (const Tensor* t : {&q, &k, &v, static_cast<const Tensor*>(&out)}) check_2d_float(*t, "attention");
    const auto T = s.seqlen, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
    const std::int64_t ldq = H * hd, ldk = KV * hd, group = H / KV;
    const auto ct = cuda_type(dt);
    Tensor scores = empty({H, T, T}), p16 = empty({H, T, T}, dt);
    using u16 = std::uint16_t;
    for (std::int64_t b = 0; b < s.batch; ++b) {
      const u16* qb = static_cast<const u16*>(q.raw()) + b * T * ldq;
      const u16* kb = static_cast<const u16*>(k.raw()) + b * T * ldk;
      const u16* vb = static_cast<const u16*>(v.raw()) + b * T * ldk;
      u16* ob = static_cast<u16*>(out.raw()) + b * T * ldq;
      u16* pb = static_cast<u16*>(p16.raw());
      for (std::int64_t g = 0; g < group; ++g)
        rm_gemm_ex(false, true, T, T, hd, s.scale, qb + g * hd, ct, ldq, group * hd, kb, ct, ldk, hd, 0.0f,
                   scores.f32() + g * T * T, CUDA_R_32F, T, group * T * T, KV);
      cuda::causal_softmax(scores.f32(), H, T);
      launched("causal_softmax");
      convert(scores, p16);
      for (std::int64_t g = 0; g < group; ++g)
        rm_gemm_ex(false, false, T, hd, T, 1.0f, pb + g * T * T, ct, T, group * T * T, vb, ct, ldk, hd, 0.0f,
                   ob + g * hd, ct, ldq, group * hd, KV);
    }
  }

  void embedding(std::span<const std::int32_t> ids, const Tensor& table, Tensor& out) override {
    if (lowp::any({&table, &out})) {
      lowp::F32Scope f(*this);
      embedding(ids, f.in(table), f.out(out, false));
      return f.commit();
    }
    check_2d(table, "embedding table");
    op_checks::embedding(ids, table, out);
    const auto d = table.size(1);
    const Tensor dids = upload_exact(
        Tensor::wrap(const_cast<std::int32_t*>(ids.data()), {static_cast<std::int64_t>(ids.size())}, DType::i32));
    cuda::embedding(dids.data<std::int32_t>(), table.f32(), out.f32(), static_cast<std::int64_t>(ids.size()), d);
    launched("embedding");
  }

  void nll(const Tensor& logits, std::span<const std::int32_t> targets, std::span<double> out,
           std::span<std::uint8_t> is_argmax) override {
    check_2d(logits, "nll logits");
    op_checks::nll(logits, targets, out, is_argmax);
    const auto n = logits.size(0), V = logits.size(1);
    const Tensor dt = upload_exact(Tensor::wrap(const_cast<std::int32_t*>(targets.data()), {n}, DType::i32));
    Tensor res = empty({n}, DType::f64);
    Tensor hit = is_argmax.empty() ? Tensor() : empty({n}, DType::u8);
    cuda::nll_rows(logits.f32(), dt.data<std::int32_t>(), res.data<double>(),
                   hit.defined() ? hit.data<std::uint8_t>() : nullptr, n, V);
    launched("nll");
    const Tensor h = download(res);
    std::memcpy(out.data(), h.raw(), static_cast<std::size_t>(n) * sizeof(double));
    if (hit.defined()) {
      const Tensor hh = download(hit);
      std::memcpy(is_argmax.data(), hh.raw(), static_cast<std::size_t>(n));
    }
  }

  // ---- backward (LLM Surgeon's gradients) ----
  void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy, Tensor& dx) override {
    check_2d(x, "layer_norm_backward x");
    check_f32(dy, "layer_norm_backward dy");
    check_f32(dx, "layer_norm_backward dx");
    const auto n = x.size(0), d = x.size(1);
    SCALPEL_CHECK(dy.numel() == x.numel() && dx.numel() == x.numel() && (!w || w->numel() == d),
                  "layer_norm_backward x {} dy {} dx {}", shape_str(x.shape()), shape_str(dy.shape()),
                  shape_str(dx.shape()));
    cuda::layer_norm_backward(x.f32(), w ? w->f32() : nullptr, eps, dy.f32(), dx.f32(), n, d);
    launched("layer_norm_backward");
  }
  void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx) override {
    check_2d(x, "rms_norm_backward x");
    check_f32(dy, "rms_norm_backward dy");
    check_f32(dx, "rms_norm_backward dx");
    const auto n = x.size(0), d = x.size(1);
    SCALPEL_CHECK(dy.numel() == x.numel() && dx.numel() == x.numel() && w.numel() == d, "rms_norm_backward x {} w {}",
                  shape_str(x.shape()), shape_str(w.shape()));
    cuda::rms_norm_backward(x.f32(), w.f32(), eps, dy.f32(), dx.f32(), n, d);
    launched("rms_norm_backward");
  }
  void relu_backward(const Tensor& pre, Tensor& dy) override {
    check_f32(pre, "relu_backward pre");
    check_f32(dy, "relu_backward dy");
    SCALPEL_CHECK(pre.numel() == dy.numel(), "relu_backward {} {}", shape_str(pre.shape()), shape_str(dy.shape()));
    cuda::relu_backward(pre.f32(), dy.f32(), dy.numel());
    launched("relu_backward");
  }
  void gelu_backward(const Tensor& pre, Tensor& dy) override {
    check_f32(pre, "gelu_backward pre");
    check_f32(dy, "gelu_backward dy");
    SCALPEL_CHECK(pre.numel() == dy.numel(), "gelu_backward {} {}", shape_str(pre.shape()), shape_str(dy.shape()));
    cuda::gelu_backward(pre.f32(), dy.f32(), dy.numel());
    launched("gelu_backward");
  }
  void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                         Tensor& dup) override {
    for (const Tensor* t : {&gate, &up, &dout, static_cast<const Tensor*>(&dgate), static_cast<const Tensor*>(&dup)}) {
      check_f32(*t, "silu_mul_backward");
      SCALPEL_CHECK(t->numel() == gate.numel(), "silu_mul_backward {} against gate {}", shape_str(t->shape()),
                    shape_str(gate.shape()));
    }
    cuda::silu_mul_backward(gate.f32(), up.f32(), dout.f32(), dgate.f32(), dup.f32(), gate.numel());
    launched("silu_mul_backward");
  }

  // Per sequence, with the forward's batching (query heads h = kv·group + g, one strided batch over
  // the kv heads per g): dV += Pᵀ dO and dP = dO Vᵀ per head, dS = P ∘ (dP - rowsum(P ∘ dP)) for all
  // heads, then dQ = scale dS K and dK += scale dSᵀ Q. A kv head's dK and dV sum its query heads in
  // the order g = 0, 1, ... (fixed: the bits repeat).
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, const Tensor& dout,
                          const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv) override {
    op_checks::attention(q, k, v, s, dout, &probs);
    SCALPEL_CHECK(dq.numel() == q.numel() && dk.numel() == k.numel() && dv.numel() == v.numel(),
                  "attention_backward gradient shapes");
    const auto T = s.seqlen, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
    const std::int64_t ldq = H * hd, ldk = KV * hd, group = H / KV;
    const bool tf = opt_.tf32_forward;
    check_cuda(cudaMemsetAsync(dk.raw(), 0, dk.nbytes()), "MemsetAsync");
    check_cuda(cudaMemsetAsync(dv.raw(), 0, dv.nbytes()), "MemsetAsync");
    Tensor ds = empty({H, T, T});
    for (std::int64_t b = 0; b < s.batch; ++b) {
      const float* p = probs.f32() + b * H * T * T;
      const float* qb = q.f32() + b * T * ldq;
      const float* kb = k.f32() + b * T * ldk;
      const float* vb = v.f32() + b * T * ldk;
      const float* dob = dout.f32() + b * T * ldq;
      float* dqb = dq.f32() + b * T * ldq;
      float* dkb = dk.f32() + b * T * ldk;
      float* dvb = dv.f32() + b * T * ldk;
      for (std::int64_t g = 0; g < group; ++g) {
        rm_gemm_batched(true, false, T, hd, T, 1.0f, p + g * T * T, T, group * T * T, dob + g * hd, ldq, group * hd, 1.0f,
                        dvb, ldk, hd, KV, tf);
        rm_gemm_batched(false, true, T, T, hd, 1.0f, dob + g * hd, ldq, group * hd, vb, ldk, hd, 0.0f,
                        ds.f32() + g * T * T, T, group * T * T, KV, tf);
      }
      cuda::causal_softmax_backward(p, ds.f32(), H, T);
      launched("causal_softmax_backward");
      for (std::int64_t g = 0; g < group; ++g) {
        rm_gemm_batched(false, false, T, hd, T, s.scale, ds.f32() + g * T * T, T, group * T * T, kb, ldk, hd, 0.0f,
                        dqb + g * hd, ldq, group * hd, KV, tf);
        rm_gemm_batched(true, false, T, hd, T, s.scale, ds.f32() + g * T * T, T, group * T * T, qb + g * hd, ldq,
                        group * hd, 1.0f, dkb, ldk, hd, KV, tf);
      }
    }
  }

  void nll_backward(Tensor& logits, std::span<const std::int32_t> targets, float scale,
                    std::span<double> loss) override {
    check_2d(logits, "nll_backward logits");
    const auto n = logits.size(0), V = logits.size(1);
    SCALPEL_CHECK(static_cast<std::int64_t>(targets.size()) == n && static_cast<std::int64_t>(loss.size()) == n,
                  "nll_backward: {} targets, {} losses for {} rows", targets.size(), loss.size(), n);
    for (const auto t : targets) SCALPEL_CHECK(t < V, "nll_backward target {} of vocab {}", t, V);
    const Tensor dt = upload_exact(Tensor::wrap(const_cast<std::int32_t*>(targets.data()), {n}, DType::i32));
    Tensor res = empty({n}, DType::f64);
    cuda::nll_backward_rows(logits.f32(), dt.data<std::int32_t>(), scale, res.data<double>(), n, V);
    launched("nll_backward");
    const Tensor h = download(res);
    std::memcpy(loss.data(), h.raw(), static_cast<std::size_t>(n) * sizeof(double));
  }

  // ---- factorisations ----
  // Row-major a is the column-major aᵀ = a (symmetric): the column-major LOWER factor L (a = L Lᵀ)
  // reads row-major as U = Lᵀ (a = UᵀU), and the column-major UPPER one as a row-major lower L.
  bool potrf(float* a, std::int64_t n, cublasFillMode_t uplo) {
    int lwork = 0;
    check_cusolver(cusolverDnSpotrf_bufferSize(solver_, uplo, as_int(n, "n"), a, as_int(n, "n"), &lwork), "potrf size");
    Tensor work = empty({static_cast<std::int64_t>(std::max(lwork, 1))});
    check_cusolver(cusolverDnSpotrf(solver_, uplo, as_int(n, "n"), a, as_int(n, "n"), work.f32(), lwork, info_.data<int>()),
                   "Spotrf");
    return read_info() == 0;
  }
  int read_info() {
    int info = 0;
    check_cuda(cudaMemcpy(&info, info_.raw(), sizeof info, cudaMemcpyDeviceToHost), "Memcpy info");
    return info;
  }

  bool cholesky(Tensor& a, bool upper) override {
    check_2d(a, "cholesky A");
    const auto n = a.size(0);
    SCALPEL_CHECK(a.size(1) == n, "cholesky of a non-square {}", shape_str(a.shape()));
    if (n == 0) return true;
    if (!potrf(a.f32(), n, upper ? CUBLAS_FILL_MODE_LOWER : CUBLAS_FILL_MODE_UPPER)) return false;
    if (upper)
      cuda::zero_strict_lower(a.f32(), n);
    else
      cuda::zero_strict_upper(a.f32(), n);
    launched("zero triangle");
    return true;
  }

  bool inverse_cholesky_upper(Tensor& a) override {
    check_2d(a, "inverse_cholesky_upper A");
    const auto n = a.size(0);
    SCALPEL_CHECK(a.size(1) == n, "inverse_cholesky_upper of a non-square {}", shape_str(a.shape()));
    if (n == 0) return true;
    float* p = a.f32();
    // J a J, its row-major lower factor L (column-major upper), L⁻¹, then J L⁻¹ J = U (upper).
    cuda::reverse_flat(p, n, false);
    launched("reverse");
    if (!potrf(p, n, CUBLAS_FILL_MODE_UPPER)) return false;
    if (!trtri_upper(p, n, n)) return false;
    cuda::reverse_flat(p, n, true);
    launched("reverse");
    return all_finite(a);
  }

  // In-place inverse of the column-major upper triangular n x n block at p (leading dimension ld).
  // cuSOLVER's trtri takes blocks up to trtri_leaf_ (it refused n = 49152, whose n² passes 2³¹;
  // SCALPEL_CUDA_TRTRI_LEAF lowers the leaf, for the tests of the split);
  // larger ones split in two: inv([[A, B], [0, C]]) = [[A⁻¹, -A⁻¹ B C⁻¹], [0, C⁻¹]], the corner by
  // two in-place TRMMs. Same n³/3 FLOPs.
  bool trtri_upper(float* p, std::int64_t n, std::int64_t ld) {
    if (n <= trtri_leaf_) {
      std::size_t dev_bytes = 0, host_bytes = 0;
      check_cusolver(cusolverDnXtrtri_bufferSize(solver_, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_32F, p,
                                                 ld, &dev_bytes, &host_bytes),
                     "trtri size");
      Tensor work = empty({static_cast<std::int64_t>(std::max<std::size_t>(dev_bytes, 1))}, DType::u8);
      std::vector<char> host_work(std::max<std::size_t>(host_bytes, 1));
      check_cusolver(cusolverDnXtrtri(solver_, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_32F, p, ld,
                                      work.raw(), dev_bytes, host_work.data(), host_bytes, info_.data<int>()),
                     "Xtrtri");
      return read_info() == 0;
    }
    const std::int64_t n1 = n / 2 >= 256 ? n / 2 / 256 * 256 : n / 2, n2 = n - n1;  // tile-aligned split
    float* a = p;
    float* b = p + n1 * ld;       // rows [0, n1), columns [n1, n)
    float* c = p + n1 + n1 * ld;  // rows and columns [n1, n)
    if (!trtri_upper(a, n1, ld) || !trtri_upper(c, n2, ld)) return false;
    math(false);
    const float minus_one = -1.0f, one = 1.0f;
    check_cublas(cublasStrmm(blas_, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT,
                             as_int(n1, "n1"), as_int(n2, "n2"), &minus_one, a, as_int(ld, "ld"), b, as_int(ld, "ld"), b,
                             as_int(ld, "ld")),
                 "Strmm");
    check_cublas(cublasStrmm(blas_, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT,
                             as_int(n1, "n1"), as_int(n2, "n2"), &one, c, as_int(ld, "ld"), b, as_int(ld, "ld"), b,
                             as_int(ld, "ld")),
                 "Strmm");
    return true;
  }

  void gemm_block(Trans ta, Trans tb, float alpha, const Tensor& a, const Block& ba, const Tensor& b, const Block& bb,
                  float beta, Tensor& c, const Block& bc) override {
    check_2d(a, "gemm_block A");
    check_2d(b, "gemm_block B");
    check_2d(c, "gemm_block C");
    const auto [m, n, k] = op_checks::gemm_block(ta, tb, a, ba, b, bb, c, bc);
    if (m == 0 || n == 0) return;
    const auto at = [](const Tensor& t, const Block& x) { return t.f32() + x.r0 * t.size(1) + x.c0; };
    rm_gemm(ta == Trans::yes, tb == Trans::yes, m, n, k, alpha, at(a, ba), a.size(1), at(b, bb), b.size(1), beta,
            c.f32() + bc.r0 * c.size(1) + bc.c0, c.size(1), /*tf32=*/false);
  }

  void copy_block(const Tensor& src, const Block& bs, Tensor& dst, std::int64_t r0, std::int64_t c0) override {
    check_2d(src, "copy_block src");
    check_2d(dst, "copy_block dst");
    op_checks::copy_block(src, bs, dst, r0, c0);
    if (bs.rows == 0 || bs.cols == 0) return;
    const std::size_t f = sizeof(float);
    check_cuda(cudaMemcpy2DAsync(dst.f32() + r0 * dst.size(1) + c0, dst.size(1) * f, src.f32() + bs.r0 * src.size(1) + bs.c0,
                                 src.size(1) * f, bs.cols * f, bs.rows, cudaMemcpyDeviceToDevice),
               "Memcpy2DAsync");
  }

  void invert_lower(Tensor& a) override {
    check_2d(a, "invert_lower A");
    op_checks::square(a, "invert_lower");
    const auto n = a.size(0);
    if (n == 0) return;
    // Row-major lower is column-major upper.
    SCALPEL_CHECK(trtri_upper(a.f32(), n, n), "invert_lower: a zero on the diagonal");
    cuda::zero_strict_upper(a.f32(), n);
    launched("zero triangle");
  }

  void flip(Tensor& a, bool keep_upper) override {
    check_2d(a, "flip A");
    op_checks::square(a, "flip");
    if (a.numel() == 0) return;
    cuda::reverse_flat(a.f32(), a.size(0), keep_upper);
    launched("reverse");
  }

  void cholesky_inverse(Tensor& f, bool upper) override {
    check_2d(f, "cholesky_inverse factor");
    const auto n = f.size(0);
    SCALPEL_CHECK(f.size(1) == n, "cholesky_inverse of a non-square {}", shape_str(f.shape()));
    if (n == 0) return;
    const auto uplo = upper ? CUBLAS_FILL_MODE_LOWER : CUBLAS_FILL_MODE_UPPER;
    int lwork = 0;
    check_cusolver(cusolverDnSpotri_bufferSize(solver_, uplo, as_int(n, "n"), f.f32(), as_int(n, "n"), &lwork),
                   "potri size");
    Tensor work = empty({static_cast<std::int64_t>(std::max(lwork, 1))});
    check_cusolver(cusolverDnSpotri(solver_, uplo, as_int(n, "n"), f.f32(), as_int(n, "n"), work.f32(), lwork,
                                    info_.data<int>()),
                   "Spotri");
    const int info = read_info();
    SCALPEL_CHECK(info == 0, "spotri info {}", info);
    if (upper)
      cuda::mirror_upper_to_lower(f.f32(), n);
    else
      cuda::mirror_lower_to_upper(f.f32(), n);
    launched("mirror");
  }

  // ---- LLM Surgeon's linear algebra ----
  // a (host or device f64) becomes a⁻¹ by cuSOLVER's potrf and potri in float64 on the GPU.
  bool spd_inverse_f64(Tensor& a) override {
    SCALPEL_CHECK(a.dim() == 2 && a.size(0) == a.size(1) && a.dtype() == DType::f64, "spd_inverse_f64 of {} {}",
                  dtype_name(a.dtype()), shape_str(a.shape()));
    const auto n = a.size(0);
    if (n == 0) return true;
    Tensor d = a.device() == Device::cuda ? a : upload_exact(a);
    double* p = d.data<double>();
    const int ni = as_int(n, "n");
    int lwork = 0, lwork_i = 0;
    // Column-major lower = row-major upper (a is symmetric): potri leaves the row-major upper triangle.
    check_cusolver(cusolverDnDpotrf_bufferSize(solver_, CUBLAS_FILL_MODE_LOWER, ni, p, ni, &lwork), "Dpotrf size");
    check_cusolver(cusolverDnDpotri_bufferSize(solver_, CUBLAS_FILL_MODE_LOWER, ni, p, ni, &lwork_i), "Dpotri size");
    Tensor work = empty({static_cast<std::int64_t>(std::max({lwork, lwork_i, 1}))}, DType::f64);
    check_cusolver(cusolverDnDpotrf(solver_, CUBLAS_FILL_MODE_LOWER, ni, p, ni, work.data<double>(), lwork,
                                    info_.data<int>()),
                   "Dpotrf");
    if (read_info() != 0) return false;
    check_cusolver(cusolverDnDpotri(solver_, CUBLAS_FILL_MODE_LOWER, ni, p, ni, work.data<double>(), lwork_i,
                                    info_.data<int>()),
                   "Dpotri");
    if (read_info() != 0) return false;
    cuda::fill_lower_from_upper_f64(p, n);
    launched("fill_lower_from_upper_f64");
    if (!all_finite(d)) return false;
    if (a.device() != Device::cuda)
      check_cuda(cudaMemcpy(a.raw(), d.raw(), a.nbytes(), cudaMemcpyDeviceToHost), "Memcpy to host");
    return true;
  }

  // Each a[i] becomes its row-major lower factor (the column-major upper one of cuSOLVER). The
  // factorisations are enqueued one after another and their info words read once at the end; a
  // factor depends only on its own matrix.
  void cholesky_batch(std::span<Tensor> a, std::span<std::uint8_t> ok) override {
    SCALPEL_CHECK(ok.size() == a.size(), "cholesky_batch: {} flags for {} matrices", ok.size(), a.size());
    int lwork = 1;
    for (auto& t : a) {
      check_2d(t, "cholesky_batch A");
      SCALPEL_CHECK(t.size(0) == t.size(1), "cholesky_batch of a non-square {}", shape_str(t.shape()));
      int lw = 0;
      const int n = as_int(t.size(0), "n");
      if (n > 0)
        check_cusolver(cusolverDnSpotrf_bufferSize(solver_, CUBLAS_FILL_MODE_UPPER, n, t.f32(), n, &lw), "potrf size");
      lwork = std::max(lwork, lw);
    }
    if (a.empty()) return;
    Tensor work = empty({lwork});
    Tensor infos = zeros({static_cast<std::int64_t>(a.size())}, DType::i32);
    for (std::size_t i = 0; i < a.size(); ++i) {
      const int n = as_int(a[i].size(0), "n");
      if (n > 0)
        check_cusolver(cusolverDnSpotrf(solver_, CUBLAS_FILL_MODE_UPPER, n, a[i].f32(), n, work.f32(), lwork,
                                        infos.data<int>() + i),
                       "Spotrf");
    }
    const Tensor h = download(infos);
    for (std::size_t i = 0; i < a.size(); ++i) ok[i] = h.data<int>()[i] == 0;
  }

  // b [n, k] (row-major, the column-major [k, n]) through potrs: k = 1 as it is, else transposed
  // into a column-major [n, k] copy and back.
  void potrs_upper(const float* l, std::int64_t n, Tensor& b) {
    const auto k = b.numel() / n;
    const int ni = as_int(n, "n"), ki = as_int(k, "k");
    Tensor bt = k == 1 ? b : empty({k, n});
    const float one = 1.0f, zero = 0.0f;
    math(false);
    if (k > 1)  // column-major [n, k] = transpose of column-major [k, n]
      check_cublas(cublasSgeam(blas_, CUBLAS_OP_T, CUBLAS_OP_N, ni, ki, &one, b.f32(), ki, &zero, bt.f32(), ni,
                               bt.f32(), ni),
                   "Sgeam");
    check_cusolver(cusolverDnSpotrs(solver_, CUBLAS_FILL_MODE_UPPER, ni, ki, l, ni, bt.f32(), ni, info_.data<int>()),
                   "Spotrs");
    const int info = read_info();
    SCALPEL_CHECK(info == 0, "spotrs info {}", info);
    if (k > 1)
      check_cublas(cublasSgeam(blas_, CUBLAS_OP_T, CUBLAS_OP_N, ki, ni, &one, bt.f32(), ni, &zero, b.f32(), ki, b.f32(),
                               ki),
                   "Sgeam");
  }

  void cholesky_solve(const Tensor& l, Tensor& b) override {
    check_2d(l, "cholesky_solve L");
    check_f32(b, "cholesky_solve B");
    const auto n = l.size(0);
    SCALPEL_CHECK(l.size(1) == n && b.size(0) == n, "cholesky_solve L {} B {}", shape_str(l.shape()),
                  shape_str(b.shape()));
    if (n == 0 || b.numel() == 0) return;
    potrs_upper(l.f32(), n, b);
  }

  bool spd_solve(Tensor& a, Tensor& b) override {
    check_2d(a, "spd_solve A");
    check_f32(b, "spd_solve B");
    const auto n = a.size(0);
    SCALPEL_CHECK(a.size(1) == n && b.size(0) == n, "spd_solve A {} B {}", shape_str(a.shape()), shape_str(b.shape()));
    if (n == 0 || b.numel() == 0) return true;
    if (!potrf(a.f32(), n, CUBLAS_FILL_MODE_UPPER)) return false;
    potrs_upper(a.f32(), n, b);
    return all_finite(b);
  }

  // Host index lists travel to the device with each call (at most a few hundred KB: a chunk's
  // pairs, a sub-problem's rows and columns).
  Tensor indices_on_device(std::span<const std::int64_t> idx) {
    return upload_exact(Tensor::wrap(const_cast<std::int64_t*>(idx.data()), {static_cast<std::int64_t>(idx.size())},
                                     DType::i64));
  }
  void gather(const Tensor& a, std::span<const std::int64_t> rows, std::span<const std::int64_t> cols, Tensor& out,
              bool transposed) override {
    check_2d(a, "gather A");
    check_f32(out, "gather out");
    op_checks::gather(a, rows, cols, out, "gather");
    if (out.numel() == 0) return;
    const Tensor r = indices_on_device(rows), c = indices_on_device(cols);
    cuda::gather(a.f32(), a.size(1), r.data<std::int64_t>(), r.numel(), c.data<std::int64_t>(), c.numel(), out.f32(),
                 transposed);
    launched("gather");
  }
  void scatter(const Tensor& v, std::span<const std::int64_t> rows, std::span<const std::int64_t> cols,
               Tensor& a) override {
    check_2d(a, "scatter A");
    check_f32(v, "scatter values");
    op_checks::gather(a, rows, cols, v, "scatter");
    if (v.numel() == 0) return;
    const Tensor r = indices_on_device(rows), c = indices_on_device(cols);
    cuda::scatter(v.f32(), r.data<std::int64_t>(), r.numel(), c.data<std::int64_t>(), c.numel(), a.f32(), a.size(1));
    launched("scatter");
  }
  void gather_pairs(const Tensor& a, std::span<const std::int64_t> i, std::span<const std::int64_t> j,
                    Tensor& out) override {
    check_2d(a, "gather_pairs A");
    check_f32(out, "gather_pairs out");
    op_checks::pairs(a, i, j, out.numel(), "gather_pairs");
    if (i.empty()) return;
    const Tensor di = indices_on_device(i), dj = indices_on_device(j);
    cuda::gather_pairs(a.f32(), a.size(1), di.data<std::int64_t>(), dj.data<std::int64_t>(), di.numel(), out.f32());
    launched("gather_pairs");
  }
  void rows_axpy(const Tensor& a, std::span<const std::int64_t> src, std::span<const std::int64_t> dst,
                 const Tensor& coef, Tensor& out) override {
    check_2d(a, "rows_axpy A");
    check_2d(out, "rows_axpy out");
    check_f32(coef, "rows_axpy coefficients");
    op_checks::rows_axpy(a, src, dst, coef, out);
    if (src.empty() || a.size(1) == 0) return;
    const Tensor ds = indices_on_device(src), dd = indices_on_device(dst);
    cuda::rows_axpy(a.f32(), ds.data<std::int64_t>(), dd.data<std::int64_t>(), coef.f32(), ds.numel(), a.size(1),
                    out.f32());
    launched("rows_axpy");
  }
  void kron_pairs(const Tensor& g, const Tensor& a, std::span<const std::int64_t> i, std::span<const std::int64_t> j,
                  Tensor& out) override {
    check_2d(g, "kron_pairs G");
    check_2d(a, "kron_pairs A");
    check_f32(out, "kron_pairs out");
    op_checks::kron_pairs(g, a, i, j, out);
    if (i.empty()) return;
    const Tensor di = indices_on_device(i), dj = indices_on_device(j);
    cuda::kron_pairs(g.f32(), g.size(1), a.f32(), a.size(1), di.data<std::int64_t>(), dj.data<std::int64_t>(),
                     di.numel(), out.f32());
    launched("kron_pairs");
  }

  // ---- pruning ----
  void col_sq_norms(const Tensor& x, float alpha, float beta, Tensor& out) override {
    if (lowp::any({&x})) {
      lowp::F32Scope f(*this);
      return col_sq_norms(f.in(x), alpha, beta, out);
    }
    check_2d(x, "col_sq_norms x");
    check_f32(out, "col_sq_norms out");
    op_checks::col_sq_norms(x, out);
    const auto n = x.size(0), d = x.size(1);
    const std::int64_t chunks = std::clamp<std::int64_t>((n + 255) / 256, 1, 64);
    Tensor partial = empty({chunks, d}, DType::f64);
    cuda::col_sq_norms(x.f32(), alpha, beta, out.f32(), partial.data<double>(), n, d, chunks);
    launched("col_sq_norms");
  }

  void zero_dead_columns(const Tensor& h, Tensor& w) override {
    check_2d(h, "zero_dead_columns H");
    check_2d(w, "zero_dead_columns W");
    op_checks::hessian_prepare(h, &w);
    if (w.numel() == 0) return;
    cuda::zero_dead_columns_h(w.f32(), w.size(0), w.size(1), h.f32());
    launched("zero_dead_columns");
  }

  HessianPrep hessian_prepare(Tensor& h, Tensor* w, float percdamp) override {
    check_2d(h, "hessian_prepare H");
    if (w) check_2d(*w, "hessian_prepare W");
    op_checks::hessian_prepare(h, w);
    const auto d = h.size(0);
    if (d == 0) return {};
    Tensor dead = empty({d}, DType::u8);
    Tensor out = empty({2}, DType::f64);  // [sum of the diagonal, dead count (as bits of a long long)]
    cuda::hessian_diag(h.f32(), d, dead.data<std::uint8_t>(), out.data<double>(),
                       reinterpret_cast<long long*>(out.data<double>() + 1));
    launched("hessian_diag");
    const Tensor host = download(out);
    const double sum = host.data<double>()[0];
    long long ndead = 0;
    std::memcpy(&ndead, host.data<double>() + 1, sizeof ndead);
    // fp32 like the reference's percdamp * torch.mean(torch.diag(H)).
    const float damp = static_cast<float>(percdamp * (sum / static_cast<double>(d)));
    cuda::add_diag(h.f32(), d, damp);
    launched("add_diag");
    if (w && ndead > 0) {
      cuda::zero_dead_columns(w->f32(), w->size(0), d, dead.data<std::uint8_t>());
      launched("zero_dead_columns");
    }
    return {damp, static_cast<std::int64_t>(ndead)};
  }

  bool all_finite(const Tensor& t) override {
    SCALPEL_CHECK(t.device() == Device::cuda && (t.dtype() == DType::f32 || t.dtype() == DType::f64),
                  "all_finite: expected a CUDA f32/f64 tensor");
    check_cuda(cudaMemsetAsync(info_.data<int>() + 1, 0xff, sizeof(int)), "MemsetAsync");  // nonzero = ok
    if (t.dtype() == DType::f32)
      cuda::all_finite_f32(t.f32(), t.numel(), info_.data<int>() + 1);
    else
      cuda::all_finite_f64(t.data<double>(), t.numel(), info_.data<int>() + 1);
    launched("all_finite");
    int ok = 0;
    check_cuda(cudaMemcpy(&ok, info_.data<int>() + 1, sizeof ok, cudaMemcpyDeviceToHost), "Memcpy flag");
    return ok != 0;
  }

  void prune_scores(const Tensor& w, const Tensor* col, Tensor& scores) override {
    check_2d(w, "prune_scores W");
    check_2d(scores, "prune_scores scores");
    if (col) check_f32(*col, "prune_scores column statistic");
    op_checks::prune_scores(w, col, scores);
    cuda::prune_scores(w.f32(), col ? col->f32() : nullptr, scores.f32(), w.size(0), w.size(1));
    launched("prune_scores");
  }

  SelectThreshold kth_threshold(const Tensor& scores, std::int64_t k) override {
    check_f32(scores, "kth_threshold scores");
    const auto n = scores.numel();
    op_checks::kth(k, n);
    if (k == 0) return {-std::numeric_limits<float>::infinity(), 0};
    // Radix selection on the order keys, 11 + 11 + 10 bits: one histogram pass per digit over the
    // elements that share the digits found so far.
    Tensor hist = empty({2048}, DType::i64);
    std::uint32_t prefix = 0;
    std::int64_t below = 0, equal = 0;
    const int shifts[3] = {21, 10, 0}, widths[3] = {11, 11, 10};
    for (int pass = 0; pass < 3; ++pass) {
      cuda::key_histogram(scores.f32(), n, shifts[pass], widths[pass], prefix,
                          reinterpret_cast<unsigned long long*>(hist.raw()));
      launched("key_histogram");
      const Tensor h = download(hist);
      const auto* c = h.data<std::int64_t>();
      const int bins = 1 << widths[pass];
      int b = 0;
      for (; b < bins - 1; ++b) {
        if (below + c[b] >= k) break;
        below += c[b];
      }
      prefix = (prefix << widths[pass]) | static_cast<std::uint32_t>(b);
      equal = c[b];
    }
    const std::uint32_t vkey = prefix;
    const std::uint32_t b = (vkey & 0x80000000u) ? (vkey & 0x7fffffffu) : ~vkey;  // core/float_order key_value
    float value;
    std::memcpy(&value, &b, 4);
    const auto take = k - below;
    return {value, take == equal ? std::numeric_limits<std::int64_t>::max() : take};
  }

  void mask_threshold(const Tensor& scores, const SelectThreshold& t, Tensor& mask, std::int64_t col0) override {
    check_2d(scores, "mask_threshold scores");
    check_mask(mask, "mask_threshold mask");
    const auto rows = scores.size(0), width = scores.size(1), mc = mask.size(1);
    op_checks::mask_threshold(scores, mask, col0);
    if (rows == 0 || width == 0) return;
    Tensor first;
    const long long take = t.take_equal >= rows * width ? std::numeric_limits<long long>::max() : t.take_equal;
    if (take > 0 && take < rows * width) {
      // Ties are taken in row-major order: each row needs the count of ties in the rows before it.
      Tensor counts = empty({rows}, DType::i64);
      cuda::count_equal_rows(scores.f32(), rows, width, t.value, reinterpret_cast<long long*>(counts.raw()));
      launched("count_equal_rows");
      Tensor h = download(counts);
      auto* c = h.data<std::int64_t>();
      std::int64_t acc = 0;
      for (std::int64_t r = 0; r < rows; ++r) {
        const auto here = c[r];
        c[r] = acc;
        acc += here;
      }
      first = upload_exact(h);
    }
    cuda::mask_threshold(scores.f32(), rows, width, t.value, take,
                         first.defined() ? reinterpret_cast<const long long*>(first.raw()) : nullptr,
                         mask.data<std::uint8_t>(), mc, col0);
    launched("mask_threshold");
  }

  void mask_rows_smallest(const Tensor& scores, std::int64_t k, Tensor& mask) override {
    check_2d(scores, "mask_rows_smallest scores");
    check_mask(mask, "mask_rows_smallest mask");
    op_checks::same_shape(mask, scores, "scores");
    SCALPEL_CHECK(k >= 0 && k <= scores.size(1), "mask_rows_smallest k {} of {}", k, scores.size(1));
    if (scores.numel() == 0) return;
    cuda::mask_rows_smallest(scores.f32(), scores.size(0), scores.size(1), k, mask.data<std::uint8_t>());
    launched("mask_rows_smallest");
  }

  void mask_nm(const Tensor& scores, int n, int m, Tensor& mask) override {
    check_2d(scores, "mask_nm scores");
    check_mask(mask, "mask_nm mask");
    op_checks::same_shape(mask, scores, "scores");
    SCALPEL_CHECK(n > 0 && n < m, "mask_nm {}:{}", n, m);
    if (scores.numel() == 0) return;
    cuda::mask_nm(scores.f32(), scores.size(0), scores.size(1), n, m, mask.data<std::uint8_t>());
    launched("mask_nm");
  }

  void apply_mask(Tensor& w, const Tensor& mask) override {
    check_2d(w, "apply_mask W");
    check_mask(mask, "apply_mask mask");
    op_checks::same_shape(mask, w, "W");
    cuda::apply_mask(w.f32(), mask.data<std::uint8_t>(), w.numel());
    launched("apply_mask");
  }

  void obs_scores(const Tensor& w, const Tensor& hinv, std::int64_t col0, Tensor& scores, const Tensor* hdiag) override {
    check_2d(w, "obs_scores W");
    check_2d(hinv, "obs_scores Hinv");
    check_2d(scores, "obs_scores scores");
    op_checks::obs_scores(w, hinv, col0, scores, hdiag);
    const auto rows = w.size(0), d = w.size(1), width = scores.size(1);
    cuda::obs_scores(w.f32(), hinv.f32(), hdiag ? hdiag->f32() : nullptr, rows, d, col0, width, scores.f32());
    launched("obs_scores");
  }

  void diagonal(const Tensor& a, Tensor& out) override {
    op_checks::diagonal(a, out);
    const auto n = a.size(0);
    check_cuda(cudaMemcpy2DAsync(out.f32(), sizeof(float), a.f32(), static_cast<std::size_t>(n + 1) * sizeof(float),
                                 sizeof(float), static_cast<std::size_t>(n), cudaMemcpyDeviceToDevice),
               "Memcpy2DAsync (diagonal)");
  }

  void obs_sweep_block(Tensor& w, const Tensor& hinv, std::int64_t col0, std::int64_t width, int prune_n, int prune_m,
                       Tensor& mask, Tensor& err, Tensor& losses) override {
    check_2d(w, "obs_sweep W");
    check_2d(hinv, "obs_sweep Hinv");
    check_2d(err, "obs_sweep err");
    check_mask(mask, "obs_sweep mask");
    check_dev(losses, DType::f64, "obs_sweep losses");
    op_checks::obs_sweep(w, hinv, col0, width, prune_n, prune_m, mask, err, losses);
    const auto rows = w.size(0), d = w.size(1);
    SCALPEL_CHECK_INPUT(width <= 4096, "obs_sweep: a SparseGPT block of {} columns exceeds the 4096 the cuda backend "
                        "holds in shared memory (prune.blocksize)", width);
    if (rows == 0 || width == 0) return;
    cuda::obs_sweep_block(w.f32(), hinv.f32(), rows, d, col0, width, prune_n, prune_m, mask.data<std::uint8_t>(),
                          err.f32(), losses.data<double>());
    launched("obs_sweep_block");
  }

  void obs_lazy_update(Tensor& w, const Tensor& err, const Tensor& hinv, std::int64_t col0, std::int64_t /*row0*/,
                       std::int64_t /*total_rows*/) override {
    check_2d(w, "obs_lazy W");
    check_2d(err, "obs_lazy err");
    check_2d(hinv, "obs_lazy Hinv");
    op_checks::obs_lazy(w, err, hinv, col0);
    const auto rows = w.size(0), d = w.size(1), width = err.size(1), c1 = col0 + width;
    if (rows == 0 || c1 == d || width == 0) return;
    rm_gemm(false, false, rows, d - c1, width, -1.0f, err.f32(), width, hinv.f32() + col0 * d + c1, d, 1.0f,
            w.f32() + c1, d, false);
  }

  void rowwise_dot(const Tensor& a, const Tensor& b, std::span<double> out) override {
    check_2d(a, "rowwise_dot A");
    check_2d(b, "rowwise_dot B");
    op_checks::rowwise_dot(a, b, out);
    if (a.size(0) == 0) return;
    Tensor res = empty({a.size(0)}, DType::f64);
    cuda::rowwise_dot(a.f32(), b.f32(), res.data<double>(), a.size(0), a.size(1));
    launched("rowwise_dot");
    const Tensor h = download(res);
    std::memcpy(out.data(), h.raw(), out.size() * sizeof(double));
  }

 private:
  void math(bool tf32) {
    check_cublas(cublasSetMathMode(blas_, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH), "SetMathMode");
  }

  BackendOptions opt_;
  int device_ = 0;
  std::string name_;
  std::int64_t memory_ = 0;
  std::shared_ptr<DeviceAllocator> alloc_;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  std::int64_t trtri_leaf_ = 8192;
  Tensor info_;  // device ints: [0] cuSOLVER info, [1] all_finite flag
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

std::string cuda_device_status() {
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    cudaGetLastError();
    return fmt::format("built with CUDA; no usable GPU ({})", cudaGetErrorString(rc));
  }
  if (count == 0) return "built with CUDA; no GPU visible";
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  return fmt::format("built with CUDA; {} GPU(s), device 0: {} (sm_{}{}, {:.1f} GB)", count, prop.name, prop.major,
                     prop.minor, double(prop.totalGlobalMem) / 1e9);
}

}  // namespace scalpel
