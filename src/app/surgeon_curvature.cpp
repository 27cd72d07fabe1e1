// LLM Surgeon's per-shot curvature collection (see surgeon_curvature.hpp).
#include "surgeon_curvature.hpp"

#include <fmt/format.h>

#include <cmath>
#include <random>

#include "scalpel/core/error.hpp"

namespace scalpel::app {

std::string SurgeonTarget::label() const { return fmt::format("layer {} {}", layer, linear.name); }

ShotCurvature::ShotCurvature(Backend& be, const std::vector<SurgeonTarget>& targets, prune::Accumulation mode,
                             std::int64_t shot, bool sampled_fisher, std::uint64_t seed)
    : be_(be), targets_(targets), shot_(shot), sampled_(sampled_fisher), seed_(seed) {
  for (const auto& t : targets) {
    const AKey ak{t.layer, t.linear.input_group};
    if (!a_.count(ak))
      a_[ak] = std::make_unique<prune::KroneckerFactor>(
          be, t.linear.in, t.linear.bias, mode, fmt::format("shot {} layer {} input {} (A)", shot, t.layer, t.linear.name));
    g_[{t.layer, t.linear.name}] = std::make_unique<prune::KroneckerFactor>(
        be, t.linear.out, false, mode, fmt::format("shot {} {} output gradient (G)", shot, t.label()));
  }
}

model::BackwardTaps ShotCurvature::taps(std::int64_t first_window) {
  model::BackwardTaps t;
  t.input = [this](std::int64_t layer, int group, const std::vector<std::string>&, const Tensor& x) {
    if (auto it = a_.find({layer, group}); it != a_.end()) it->second->add(x);
  };
  t.grad = [this](std::int64_t layer, const std::string& name, const Tensor& g) {
    if (auto it = g_.find({layer, name}); it != g_.end()) it->second->add(g);
  };
  if (sampled_)
    t.labels = [this, first_window](std::int64_t b, const Tensor& logits, std::span<std::int32_t> targets) {
      // One label per position from softmax(logits), drawn with a generator seeded by (seed, shot,
      // window): the same labels at any rank count.
      const Tensor host = be_.download(logits);
      const auto V = host.size(1);
      std::mt19937_64 rng(seed_ * 1000003ULL + static_cast<std::uint64_t>(shot_) * 7919ULL +
                          static_cast<std::uint64_t>(first_window + b));
      std::vector<double> p(static_cast<std::size_t>(V));
      for (std::size_t t = 0; t + 1 < targets.size(); ++t) {
        const float* row = host.f32() + static_cast<std::int64_t>(t) * V;
        double m = row[0];
        for (std::int64_t j = 1; j < V; ++j) m = std::max(m, static_cast<double>(row[j]));
        for (std::int64_t j = 0; j < V; ++j) p[static_cast<std::size_t>(j)] = std::exp(row[j] - m);
        std::discrete_distribution<std::int32_t> d(p.begin(), p.end());
        targets[t] = d(rng);
      }
    };
  return t;
}

void ShotCurvature::reduce(dist::Comm& group) {
  for (auto& [k, f] : a_) f->reduce(group);
  for (auto& [k, f] : g_) f->reduce(group);
}

std::pair<Tensor, Tensor> ShotCurvature::factors(std::size_t i, std::int64_t tokens) {
  const auto& t = targets_.at(i);
  const AKey ak{t.layer, t.linear.input_group};
  auto it = a_mean_.find(ak);
  if (it == a_mean_.end()) {
    a_mean_.clear();  // targets come group by group: one input group's A at a time
    it = a_mean_.emplace(ak, a_.at(ak)->mean(tokens)).first;
  }
  Tensor a = it->second.clone();
  Tensor g = g_.at({t.layer, t.linear.name})->mean(tokens);
  prune::rebalance_factors(a, g);
  return {std::move(a), std::move(g)};
}

double ShotCurvature::seconds() const {
  double s = 0;
  for (const auto& [k, f] : a_) s += f->seconds();
  for (const auto& [k, f] : g_) s += f->seconds();
  return s;
}

}  // namespace scalpel::app
