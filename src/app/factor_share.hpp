// SparseGPT's factors of one pass of a layer, shared: the linears of an input group (q, k, v)
// have one Hessian and so one factor, made once. A factor at least FactorSettings::split_width
// wide is made by all ranks together (prune/split_factor.hpp; at one rank too, for the same bits).
// With several data ranks each narrower group's factor is made by one rank and broadcast, so that the ranks split the factorisations instead of each
// repeating all of them. Groups go to ranks greedily by cost (d³: largest first, to the least
// loaded rank, ties to the lower rank). A factor's bits do not depend on the rank or thread count
// that made it (the backends' Cholesky is thread-invariant), so the pruned model stays the same at
// any rank count. One rank: each factor is made when first asked for and can be released after
// its group (the memory of one factor at a time, as before); several: all factors of the pass
// exist from the start of the pass.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "scalpel/backend/backend.hpp"
#include "scalpel/dist/comm.hpp"
#include "scalpel/prune/pruner.hpp"

namespace scalpel::app {

struct FactorJob {
  int input_group = 0;
  std::string name;         // "layer 3 self_attn.q_proj/k_proj/v_proj", for logs and errors
  const Tensor* hessian = nullptr;
};

struct FactorSettings {
  double percdamp = 0.01;
  int max_tries = 10;
  bool isc = false;  // keep the damped diagonal (the ISC saliency)
  // Factors at least this wide (0: none) are made by every rank together (split_factor.hpp) in
  // panels of `tile` rows, at every rank count.
  std::int64_t split_width = 0;
  std::int64_t tile = 1024;
};

// The owner rank of each job: greedy on width³, as described above (the jobs made whole).
std::vector<int> factor_owners(const std::vector<std::int64_t>& widths, int ranks);

class SharedFactors {
 public:
  // idle: called when this rank has made its factors and may wait for the others' (a watchdog's
  // suspend; several ranks only).
  SharedFactors(Backend& be, dist::Comm& group, std::vector<FactorJob> jobs, const FactorSettings& s,
                std::function<void()> idle = [] {});
  // The factor of the group's Hessian (made here on one rank; received or made on several).
  const prune::HinvFactor& get(int input_group);
  void release(int input_group);
  // {"owners": [...], "seconds": [...], "widths": [...]} per job (seconds on the owner; owner -1:
  // made by all ranks together).
  nlohmann::json record() const;

 private:
  bool shared(const FactorJob& job) const;
  prune::HinvFactor make(const FactorJob& job);
  void exchange(const std::function<void()>& idle);
  Backend& be_;
  dist::Comm& group_;
  std::vector<FactorJob> jobs_;
  FactorSettings s_;
  std::vector<int> owners_;
  std::vector<double> seconds_;
  std::map<int, prune::HinvFactor> made_;
};

}  // namespace scalpel::app
