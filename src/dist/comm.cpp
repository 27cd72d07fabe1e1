// MPI implementation of the Comm interface. Large buffers are sent in chunks below 2^31 elements,
// since MPI counts are int.
#include "scalpel/dist/comm.hpp"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "scalpel/core/error.hpp"
#include "nccl_group.hpp"

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

void SelfComm::allgatherv(std::span<const std::byte> mine, std::span<std::byte> out, std::span<const std::int64_t>) {
  SCALPEL_CHECK(out.size() == mine.size(), "allgatherv: {} bytes into {}", mine.size(), out.size());
  std::copy(mine.begin(), mine.end(), out.begin());
}
void SelfComm::send(std::span<const std::byte>, int dest, int) {
  SCALPEL_CHECK(false, "send to rank {} in a one-rank group", dest);
}
void SelfComm::recv(std::span<std::byte>, int source, int) {
  SCALPEL_CHECK(false, "recv from rank {} in a one-rank group", source);
}

MpiEnvironment::MpiEnvironment(int* argc, char*** argv) {
  // Started without a launcher, Open MPI 4 makes the process a singleton and by default spawns an
  // orted for it, which waited 2.4 s here on every command (`scalpel --help` took 3.2 s, 0.6 s
  // without). scalpel never spawns processes, so the isolated singleton does; under mpirun or srun
  // the variable is not read. A value the user set is kept.
  setenv("OMPI_MCA_ess_singleton_isolated", "1", 0);
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
  std::unique_ptr<NcclGroup> nccl;  // set up by the first device_collectives()
  bool nccl_decided = false;
};

bool MpiComm::device_collectives() {
  if (!impl_->nccl_decided) {
    impl_->nccl = NcclGroup::create(*this, &impl_->comm);
    impl_->nccl_decided = true;
  }
  return impl_->nccl != nullptr;
}

void MpiComm::allreduce_sum_device(double* dev, std::size_t n) {
  SCALPEL_CHECK(device_collectives(), "allreduce_sum_device without NCCL on this group");
  bytes_.allreduce += static_cast<std::int64_t>(n * sizeof(double));
  impl_->nccl->allreduce_sum(dev, n);
}

void MpiComm::allgatherv_device(const std::byte* mine, std::byte* out, std::span<const std::int64_t> counts) {
  SCALPEL_CHECK(device_collectives(), "allgatherv_device without NCCL on this group");
  SCALPEL_CHECK(static_cast<int>(counts.size()) == size_, "allgatherv_device: {} counts for {} ranks", counts.size(),
                size_);
  for (const auto c : counts) bytes_.allgather += c;
  impl_->nccl->allgatherv(mine, out, counts, rank_);
}

void MpiComm::broadcast_device(std::byte* dev, std::size_t bytes, int root) {
  SCALPEL_CHECK(device_collectives(), "broadcast_device without NCCL on this group");
  SCALPEL_CHECK(root >= 0 && root < size_, "broadcast_device: root {} of {} ranks", root, size_);
  if (rank_ != root) bytes_.broadcast += static_cast<std::int64_t>(bytes);
  impl_->nccl->broadcast(dev, bytes, root);
}

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
  if (impl_) impl_->nccl.reset();  // before the MPI communicator it was bootstrapped from
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (impl_ && impl_->comm != MPI_COMM_NULL && !finalized) MPI_Comm_free(&impl_->comm);
}

void MpiComm::barrier() { check_mpi(MPI_Barrier(impl_->comm), "Barrier"); }
void MpiComm::allreduce_sum(std::span<double> v) {
  bytes_.allreduce += static_cast<std::int64_t>(v.size_bytes());
  allreduce_chunked(v, MPI_SUM, impl_->comm);
}
void MpiComm::allreduce_sum(std::span<float> v) {
  bytes_.allreduce += static_cast<std::int64_t>(v.size_bytes());
  allreduce_chunked(v, MPI_SUM, impl_->comm);
}
void MpiComm::allreduce_sum(std::span<std::int64_t> v) {
  bytes_.allreduce += static_cast<std::int64_t>(v.size_bytes());
  allreduce_chunked(v, MPI_SUM, impl_->comm);
}
void MpiComm::allreduce_max(std::span<double> v) {
  bytes_.allreduce += static_cast<std::int64_t>(v.size_bytes());
  allreduce_chunked(v, MPI_MAX, impl_->comm);
}
void MpiComm::allreduce_max(std::span<std::int64_t> v) {
  bytes_.allreduce += static_cast<std::int64_t>(v.size_bytes());
  allreduce_chunked(v, MPI_MAX, impl_->comm);
}

std::vector<std::int64_t> MpiComm::allgather(std::int64_t mine) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(size_));
  check_mpi(MPI_Allgather(&mine, 1, MPI_INT64_T, out.data(), 1, MPI_INT64_T, impl_->comm), "Allgather");
  return out;
}

