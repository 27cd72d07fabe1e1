// Work that one rank does and shares with the others: rank 0 reading and tokenizing an input
// file, or items split over the ranks (factorisations, LLM Surgeon's updates); and the input checks
// every rank makes alike. An error on the rank doing the work becomes the same error on every rank,
// so no rank waits for data that never comes, and the job ends with the message naming what failed,
// printed once.
#pragma once
#include <algorithm>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "scalpel/core/error.hpp"
#include "scalpel/dist/comm.hpp"

namespace scalpel::app::detail {

// When rank `root` holds an error (kind >= 0 there: its ErrorKind, `err` its message), every rank
// throws it as a SharedError, with `suffix` added; otherwise returns. A collective call.
inline void throw_shared(dist::Comm& comm, std::int64_t kind, std::string err, int root, const std::string& suffix = {}) {
  comm.broadcast(std::as_writable_bytes(std::span(&kind, 1)), root);
  if (kind < 0) return;
  comm.broadcast_string(err, root);
  throw SharedError(static_cast<ErrorKind>(kind), err + suffix, comm.size(), __FILE__, __LINE__);
}

// Runs `work` on rank 0; an Error it throws is rethrown on every rank, of the same kind.
template <class F>
void on_root(dist::Comm& comm, F&& work) {
  std::string err;
  std::int64_t kind = -1;
  if (comm.is_root()) {
    try {
      work();
    } catch (const Error& e) {
      err = e.what();
      kind = static_cast<std::int64_t>(e.kind());
    }
  }
  throw_shared(comm, kind, std::move(err), 0);
}

// Runs `check` on every rank and returns its result: input checks each rank makes alike from the
// same inputs (a config, a model's config.json, the calibration text). An Error on any rank becomes
// a SharedError on every rank, with the kind and message of the lowest failing rank (naming it when
// some ranks passed), so a config typo at 64 ranks is printed once and not 64 times under
// MPI_Abort's banner. `check` makes no collective call (a failing rank would leave the others
// waiting in it).
template <class F>
auto on_every_rank(dist::Comm& comm, F&& check) -> decltype(check()) {
  using R = decltype(check());
  if (comm.size() == 1) return check();
  std::string err;
  std::int64_t kind = -1;
  std::optional<std::conditional_t<std::is_void_v<R>, bool, R>> result;
  try {
    if constexpr (std::is_void_v<R>) {
      check();
      result = true;
    } else {
      result.emplace(check());
    }
  } catch (const Error& e) {
    err = e.what();
    kind = static_cast<std::int64_t>(e.kind());
  }
  const auto failed = comm.allgather(kind >= 0 ? 1 : 0);
  const auto first = std::find(failed.begin(), failed.end(), 1);
  if (first == failed.end()) {
    if constexpr (std::is_void_v<R>) return;
    else return std::move(*result);
  }
  const int root = static_cast<int>(first - failed.begin());
  const bool some = std::count(failed.begin(), failed.end(), 1) < comm.size();
  throw_shared(comm, kind, std::move(err), root, some ? fmt::format(" (on rank {})", root) : std::string());
  throw Error(ErrorKind::internal, fmt::format("rank {} failed a check but shared no error", root), __FILE__,
              __LINE__);  // not reached: rank `root` failed, so throw_shared threw
}

// Items split over the ranks of comm, owners[i] the rank that does item i: each rank runs work(i)
// for its items (side by side with the others), then every item is shared from its owner in item
// order with share(i, owner), a collective call on every rank. idle() runs between the two, when
// this rank may wait for slower owners (a watchdog's suspend). An Error on an owner stops every
// rank with an Error of the same kind giving its message (and, with several ranks, "(<what> on data
// rank r)"), so the exit code does not depend on the rank count.
template <class Work, class Share, class Idle>
void owned_work(dist::Comm& comm, const std::vector<int>& owners, const char* what, Work&& work, Share&& share,
                Idle&& idle) {
  std::vector<std::string> errors(owners.size());
  std::vector<std::int64_t> kinds(owners.size(), -1);  // ErrorKind of a failed item
  for (std::size_t i = 0; i < owners.size(); ++i) {
    if (owners[i] != comm.rank()) continue;
    try {
      work(i);
    } catch (const Error& e) {
      errors[i] = e.what();
      kinds[i] = static_cast<std::int64_t>(e.kind());
    }
  }
  if (comm.size() > 1) idle();
  for (std::size_t i = 0; i < owners.size(); ++i) {
    throw_shared(comm, kinds[i], errors[i], owners[i],
                 comm.size() > 1 ? fmt::format(" ({} on data rank {})", what, owners[i]) : std::string());
    share(i, owners[i]);
  }
}

// The `v` of rank `root` (0 by default) on every rank, its size first.
template <class T>
void broadcast_vector(std::vector<T>& v, dist::Comm& comm, int root = 0) {
  std::int64_t n = static_cast<std::int64_t>(v.size());
  comm.broadcast(std::as_writable_bytes(std::span(&n, 1)), root);
  v.resize(static_cast<std::size_t>(n));
  comm.broadcast(std::as_writable_bytes(std::span(v)), root);
}

// Every rank's `mine` concatenated in rank order, on every rank.
inline std::vector<double> allgather_vector(const std::vector<double>& mine, dist::Comm& comm) {
  const auto counts = comm.allgather(static_cast<std::int64_t>(mine.size() * sizeof(double)));
  std::int64_t bytes = 0;
  for (const auto c : counts) bytes += c;
  std::vector<double> all(static_cast<std::size_t>(bytes) / sizeof(double));
  comm.allgatherv(std::as_bytes(std::span(mine)), std::as_writable_bytes(std::span(all)), counts);
  return all;
}

}  // namespace scalpel::app::detail
