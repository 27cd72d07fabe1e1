// MPI implementation of the Comm interface. Large buffers are sent in chunks below 2^31 elements,
// since MPI counts are int.
#include "scalpel/dist/comm.hpp"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "scalpel/core/error.hpp"

namespace scalpel::dist {
namespace {

void check_mpi(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    SCALPEL_RUNTIME_ERROR("MPI {} failed: {}", what, std::string(msg, len));
  }
}

template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
template <>
MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <>
MPI_Datatype mpi_type<std::int64_t>() { return MPI_INT64_T; }

constexpr std::size_t kChunk = std::size_t{1} << 30;

template <class T>
void allreduce_chunked(std::span<T> v, MPI_Op op, MPI_Comm comm) {
  for (std::size_t off = 0; off < v.size(); off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, v.size() - off));
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, v.data() + off, n, mpi_type<T>(), op, comm), "Allreduce");
  }
}

}  // namespace

void Comm::broadcast_string(std::string& s, int root) {
  std::int64_t n = static_cast<std::int64_t>(s.size());
  broadcast(std::as_writable_bytes(std::span(&n, 1)), root);
  s.resize(static_cast<std::size_t>(n));
  broadcast(std::as_writable_bytes(std::span(s.data(), s.size())), root);
}

void SelfComm::abort(int code) { std::_Exit(code); }

MpiEnvironment::MpiEnvironment(int* argc, char*** argv) {
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "Init_thread");
  // Errors come back as codes that we turn into exceptions carrying context.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

MpiEnvironment::~MpiEnvironment() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

bool MpiEnvironment::initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  return flag != 0;
}

struct MpiComm::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
};

std::unique_ptr<MpiComm> MpiComm::world() {
  SCALPEL_CHECK(MpiEnvironment::initialized(), "MPI is not initialised");
  std::unique_ptr<MpiComm> c(new MpiComm());
  c->impl_ = std::make_unique<Impl>();
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &c->impl_->comm), "Comm_dup");
  MPI_Comm_set_errhandler(c->impl_->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(c->impl_->comm, &c->rank_);
  MPI_Comm_size(c->impl_->comm, &c->size_);
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(c->impl_->comm, MPI_COMM_TYPE_SHARED, c->rank_, MPI_INFO_NULL, &node),
            "Comm_split_type");
  MPI_Comm_rank(node, &c->local_rank_);
  MPI_Comm_size(node, &c->local_size_);
  MPI_Comm_free(&node);
  return c;
}

MpiComm::~MpiComm() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (impl_ && impl_->comm != MPI_COMM_NULL && !finalized) MPI_Comm_free(&impl_->comm);
}

void MpiComm::barrier() { check_mpi(MPI_Barrier(impl_->comm), "Barrier"); }
void MpiComm::allreduce_sum(std::span<double> v) { allreduce_chunked(v, MPI_SUM, impl_->comm); }
void MpiComm::allreduce_sum(std::span<float> v) { allreduce_chunked(v, MPI_SUM, impl_->comm); }
void MpiComm::allreduce_sum(std::span<std::int64_t> v) { allreduce_chunked(v, MPI_SUM, impl_->comm); }
void MpiComm::allreduce_max(std::span<double> v) { allreduce_chunked(v, MPI_MAX, impl_->comm); }

std::vector<double> MpiComm::gatherv(std::span<const double> mine, int root) {
  SCALPEL_CHECK(mine.size() < static_cast<std::size_t>(INT_MAX), "gatherv of {} values", mine.size());
  int n = static_cast<int>(mine.size());
  std::vector<int> counts(rank_ == root ? size_ : 0), displs;
  check_mpi(MPI_Gather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, root, impl_->comm), "Gather");
  std::vector<double> out;
  if (rank_ == root) {
    displs.resize(size_);
    std::int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[r] = static_cast<int>(total);
      total += counts[r];
    }
    SCALPEL_CHECK(total < INT_MAX, "gatherv total {}", total);
    out.resize(static_cast<std::size_t>(total));
  }
  check_mpi(MPI_Gatherv(mine.data(), n, MPI_DOUBLE, out.data(), counts.data(), displs.data(),
                        MPI_DOUBLE, root, impl_->comm),
            "Gatherv");
  return out;
}

void MpiComm::broadcast(std::span<std::byte> bytes, int root) {
  for (std::size_t off = 0; off < bytes.size(); off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, bytes.size() - off));
    check_mpi(MPI_Bcast(bytes.data() + off, n, MPI_BYTE, root, impl_->comm), "Bcast");
  }
}

void MpiComm::abort(int code) {
  MPI_Abort(impl_ ? impl_->comm : MPI_COMM_WORLD, code);
  std::_Exit(code);
}

Range block_range(std::int64_t n, int parts, int p) {
  const std::int64_t base = n / parts, extra = n % parts;
  const std::int64_t begin = p * base + std::min<std::int64_t>(p, extra);
  return {begin, begin + base + (p < extra ? 1 : 0)};
}

}  // namespace scalpel::dist
