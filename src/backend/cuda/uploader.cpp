// The CUDA backend's Uploader (see backend.hpp): host tensors reach the GPU from a background
// thread through two pinned staging buffers on a copy stream of its own, so that reading the next
// layer (the memcpy out of a mapped file is the read) and its PCIe transfer overlap the layer the
// legacy stream is computing. While one buffer's bytes cross the bus the other is filled.
//
// Device memory comes from the backend's caching allocator, whose freed blocks may still be read
// by work queued on the legacy stream: a batch therefore allocates all of its tensors first, then
// makes the copy stream wait for everything the legacy stream holds at that point (an event), and
// ends with the copy stream synchronised, so the tensors handed back are complete.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>

#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"

namespace scalpel {

namespace {

void check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) SCALPEL_RUNTIME_ERROR("CUDA upload {}: {} ({})", what, cudaGetErrorString(rc), cudaGetErrorName(rc));
}

class CudaUploader final : public Uploader {
 public:
  using Alloc = std::function<Tensor(const Shape&, DType)>;

  CudaUploader(int device, Alloc alloc, std::size_t chunk_bytes)
      : device_(device), alloc_(std::move(alloc)), chunk_(chunk_bytes) {
    check(cudaSetDevice(device_), "SetDevice");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "StreamCreate");
    check(cudaEventCreateWithFlags(&queued_, cudaEventDisableTiming), "EventCreate");
    for (int i = 0; i < 2; ++i) {
      check(cudaEventCreateWithFlags(&free_[i], cudaEventDisableTiming), "EventCreate");
      if (cudaHostAlloc(&pinned_[i], chunk_, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError();
        pinned_[i] = nullptr;
      }
    }
    if (!pinned_[0] || !pinned_[1])
      log::warn("cuda: no {} MiB of pinned host memory for the weight prefetch; copying from pageable memory",
                2 * chunk_ >> 20);
  }

  ~CudaUploader() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    for (int i = 0; i < 2; ++i) {
      if (pinned_[i]) cudaFreeHost(pinned_[i]);
      cudaEventDestroy(free_[i]);
    }
    cudaEventDestroy(queued_);
    cudaStreamDestroy(stream_);
  }

  std::vector<Tensor> upload(const std::vector<Tensor>& host) override {
    std::lock_guard<std::mutex> lock(mu_);
    check(cudaSetDevice(device_), "SetDevice");  // per thread: this one may be new
    std::vector<Tensor> out;
    out.reserve(host.size());
    for (const auto& h : host) {
      SCALPEL_CHECK(h.device() == Device::cpu, "upload of a tensor that is not in host memory");
      out.push_back(alloc_(h.shape(), h.dtype()));
    }
    // Every block is ours now; work queued on the legacy stream before it was freed is queued
    // before this event, so no copy starts until it is done.
    check(cudaEventRecord(queued_, cudaStreamLegacy), "EventRecord");
    check(cudaStreamWaitEvent(stream_, queued_, 0), "StreamWaitEvent");
    try {
      for (std::size_t i = 0; i < host.size(); ++i)
        copy(static_cast<const std::byte*>(host[i].raw()), static_cast<std::byte*>(out[i].raw()), host[i].nbytes());
    } catch (...) {
      // Copies already queued must end before `out` hands its blocks back to the allocator.
      cudaStreamSynchronize(stream_);
      throw;
    }
    check(cudaStreamSynchronize(stream_), "StreamSynchronize");
    return out;
  }

 private:
  void copy(const std::byte* src, std::byte* dst, std::size_t bytes) {
    if (!pinned_[0] || !pinned_[1]) {
      if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "MemcpyAsync");
      return;
    }
    for (std::size_t off = 0; off < bytes; off += chunk_) {
      const std::size_t len = std::min(chunk_, bytes - off);
      // The buffer's previous transfer must be done before it is refilled.
      check(cudaEventSynchronize(free_[slot_]), "EventSynchronize");
      std::memcpy(pinned_[slot_], src + off, len);
      check(cudaMemcpyAsync(dst + off, pinned_[slot_], len, cudaMemcpyHostToDevice, stream_), "MemcpyAsync");
      check(cudaEventRecord(free_[slot_], stream_), "EventRecord");
      slot_ ^= 1;
    }
  }

  int device_;
  Alloc alloc_;
  std::size_t chunk_;
  std::mutex mu_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t queued_ = nullptr;
  cudaEvent_t free_[2] = {nullptr, nullptr};
  void* pinned_[2] = {nullptr, nullptr};
  int slot_ = 0;
};

}  // namespace

// Two staging buffers of 64 MiB each, or of SCALPEL_UPLOAD_CHUNK_KB KiB (the tests make them
// small, so that a small tensor crosses several of them).
std::shared_ptr<Uploader> make_cuda_uploader(int device, std::function<Tensor(const Shape&, DType)> alloc) {
  if (const char* v = std::getenv("SCALPEL_UPLOAD_CHUNK_KB")) {
    const long kb = std::atol(v);
    SCALPEL_CHECK_INPUT(kb > 0, "SCALPEL_UPLOAD_CHUNK_KB='{}': expected a positive number of KiB", v);
    return std::make_shared<CudaUploader>(device, std::move(alloc), static_cast<std::size_t>(kb) << 10);
  }
  return std::make_shared<CudaUploader>(device, std::move(alloc), std::size_t{64} << 20);
}

}  // namespace scalpel
