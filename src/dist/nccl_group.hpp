// NCCL communicators bootstrapped from MPI (private to dist): MPI keeps the control traffic, NCCL
// sums the large device-resident buffers (the statistics) without a trip through host memory.
#pragma once
#include <mpi.h>

#include <cstddef>
#include <memory>
#include <span>

namespace scalpel::dist {

class MpiComm;

class NcclGroup {
 public:
  // Collective over `comm`. Null when NCCL is not built in, SCALPEL_NCCL=0 is set, the group has
  // one rank (unless SCALPEL_NCCL=force), a rank has no CUDA device selected, or two ranks share a
  // GPU (NCCL forbids that); every rank reaches the same answer.
  static std::unique_ptr<NcclGroup> create(MpiComm& comm, MPI_Comm* mpi);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;
  // Each in place on the current CUDA device's default stream and returns when it is done; a peer's
  // failure NCCL reports ends in a runtime Error naming the collective (the communicator aborted).
  // The sum:
  void allreduce_sum(double* dev, std::size_t n);
  // Rank r's counts[r] bytes at `mine` (device) into `out` at the offset of the counts before it.
  void allgatherv(const std::byte* mine, std::byte* out, std::span<const std::int64_t> counts, int rank);
  // In place from `root`'s buffer to every rank's.
  void broadcast(std::byte* dev, std::size_t bytes, int root);

 private:
  NcclGroup() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int size_ = 0;  // ranks, for error messages
};

}  // namespace scalpel::dist
