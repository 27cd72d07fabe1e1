// Backend registry: picks the implementation named in the config, and says what this build and
// this machine can run.
#include "scalpel/backend/backend.hpp"

#include <mutex>

#include "scalpel/core/error.hpp"

namespace scalpel {

#if defined(SCALPEL_HAVE_CUDA)
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);  // cuda/cuda_backend.cpp
int cuda_device_count();
std::string cuda_device_status();
bool cuda_built() { return true; }
int cuda_devices() { return cuda_device_count(); }
std::string cuda_status() { return cuda_device_status(); }
#else
bool cuda_built() { return false; }
int cuda_devices() { return 0; }
std::string cuda_status() { return "built without CUDA (no nvcc when it was configured)"; }
#endif

std::unique_ptr<Backend> make_backend(const std::string& device, const BackendOptions& options) {
  if (device == "cpu") return make_cpu_backend(options.threads);
  if (device == "cuda") {
#if defined(SCALPEL_HAVE_CUDA)
    return make_cuda_backend(options);
#else
    SCALPEL_INPUT_ERROR("device 'cuda': this scalpel was built without the CUDA backend "
                        "(configure on a machine with nvcc; see README, 'GPUs (CUDA)')");
#endif
  }
  SCALPEL_INPUT_ERROR("device '{}' is not one of: cpu, cuda", device);
}

std::unique_ptr<Backend> make_backend(const std::string& device, int threads) {
  BackendOptions o;
  o.threads = threads;
  return make_backend(device, o);
}

namespace {

// Host copies: for the cpu backend these are the layer's tensors themselves; any other backend
// uploads them later on its own thread (only the reads overlap then).
class HostCopies final : public Uploader {
 public:
  std::vector<Tensor> upload(const std::vector<Tensor>& host) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Tensor> out;
    out.reserve(host.size());
    for (const auto& t : host) out.push_back(t.clone());  // from a mapped file, the copy is the read
    return out;
  }

 private:
  std::mutex mu_;
};

}  // namespace

std::shared_ptr<Uploader> Backend::make_uploader() { return std::make_shared<HostCopies>(); }

namespace {
[[noreturn]] void no_backward(const Backend& be, const char* op) {
  SCALPEL_INPUT_ERROR("the {} backend has no {} yet (LLM Surgeon); use device: cpu", be.name(), op);
}
}  // namespace

void Backend::layer_norm_backward(const Tensor&, const Tensor*, float, const Tensor&, Tensor&) {
  no_backward(*this, "layer_norm_backward");
}
void Backend::rms_norm_backward(const Tensor&, const Tensor&, float, const Tensor&, Tensor&) {
  no_backward(*this, "rms_norm_backward");
}
void Backend::relu_backward(const Tensor&, Tensor&) { no_backward(*this, "relu_backward"); }
void Backend::gelu_backward(const Tensor&, Tensor&) { no_backward(*this, "gelu_backward"); }
void Backend::silu_mul_backward(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&) {
  no_backward(*this, "silu_mul_backward");
}
void Backend::attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const AttentionShape&, Tensor&, Tensor&, Tensor&) {
  no_backward(*this, "attention_backward");
}
bool Backend::spd_inverse_f64(Tensor&) { no_backward(*this, "spd_inverse_f64"); }
bool Backend::spd_solve(Tensor&, Tensor&) { no_backward(*this, "spd_solve"); }
void Backend::diagonal(const Tensor& a, Tensor& out) {
  const Tensor h = download(a);
  const auto n = h.size(0);
  Tensor d = Tensor::empty({n});
  for (std::int64_t i = 0; i < n; ++i) d.f32()[i] = h.f32()[i * n + i];
  copy(upload(d), out);
}

void Backend::cholesky_batch(std::span<Tensor>, std::span<std::uint8_t>) { no_backward(*this, "cholesky_batch"); }
void Backend::cholesky_solve(const Tensor&, Tensor&) { no_backward(*this, "cholesky_solve"); }
void Backend::gather(const Tensor&, std::span<const std::int64_t>, std::span<const std::int64_t>, Tensor&, bool) {
  no_backward(*this, "gather");
}
void Backend::scatter(const Tensor&, std::span<const std::int64_t>, std::span<const std::int64_t>, Tensor&) {
  no_backward(*this, "scatter");
}
void Backend::gather_pairs(const Tensor&, std::span<const std::int64_t>, std::span<const std::int64_t>, Tensor&) {
  no_backward(*this, "gather_pairs");
}
void Backend::rows_axpy(const Tensor&, std::span<const std::int64_t>, std::span<const std::int64_t>, const Tensor&,
                        Tensor&) {
  no_backward(*this, "rows_axpy");
}
void Backend::kron_pairs(const Tensor&, const Tensor&, std::span<const std::int64_t>, std::span<const std::int64_t>,
                         Tensor&) {
  no_backward(*this, "kron_pairs");
}
void Backend::nll_backward(Tensor&, std::span<const std::int32_t>, float, std::span<double>) {
  no_backward(*this, "nll_backward");
}

Tensor clone_on(Backend& be, const Tensor& t) {
  Tensor out = be.empty(t.shape(), t.dtype());
  be.copy(t, out);
  return out;
}

Tensor view_on(Backend& be, const Tensor& host) { return be.device() == Device::cpu ? host : be.upload(host); }

Tensor as_dtype_on(Backend& be, const Tensor& t, DType dt) {
  const Tensor src = t.device() == be.device() ? t : be.upload_exact(t);
  if (src.dtype() == dt) return src;
  Tensor out = be.empty(src.shape(), dt);
  be.convert(src, out);
  return out;
}

}  // namespace scalpel
