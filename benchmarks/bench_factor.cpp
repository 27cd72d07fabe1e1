// SparseGPT's factor U = chol(H⁻¹) of one wide Hessian, made whole by one rank
// (Backend::inverse_cholesky_upper, what every factor was before the split) and shared by the
// ranks of this MPI job (prune::shared_inverse_cholesky_upper, the path the prune takes for
// factors at least sparsegpt.split_width wide), in the same run on the same device. Reports
// medians over repeats (every rank synchronised before each), the ratio whole / shared, the
// shared algorithm's extra FLOPs, and whether the shared factor has the same bits as the one a
// single rank makes alone (it must). Run it at 1 rank and at N ranks:
//   mpirun -n 2 build/bin/bench_factor --width 4096 --tile 512 --threads 1 --out f2.json
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench_common.hpp"
#include "scalpel/backend/backend.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/prune/split_factor.hpp"

using namespace scalpel;
using nlohmann::json;

namespace {

// X Xᵀ / k + 0.1 I from a fixed pseudo-random X [n, k] (the same on every rank): SPD.
Tensor spd_host(std::int64_t n, std::int64_t k) {
  Tensor x = Tensor::empty({n, k});
  std::uint64_t s = 12345;
  for (std::int64_t i = 0; i < n * k; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x.f32()[i] = static_cast<float>(static_cast<std::int64_t>(s >> 40)) / 8388608.0f - 1.0f;
  }
  auto be = make_cpu_backend(0);
  Tensor h = Tensor::empty({n, n});
  be->gemm(Trans::no, Trans::yes, 1.0f / static_cast<float>(k), x, x, 0.0f, h);
  for (std::int64_t i = 0; i < n; ++i) h.f32()[i * n + i] += 0.1f;
  return h;
}

// Median seconds of f over repeats (after one warm-up), every rank starting together.
template <class F>
double timed(dist::Comm& world, Backend& be, int repeats, F&& f) {
  f();
  be.synchronize();
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    world.barrier();
    Timer tm;
    f();
    be.synchronize();
    world.barrier();
    t.push_back(tm.seconds());
  }
  return bench::median(t);
}

}  // namespace

int main(int argc, char** argv) {
  dist::MpiEnvironment env(&argc, &argv);
  auto world = dist::MpiComm::world();
  CLI::App app("SparseGPT's factor of one wide Hessian: whole on one rank vs shared by the MPI ranks");
  std::string device = "cpu", out;
  std::int64_t width = 4096, tile = 1024;
  int repeats = 3, threads = 0;
  app.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--width", width, "the Hessian's width (49152: OPT-175B's fc2)")->check(CLI::PositiveNumber);
  app.add_option("--tile", tile, "rows per panel (sparsegpt.tile)")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats)->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "CPU threads per rank (0: the library's choice)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--out", out, "JSON file (rank 0; default: stdout only)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return world->rank() == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
  }
  // An error is said by the rank that met it; with several ranks it ends the job (MPI_Abort), as
  // the others may be waiting for it in a collective (a GPU missing on one rank's node).
  const int code = bench::guarded("bench_factor", [&] {
    BackendOptions bo;
    bo.threads = threads;
    bo.local_rank = world->rank();
    auto be = make_backend(device, bo);
    const Tensor h = be->upload(spd_host(width, width));
    const double n = static_cast<double>(width);

    Tensor u;
    const double whole_s = timed(*world, *be, repeats, [&] {
      u = clone_on(*be, h);
      if (!be->inverse_cholesky_upper(u)) throw std::runtime_error("whole factorisation failed");
    });
    const double shared_s = timed(*world, *be, repeats, [&] {
      u = clone_on(*be, h);
      if (!prune::shared_inverse_cholesky_upper(*be, u, tile, *world))
        throw std::runtime_error("shared factorisation failed");
    });
    // The same bits as one rank alone (the prune's rank-count invariance rests on it).
    dist::SelfComm self;
    Tensor alone = clone_on(*be, h);
    prune::shared_inverse_cholesky_upper(*be, alone, tile, self);
    const Tensor a = be->download(alone), b = be->download(u);
    const bool same = std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;

    const double whole_flops = 2.0 / 3.0 * n * n * n;
    json r = {{"benchmark", "bench_factor"},
                    {"device", be->name()},
                    {"ranks", world->size()},
                    {"threads_per_rank", threads},
                    {"width", width},
                    {"tile", tile},
                    {"repeats", repeats},
                    {"whole_one_rank_s", whole_s},
                    {"whole_gflops", whole_flops / whole_s / 1e9},
                    {"shared_s", shared_s},
                    {"speedup_vs_whole", whole_s / shared_s},
                    {"same_bits_as_one_rank", same},
                    {"note", "whole: Backend::inverse_cholesky_upper on each rank (the owner's time before the split); "
                             "shared: prune::shared_inverse_cholesky_upper over all ranks, panels through host memory "
                             "and MPI"}};
    r["provenance"] = bench::provenance(argc, argv);
    if (world->rank() == 0) bench::emit_json(r, out, 1);
    return same ? 0 : 1;
  });
  if (code == 2 && world->size() > 1) world->abort(2);
  return code;
}