void MpiComm::allgatherv(std::span<const std::byte> mine, std::span<std::byte> out,
                         std::span<const std::int64_t> counts) {
  SCALPEL_CHECK(static_cast<int>(counts.size()) == size_, "allgatherv: {} counts for {} ranks", counts.size(), size_);
  SCALPEL_CHECK(counts[static_cast<std::size_t>(rank_)] == static_cast<std::int64_t>(mine.size()),
                "allgatherv: rank {} sends {} bytes, counts say {}", rank_, mine.size(), counts[rank_]);
  std::int64_t total = 0;
  for (auto c : counts) total += c;
  SCALPEL_CHECK(total == static_cast<std::int64_t>(out.size()), "allgatherv: {} bytes into {}", total, out.size());
  bytes_.allgather += total;
  if (total < INT_MAX) {
    std::vector<int> cnt(static_cast<std::size_t>(size_)), displs(static_cast<std::size_t>(size_));
    int off = 0;
    for (int r = 0; r < size_; ++r) {
      cnt[r] = static_cast<int>(counts[r]);
      displs[r] = off;
      off += cnt[r];
    }
    check_mpi(MPI_Allgatherv(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, out.data(), cnt.data(),
                             displs.data(), MPI_BYTE, impl_->comm),
              "Allgatherv");
    return;
  }
  // Past int counts: each rank's part is broadcast from its owner, in chunks.
  std::int64_t off = 0;
  for (int r = 0; r < size_; ++r) {
    auto part = out.subspan(static_cast<std::size_t>(off), static_cast<std::size_t>(counts[r]));
    if (r == rank_) std::copy(mine.begin(), mine.end(), part.begin());
    broadcast(part, r);
    off += counts[r];
  }
}

void MpiComm::send(std::span<const std::byte> bytes, int dest, int tag) {
  bytes_.p2p += static_cast<std::int64_t>(bytes.size());
  for (std::size_t off = 0; off < bytes.size() || off == 0; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, bytes.size() - off));
    check_mpi(MPI_Send(bytes.data() + off, n, MPI_BYTE, dest, tag, impl_->comm), "Send");
    if (bytes.empty()) break;
  }
}

void MpiComm::recv(std::span<std::byte> bytes, int source, int tag) {
  for (std::size_t off = 0; off < bytes.size() || off == 0; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, bytes.size() - off));
    MPI_Status st;
    check_mpi(MPI_Recv(bytes.data() + off, n, MPI_BYTE, source, tag, impl_->comm, &st), "Recv");
    int got = 0;
    MPI_Get_count(&st, MPI_BYTE, &got);
    SCALPEL_CHECK(got == n, "recv from rank {}: {} bytes, expected {}", source, got, n);
    if (bytes.empty()) break;
  }
}

std::unique_ptr<Comm> MpiComm::split(int color, int key) {
  std::unique_ptr<MpiComm> c(new MpiComm());
  c->impl_ = std::make_unique<Impl>();
  check_mpi(MPI_Comm_split(impl_->comm, color, key, &c->impl_->comm), "Comm_split");
  MPI_Comm_set_errhandler(c->impl_->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(c->impl_->comm, &c->rank_);
  MPI_Comm_size(c->impl_->comm, &c->size_);
  c->local_rank_ = local_rank_;
  c->local_size_ = local_size_;
  return c;
}

int grid_data(int world, int stages, int data) {
  SCALPEL_CHECK_INPUT(stages >= 1, "config: 'parallel.stages' must be >= 1, got {}", stages);
  if (data == 0) {
    SCALPEL_CHECK_INPUT(world % stages == 0,
                        "config: 'parallel.stages' {} does not divide the {} ranks of the job (world = stages x data)",
                        stages, world);
    data = world / stages;
  }
  SCALPEL_CHECK_INPUT(static_cast<std::int64_t>(stages) * data == world,
                      "config: 'parallel.stages' {} x 'parallel.data' {} = {} ranks, but the job has {} (world = "
                      "stages x data)",
                      stages, data, static_cast<std::int64_t>(stages) * data, world);
  return data;
}

Grid make_grid(Comm& world, int stages, int data) {
  data = grid_data(world.size(), stages, data);
  Grid g;
  g.stages = stages;
  g.data = data;
  g.stage = world.rank() / data;
  g.data_index = world.rank() % data;
  g.data_group = world.split(g.stage, g.data_index);
  g.pipe = world.split(g.data_index, g.stage);
  return g;
}

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
  if (rank_ != root) bytes_.broadcast += static_cast<std::int64_t>(bytes.size());
  for (std::size_t off = 0; off < bytes.size(); off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, bytes.size() - off));
    check_mpi(MPI_Bcast(bytes.data() + off, n, MPI_BYTE, root, impl_->comm), "Bcast");
  }
}

void MpiComm::abort(int code) {
  MPI_Abort(impl_ ? impl_->comm : MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::vector<int> balance_parts(const std::vector<double>& costs, int parts) {
  std::vector<std::size_t> order(costs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<std::size_t>(std::max(parts, 1)), 0.0);
  std::vector<int> owner(costs.size(), 0);
  for (const auto i : order) {
    const auto r = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(r);
    load[r] += costs[i];
  }
  return owner;
}

Range block_range(std::int64_t n, int parts, int p) {
  const std::int64_t base = n / parts, extra = n % parts;
  const std::int64_t begin = p * base + std::min<std::int64_t>(p, extra);
  return {begin, begin + base + (p < extra ? 1 : 0)};
}

}  // namespace scalpel::dist
