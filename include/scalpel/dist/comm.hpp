// Communicators. Algorithms see the abstract Comm (sum, gather, broadcast over a group of ranks);
// MpiComm implements it over MPI with RAII, and SelfComm is the one-process group used by tests
// and single-process runs. Raw MPI types never leave src/dist.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace scalpel::dist {

// Bytes this rank handed to each kind of collective (its buffers' sizes: an all-reduce of n bytes
// counts n, an all-gather counts the gathered total, a broadcast what a rank other than the root
// receives and nothing at the root), for the metrics and the benchmark.
struct CommBytes {
  std::int64_t allreduce = 0, allgather = 0, p2p = 0, broadcast = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;
  const CommBytes& bytes() const { return bytes_; }
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void barrier() = 0;
  // Element-wise sum over the group, result on every rank.
  virtual void allreduce_sum(std::span<double> values) = 0;
  virtual void allreduce_sum(std::span<float> values) = 0;
  virtual void allreduce_sum(std::span<std::int64_t> values) = 0;
  virtual void allreduce_max(std::span<double> values) = 0;
  virtual void allreduce_max(std::span<std::int64_t> values) = 0;
  // Every rank's value, in rank order, on every rank.
  virtual std::vector<std::int64_t> allgather(std::int64_t mine) = 0;
  // Concatenation of every rank's bytes in rank order into `out` on every rank; counts[r] is rank
  // r's byte count (the same list on every rank; out holds their sum). Any size (chunked).
  virtual void allgatherv(std::span<const std::byte> mine, std::span<std::byte> out,
                          std::span<const std::int64_t> counts) = 0;
  // Point to point (any size; chunked). `tag` tells concurrent messages apart.
  virtual void send(std::span<const std::byte> bytes, int dest, int tag) = 0;
  virtual void recv(std::span<std::byte> bytes, int source, int tag) = 0;
  // The ranks with the same `color`, ordered by `key` (MPI_Comm_split).
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;
  // Concatenation of every rank's `mine` in rank order, on `root` only (empty elsewhere).
  virtual std::vector<double> gatherv(std::span<const double> mine, int root) = 0;
  virtual void broadcast(std::span<std::byte> bytes, int root) = 0;
  // Ends every rank of the job now (error on one rank must not leave others waiting).
  [[noreturn]] virtual void abort(int code) = 0;

  // Device-resident collectives, on buffers in the memory of the GPU this rank's backend uses.
  // device_collectives() is collective on its first call (every rank of the group calls it): true
  // when the build has NCCL and the ranks use distinct GPUs (NCCL cannot put two ranks of one
  // communicator on one GPU); callers stage through host memory when it is false.
  virtual bool device_collectives() { return false; }
  // Element-wise sum of n doubles at device address `dev`, in place, on every rank. Returns once
  // the sum is complete.
  virtual void allreduce_sum_device(double* dev, std::size_t n);
  // allgatherv() on device buffers: every rank's `mine` in rank order into `out`, counts[r] bytes
  // from rank r (the same list everywhere). Returns once `out` is complete.
  virtual void allgatherv_device(const std::byte* mine, std::byte* out, std::span<const std::int64_t> counts);
  // broadcast() on a device buffer of `bytes` bytes, in place. Returns once it is complete.
  virtual void broadcast_device(std::byte* dev, std::size_t bytes, int root);

  bool is_root() const { return rank() == 0; }
  void broadcast_string(std::string& s, int root);

 protected:
  CommBytes bytes_;
};

// The group of one.
class SelfComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void barrier() override {}
  void allreduce_sum(std::span<double>) override {}
  void allreduce_sum(std::span<float>) override {}
  void allreduce_sum(std::span<std::int64_t>) override {}
  void allreduce_max(std::span<double>) override {}
  void allreduce_max(std::span<std::int64_t>) override {}
  std::vector<std::int64_t> allgather(std::int64_t mine) override { return {mine}; }
  void allgatherv(std::span<const std::byte> mine, std::span<std::byte> out, std::span<const std::int64_t>) override;
  void send(std::span<const std::byte>, int dest, int) override;
  void recv(std::span<std::byte>, int source, int) override;
  std::unique_ptr<Comm> split(int, int) override { return std::make_unique<SelfComm>(); }
  std::vector<double> gatherv(std::span<const double> mine, int) override {
    return {mine.begin(), mine.end()};
  }
  void broadcast(std::span<std::byte>, int) override {}
  [[noreturn]] void abort(int code) override;
};

// MPI_Init_thread / MPI_Finalize for the lifetime of the object (one per process).
class MpiEnvironment {
 public:
  MpiEnvironment(int* argc, char*** argv);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  static bool initialized();
};

class MpiComm final : public Comm {
 public:
  static std::unique_ptr<MpiComm> world();
  ~MpiComm() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void barrier() override;
  void allreduce_sum(std::span<double> values) override;
  void allreduce_sum(std::span<float> values) override;
  void allreduce_sum(std::span<std::int64_t> values) override;
  void allreduce_max(std::span<double> values) override;
  void allreduce_max(std::span<std::int64_t> values) override;
  std::vector<std::int64_t> allgather(std::int64_t mine) override;
  void allgatherv(std::span<const std::byte> mine, std::span<std::byte> out,
                  std::span<const std::int64_t> counts) override;
  void send(std::span<const std::byte> bytes, int dest, int tag) override;
  void recv(std::span<std::byte> bytes, int source, int tag) override;
  std::unique_ptr<Comm> split(int color, int key) override;
  std::vector<double> gatherv(std::span<const double> mine, int root) override;
  void broadcast(std::span<std::byte> bytes, int root) override;
  [[noreturn]] void abort(int code) override;

  // Ranks sharing this node, and this rank's index among them (for threads and GPUs per rank).
  int local_size() const { return local_size_; }
  int local_rank() const { return local_rank_; }

  bool device_collectives() override;
  void allreduce_sum_device(double* dev, std::size_t n) override;
  void allgatherv_device(const std::byte* mine, std::byte* out, std::span<const std::int64_t> counts) override;
  void broadcast_device(std::byte* dev, std::size_t bytes, int root) override;

 private:
  MpiComm() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

// The process grid of DESIGN.md section 2: world = stages x data. World rank r is stage
// r / data, data index r % data. `data_group` holds the ranks of this rank's stage (they share
// each layer's work); `pipe` the ranks with this data index (one per stage, in stage order).
struct Grid {
  int stages = 1, data = 1, stage = 0, data_index = 0;
  std::unique_ptr<Comm> data_group, pipe;
  int world_rank_of(int stage_, int data_index_) const { return stage_ * data + data_index_; }
};
// data == 0: world / stages. Input Error when world is not stages x data.
Grid make_grid(Comm& world, int stages, int data);
// make_grid's check, made by no collective call: the data ranks per stage of a grid of `world`
// ranks (data == 0: world / stages), or an input Error naming parallel.stages and parallel.data.
int grid_data(int world, int stages, int data);

// Contiguous block split of n items over `parts`: the [begin, end) of part p (the first n % parts
// parts get one more).
struct Range {
  std::int64_t begin, end;
};
Range block_range(std::int64_t n, int parts, int p);

// Items of the given costs assigned to `parts` ranks, largest first to the least loaded (ties to
// the lower rank, equal costs in item order): the owner of each item.
std::vector<int> balance_parts(const std::vector<double>& costs, int parts);

}  // namespace scalpel::dist
