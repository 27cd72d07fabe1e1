// Work that rank 0 alone does (reading and tokenizing an input file), shared with the other ranks.
// An input error on rank 0 becomes the same error on every rank, so no rank waits for data that
// never comes, and the job ends with the message naming the file.
#pragma once
#include <span>
#include <string>
#include <vector>

#include "scalpel/core/error.hpp"
#include "scalpel/dist/comm.hpp"

namespace scalpel::app::detail {

// Runs `work` on rank 0; an input Error it throws is rethrown on every rank.
template <class F>
void on_root(dist::Comm& comm, F&& work) {
  std::string err;
  if (comm.is_root()) {
    try {
      work();
    } catch (const Error& e) {
      err = e.what();
    }
  }
  std::int64_t failed = err.empty() ? 0 : 1;
  comm.broadcast(std::as_writable_bytes(std::span(&failed, 1)), 0);
  if (failed) {
    comm.broadcast_string(err, 0);
    SCALPEL_INPUT_ERROR("{}", err);
  }
}

// Rank 0's `v` on every rank.
template <class T>
void broadcast_vector(std::vector<T>& v, dist::Comm& comm) {
  std::int64_t n = static_cast<std::int64_t>(v.size());
  comm.broadcast(std::as_writable_bytes(std::span(&n, 1)), 0);
  v.resize(static_cast<std::size_t>(n));
  comm.broadcast(std::as_writable_bytes(std::span(v)), 0);
}

}  // namespace scalpel::app::detail
