// Shared SparseGPT factors (see factor_share.hpp).
#include "factor_share.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "scalpel/core/error.hpp"
#include "scalpel/core/timer.hpp"

namespace scalpel::app {

std::vector<int> factor_owners(const std::vector<std::int64_t>& widths, int ranks) {
  std::vector<std::size_t> order(widths.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return widths[a] > widths[b]; });
  std::vector<double> load(static_cast<std::size_t>(std::max(ranks, 1)), 0.0);
  std::vector<int> owner(widths.size(), 0);
  for (const auto j : order) {
    const auto r = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[j] = static_cast<int>(r);
    const double d = static_cast<double>(widths[j]);
    load[r] += d * d * d;
  }
  return owner;
}

SharedFactors::SharedFactors(Backend& be, dist::Comm& group, std::vector<FactorJob> jobs, const FactorSettings& s)
    : be_(be), group_(group), jobs_(std::move(jobs)), s_(s), seconds_(jobs_.size(), 0.0) {
  std::vector<std::int64_t> widths;
  for (const auto& j : jobs_) widths.push_back(j.hessian->size(0));
  owners_ = factor_owners(widths, group_.size());
  if (group_.size() > 1) exchange();
}

prune::HinvFactor SharedFactors::make(const FactorJob& job) {
  return prune::sparsegpt_factor(be_, *job.hessian, nullptr, s_.percdamp, s_.max_tries, job.name, s_.isc);
}

const prune::HinvFactor& SharedFactors::get(int input_group) {
  if (auto it = made_.find(input_group); it != made_.end()) return it->second;
  for (std::size_t j = 0; j < jobs_.size(); ++j)
    if (jobs_[j].input_group == input_group) {
      SCALPEL_CHECK(group_.size() == 1, "{}: factor released or never exchanged", jobs_[j].name);
      Timer t;
      auto f = make(jobs_[j]);
      seconds_[j] = t.seconds();
      return made_.emplace(input_group, std::move(f)).first->second;
    }
  SCALPEL_CHECK(false, "no factor job for input group {}", input_group);
  std::abort();
}

void SharedFactors::release(int input_group) { made_.erase(input_group); }

namespace {

// What travels with a factor besides its matrices.
struct Meta {
  double damping = 0, percdamp = 0, seconds = 0;
  std::int64_t tries = 0, dead = 0, ok = 0;
};

void broadcast_tensor(Backend& be, dist::Comm& group, Tensor& t, int root) {
  Tensor host = group.rank() == root ? be.download(t) : Tensor::empty(t.shape(), t.dtype());
  group.broadcast(std::span<std::byte>(static_cast<std::byte*>(host.raw()), host.nbytes()), root);
  if (group.rank() != root) t = be.upload_exact(host);
}

}  // namespace

// Each rank makes its own jobs first (the ranks work side by side), then every factor is broadcast
// from its owner in job order. A failure on the owner reaches every rank as the same error.
void SharedFactors::exchange() {
  std::vector<std::string> errors(jobs_.size());
  for (std::size_t j = 0; j < jobs_.size(); ++j) {
    if (owners_[j] != group_.rank()) continue;
    Timer t;
    try {
      made_.emplace(jobs_[j].input_group, make(jobs_[j]));
    } catch (const Error& e) {
      errors[j] = e.what();
    }
    seconds_[j] = t.seconds();
  }
  for (std::size_t j = 0; j < jobs_.size(); ++j) {
    const int root = owners_[j];
    const bool mine = root == group_.rank();
    Meta m;
    if (mine) {
      m.seconds = seconds_[j];
      m.ok = errors[j].empty();
      if (m.ok) {
        const auto& f = made_.at(jobs_[j].input_group);
        m = {f.damping, f.percdamp, seconds_[j], f.tries, f.dead, 1};
      }
    }
    group_.broadcast(std::span<std::byte>(reinterpret_cast<std::byte*>(&m), sizeof m), root);
    seconds_[j] = m.seconds;
    if (!m.ok) {
      std::string msg = errors[j];
      group_.broadcast_string(msg, root);
      SCALPEL_RUNTIME_ERROR("{} (factorised on data rank {})", msg, root);
    }
    prune::HinvFactor f;
    const auto d = jobs_[j].hessian->size(0);
    if (mine) f = made_.at(jobs_[j].input_group);
    else {
      f.hinv = be_.empty({d, d});
      if (s_.isc) f.hdiag = be_.empty({d});
      f.damping = m.damping;
      f.percdamp = m.percdamp;
      f.tries = static_cast<int>(m.tries);
      f.dead = m.dead;
    }
    broadcast_tensor(be_, group_, f.hinv, root);
    if (s_.isc) broadcast_tensor(be_, group_, f.hdiag, root);
    made_[jobs_[j].input_group] = std::move(f);
  }
}

nlohmann::json SharedFactors::record() const {
  nlohmann::json widths = nlohmann::json::array();
  for (const auto& j : jobs_) widths.push_back(j.hessian->size(0));
  return {{"owners", owners_}, {"seconds", seconds_}, {"widths", widths}};
}

}  // namespace scalpel::app
