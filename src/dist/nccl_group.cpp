// NcclGroup: one NCCL communicator per MPI group, made when a group first sums device buffers.
// The unique id travels by MPI_Bcast; the GPUs of the group are compared first (by host name and
// PCI bus id) because NCCL refuses two ranks on one GPU, which is how tests share a single card.
#include "nccl_group.hpp"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "scalpel/core/error.hpp"
#include "scalpel/core/log.hpp"
#include "scalpel/dist/comm.hpp"

#if defined(SCALPEL_HAVE_NCCL)
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace scalpel::dist {

#if defined(SCALPEL_HAVE_NCCL)

namespace {

void check_nccl(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess) SCALPEL_RUNTIME_ERROR("NCCL {} failed: {}", what, ncclGetErrorString(rc));
}

void check_comm(ncclComm_t comm) {
  if (!comm) SCALPEL_RUNTIME_ERROR("the NCCL communicator was aborted after an earlier error");
}

// FNV-1a of this rank's host name and GPU bus id; 0 when no GPU is selected.
std::int64_t gpu_key() {
  int dev = -1;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) {
    cudaGetLastError();
    return 0;
  }
  char bus[64] = {};
  if (cudaDeviceGetPCIBusId(bus, sizeof bus, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::uint64_t h = 1469598103934665603ull;
  for (const std::string& s : {std::string(host), std::string("/"), std::string(bus)})
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return static_cast<std::int64_t>(h >> 1) | 1;  // positive, never 0
}

// Waits for the collective just queued on the default stream, as NCCL's documentation asks:
// polling the stream and the communicator's asynchronous error, so that a peer that died or a
// broken link ends in an error naming the collective instead of a wait without end (the
// communicator is aborted then, which also frees the peers NCCL can still reach).
void wait_for(ncclComm_t& comm, const std::string& what) {
  for (;;) {
    const cudaError_t q = cudaStreamQuery(nullptr);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) {
      cudaGetLastError();
      SCALPEL_RUNTIME_ERROR("CUDA error during the NCCL {}: {}", what, cudaGetErrorString(q));
    }
    ncclResult_t async = ncclSuccess;
    check_nccl(ncclCommGetAsyncError(comm, &async), "CommGetAsyncError");
    if (async != ncclSuccess && async != ncclInProgress) {
      ncclCommAbort(comm);
      comm = nullptr;
      SCALPEL_RUNTIME_ERROR("NCCL {} failed: {} (a peer rank or its link; the communicator is aborted)", what,
                            ncclGetErrorString(async));
    }
    std::this_thread::yield();
  }
}

}  // namespace

struct NcclGroup::Impl {
  ncclComm_t comm = nullptr;
};

std::unique_ptr<NcclGroup> NcclGroup::create(MpiComm& comm, MPI_Comm* mpi) {
  // SCALPEL_NCCL: 0 = never; force = also for a one-rank group (the tests' way to run NCCL on a
  // single GPU); unset = groups of two or more ranks on distinct GPUs.
  const char* env = std::getenv("SCALPEL_NCCL");
  const std::string mode = env ? env : "";
  if (comm.size() == 1 && mode != "force") return nullptr;
  const bool wanted = mode != "0";
  const auto keys = comm.allgather(wanted ? gpu_key() : 0);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (keys[i] == 0) return nullptr;
    for (std::size_t j = 0; j < i; ++j)
      if (keys[i] == keys[j]) {
        if (comm.rank() == 0)
          log::warn("ranks {} and {} share a GPU: NCCL needs one GPU per rank, so device sums go through host "
                    "memory and MPI",
                    j, i);
        return nullptr;
      }
  }
  ncclUniqueId id;
  if (comm.rank() == 0) check_nccl(ncclGetUniqueId(&id), "GetUniqueId");
  if (MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, *mpi) != MPI_SUCCESS) SCALPEL_RUNTIME_ERROR("MPI Bcast of the NCCL id failed");
  std::unique_ptr<NcclGroup> g(new NcclGroup());
  g->impl_ = std::make_unique<Impl>();
  g->size_ = comm.size();
  check_nccl(ncclCommInitRank(&g->impl_->comm, comm.size(), id, comm.rank()), "CommInitRank");
  if (comm.rank() == 0)
    log::info("NCCL communicator over {} rank(s), one GPU each: device sums and gathers go through NCCL", comm.size());
  return g;
}

NcclGroup::~NcclGroup() {
  if (impl_ && impl_->comm) ncclCommDestroy(impl_->comm);
}

void NcclGroup::allreduce_sum(double* dev, std::size_t n) {
  check_comm(impl_->comm);
  check_nccl(ncclAllReduce(dev, dev, n, ncclFloat64, ncclSum, impl_->comm, nullptr), "AllReduce");
  wait_for(impl_->comm, fmt::format("all-reduce of {} float64 values over {} ranks", n, size_));
}

void NcclGroup::broadcast(std::byte* dev, std::size_t bytes, int root) {
  check_comm(impl_->comm);
  check_nccl(ncclBroadcast(dev, dev, bytes, ncclUint8, root, impl_->comm, nullptr), "Broadcast");
  wait_for(impl_->comm, fmt::format("broadcast of {} bytes from group rank {} of {}", bytes, root, size_));
}

void NcclGroup::allgatherv(const std::byte* mine, std::byte* out, std::span<const std::int64_t> counts, int rank) {
  // One broadcast per rank, rooted there, into its place in `out` (NCCL's all-gather needs equal
  // counts; row slices differ by a row).
  check_comm(impl_->comm);
  check_nccl(ncclGroupStart(), "GroupStart");
  std::int64_t offset = 0;
  for (int r = 0; r < static_cast<int>(counts.size()); ++r) {
    std::byte* dst = out + offset;
    const void* src = r == rank ? static_cast<const void*>(mine) : static_cast<const void*>(dst);
    check_nccl(ncclBroadcast(src, dst, static_cast<std::size_t>(counts[r]), ncclUint8, r, impl_->comm, nullptr),
               "Broadcast");
    offset += counts[r];
  }
  check_nccl(ncclGroupEnd(), "GroupEnd");
  wait_for(impl_->comm, fmt::format("all-gather of {} bytes over {} ranks", offset, counts.size()));
}

#else

struct NcclGroup::Impl {};
void NcclGroup::broadcast(std::byte*, std::size_t, int) { SCALPEL_RUNTIME_ERROR("built without NCCL"); }
void NcclGroup::allgatherv(const std::byte*, std::byte*, std::span<const std::int64_t>, int) {
  SCALPEL_RUNTIME_ERROR("built without NCCL");
}
std::unique_ptr<NcclGroup> NcclGroup::create(MpiComm&, MPI_Comm*) { return nullptr; }
NcclGroup::~NcclGroup() = default;
void NcclGroup::allreduce_sum(double*, std::size_t) { SCALPEL_RUNTIME_ERROR("built without NCCL"); }

#endif

void Comm::allreduce_sum_device(double*, std::size_t) {
  SCALPEL_RUNTIME_ERROR("this communicator has no device collectives");
}
void Comm::allgatherv_device(const std::byte*, std::byte*, std::span<const std::int64_t>) {
  SCALPEL_RUNTIME_ERROR("this communicator has no device collectives");
}
void Comm::broadcast_device(std::byte*, std::size_t, int) {
  SCALPEL_RUNTIME_ERROR("this communicator has no device collectives");
}

}  // namespace scalpel::dist
