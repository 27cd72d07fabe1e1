// Distributed selection of the k smallest scores over row slices held by the ranks of a group:
// what SparseGPT's per-block unstructured mask and magnitude's whole-matrix mask need when a
// weight's rows are split over ranks. Gives every rank the same rule as Backend::kth_threshold
// would on the whole matrix (prune < value, then ties in global row-major order, i.e. rank order
// then local order), so the masks do not depend on the rank count.
#pragma once
#include "scalpel/dist/comm.hpp"
#include "scalpel/prune/pruner.hpp"

namespace scalpel::prune {

// Exact radix selection on the scores' order-preserving 32-bit keys: three rounds of a histogram
// of 12, 10 and 10 bits summed over the group (about 40 KB all-reduced per round), then each
// rank's share of the ties from the exclusive prefix of the ranks' tie counts. k counts every
// rank's scores. A group of one uses the backend's kth_threshold.
SelectThreshold select_over(dist::Comm& group, Backend& be, const Tensor& scores, std::int64_t k);

// A BlockSelect calling select_over on `group` (which must outlive it).
BlockSelect group_select(dist::Comm& group);

}  // namespace scalpel::prune
