// Shared SparseGPT factors (see factor_share.hpp).
#include "factor_share.hpp"


#include "root_work.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/prune/split_factor.hpp"
#include "scalpel/core/timer.hpp"

namespace scalpel::app {

std::vector<int> factor_owners(const std::vector<std::int64_t>& widths, int ranks) {
  std::vector<double> costs;
  for (const auto w : widths) costs.push_back(static_cast<double>(w) * static_cast<double>(w) * static_cast<double>(w));
  return dist::balance_parts(costs, ranks);
}

SharedFactors::SharedFactors(Backend& be, dist::Comm& group, std::vector<FactorJob> jobs, const FactorSettings& s,
                             std::function<void()> idle)
    : be_(be), group_(group), jobs_(std::move(jobs)), s_(s), owners_(jobs_.size(), -1), seconds_(jobs_.size(), 0.0) {
  std::vector<std::int64_t> widths;
  std::vector<std::size_t> whole;
  for (std::size_t j = 0; j < jobs_.size(); ++j)
    if (!shared(jobs_[j])) {
      whole.push_back(j);
      widths.push_back(jobs_[j].hessian->size(0));
    }
  const auto o = factor_owners(widths, group_.size());
  for (std::size_t k = 0; k < whole.size(); ++k) owners_[whole[k]] = o[k];
  if (group_.size() > 1) exchange(idle);
}

bool SharedFactors::shared(const FactorJob& job) const {
  return s_.split_width > 0 && job.hessian->size(0) >= s_.split_width;
}

prune::HinvFactor SharedFactors::make(const FactorJob& job) {
  std::function<bool(Tensor&)> factorise;
  if (shared(job))
    factorise = [this](Tensor& h) { return prune::shared_inverse_cholesky_upper(be_, h, s_.tile, group_); };
  return prune::sparsegpt_factor(be_, *job.hessian, nullptr, s_.percdamp, s_.max_tries, job.name, s_.isc, factorise);
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
  std::int64_t tries = 0, dead = 0;
  std::int64_t width = 0;  // checked by the receivers: a byte broadcast cannot tell a size mismatch
};

// From the owner to every rank: by NCCL between GPUs that have it (as split_factor's panels go),
// else through host memory and MPI. Every rank takes the same branch (same backend, and
// device_collectives() is decided collectively).
void broadcast_tensor(Backend& be, dist::Comm& group, Tensor& t, int root) {
  if (t.device() == Device::cuda && group.device_collectives()) {
    group.broadcast_device(static_cast<std::byte*>(t.raw()), t.nbytes(), root);
    return;
  }
  Tensor host = group.rank() == root ? be.download(t) : Tensor::empty(t.shape(), t.dtype());
  group.broadcast(std::span<std::byte>(static_cast<std::byte*>(host.raw()), host.nbytes()), root);
  if (group.rank() != root) t = be.upload_exact(host);
}

}  // namespace

// The shared factors first, all ranks together in job order (each rank decides the same: every
// failure is seen by all). Then each rank makes its own whole jobs (the ranks work side by side),
// and every one is broadcast from its owner in job order (detail::owned_work: a failure on the
// owner reaches every rank).
void SharedFactors::exchange(const std::function<void()>& idle) {
  std::vector<std::size_t> whole;
  std::vector<int> owners;
  for (std::size_t j = 0; j < jobs_.size(); ++j) {
    if (owners_[j] >= 0) {
      whole.push_back(j);
      owners.push_back(owners_[j]);
      continue;
    }
    Timer t;
    made_.emplace(jobs_[j].input_group, make(jobs_[j]));
    seconds_[j] = t.seconds();
  }
  detail::owned_work(
      group_, owners, "factorised",
      [&](std::size_t k) {
        const auto j = whole[k];
        Timer t;
        made_.emplace(jobs_[j].input_group, make(jobs_[j]));
        seconds_[j] = t.seconds();
      },
      [&](std::size_t k, int root) {
        const auto j = whole[k];
        const bool mine = root == group_.rank();
        Meta m;
        if (mine) {
          const auto& f = made_.at(jobs_[j].input_group);
          m = {f.damping, f.percdamp, seconds_[j], f.tries, f.dead, f.hinv.size(0)};
        }
        group_.broadcast(std::span<std::byte>(reinterpret_cast<std::byte*>(&m), sizeof m), root);
        prune::HinvFactor f;
        if (mine) {
          f = made_.at(jobs_[j].input_group);
        } else {
          const auto d = jobs_[j].hessian->size(0);
          SCALPEL_CHECK(m.width == d, "factor of input group {}: rank {} made it {} wide, this rank's Hessian is {}",
                        jobs_[j].input_group, root, m.width, d);
          f.hinv = be_.empty({d, d});
          if (s_.isc) f.hdiag = be_.empty({d});
          f.damping = m.damping;
          f.percdamp = m.percdamp;
          f.tries = static_cast<int>(m.tries);
          f.dead = m.dead;
        }
        seconds_[j] = m.seconds;
        broadcast_tensor(be_, group_, f.hinv, root);
        if (s_.isc) broadcast_tensor(be_, group_, f.hdiag, root);
        made_[jobs_[j].input_group] = std::move(f);
      },
      idle);
}

nlohmann::json SharedFactors::record() const {
  nlohmann::json widths = nlohmann::json::array();
  for (const auto& j : jobs_) widths.push_back(j.hessian->size(0));
  return {{"owners", owners_}, {"seconds", seconds_}, {"widths", widths}};
}

}  // namespace scalpel::app
