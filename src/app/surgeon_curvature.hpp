// One shot's curvature for LLM Surgeon's driver: the Kronecker factors of every pruned linear,
// collected by Model::backward over this rank's calibration windows (A per layer and input group,
// shared by q/k/v and gate/up; G per linear), summed over the data group, and read back as the
// means over every token of every window, rebalanced per linear. Private to app.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "scalpel/dist/comm.hpp"
#include "scalpel/model/model.hpp"
#include "scalpel/prune/kfac.hpp"

namespace scalpel::app {

// A linear the run prunes.
struct SurgeonTarget {
  std::int64_t layer = 0;
  model::LinearSpec linear;
  std::string label() const;  // "layer 3 fc1"
};

class ShotCurvature {
 public:
  // sampled_fisher: labels drawn from the model's softmax (seeded by `seed`, the shot and the
  // window's global index) instead of the true next tokens.
  ShotCurvature(Backend& be, const std::vector<SurgeonTarget>& targets, prune::Accumulation mode, std::int64_t shot,
                bool sampled_fisher, std::uint64_t seed);
  // The taps of Model::backward for windows first_window.. of the calibration set.
  model::BackwardTaps taps(std::int64_t first_window);
  void reduce(dist::Comm& group);
  // A (C' x C') and G (R x R) of targets[i], host f64 means over `tokens`, rebalanced.
  std::pair<Tensor, Tensor> factors(std::size_t i, std::int64_t tokens);
  double seconds() const;  // spent adding into the factors

 private:
  using AKey = std::pair<std::int64_t, int>;
  using GKey = std::pair<std::int64_t, std::string>;
  Backend& be_;
  const std::vector<SurgeonTarget>& targets_;
  std::int64_t shot_;
  bool sampled_;
  std::uint64_t seed_;
  std::map<AKey, std::unique_ptr<prune::KroneckerFactor>> a_;
  std::map<GKey, std::unique_ptr<prune::KroneckerFactor>> g_;
  std::map<AKey, Tensor> a_mean_;  // the current input group's A, read once for its linears
};

}  // namespace scalpel::app
