// The low-precision forward on top of the fp32 ops: an op called with f16/bf16 tensors runs its
// fp32 code on widened stand-ins, and its outputs are rounded back once (the precision model of
// backend.hpp's [lp] ops). Both backends use it for the ops where fp32 compute is the model
// (norms, activations, RoPE, embeddings); the GEMMs a GPU runs on tensor cores are native.
// Private to src/backend.
#pragma once
#include <deque>
#include <initializer_list>
#include <utility>
#include <vector>

#include "scalpel/backend/backend.hpp"
#include "scalpel/core/error.hpp"

namespace scalpel::lowp {

// True when any of the (defined) tensors is f16 or bf16.
inline bool any(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t && t->defined() && low_precision(t->dtype())) return true;
  return false;
}

// The fp32 stand-ins of one call. in() widens an input (the tensor itself when fp32); out() gives
// an fp32 tensor for an output (widened from it when the op reads it too) that commit() rounds
// back into the original.
class F32Scope {
 public:
  explicit F32Scope(Backend& be) : be_(be) {}

  const Tensor& in(const Tensor& t) {
    if (!low_precision(t.dtype())) return t;
    return widened(t);
  }
  const Tensor* in(const Tensor* t) { return t ? &in(*t) : nullptr; }
  Tensor& out(Tensor& t, bool read) {
    if (!low_precision(t.dtype())) return t;
    Tensor& f = read ? widened(t) : keep_.emplace_back(be_.empty(t.shape(), DType::f32));
    outs_.push_back({&t, &f});
    return f;
  }
  void commit() {
    for (auto& [dst, f32] : outs_) be_.convert(*f32, *dst);
    outs_.clear();
  }

 private:
  Tensor& widened(const Tensor& t) {
    Tensor& f = keep_.emplace_back(be_.empty(t.shape(), DType::f32));
    be_.convert(t, f);
    return f;
  }

  Backend& be_;
  std::deque<Tensor> keep_;  // stable addresses for the references handed out
  std::vector<std::pair<Tensor*, Tensor*>> outs_;
};

// The dtype checks of a [lp] op: every low-precision tensor of the call has the same dtype.
inline void check_one_dtype(std::initializer_list<const Tensor*> ts, const char* op) {
  DType seen = DType::f32;
  for (const Tensor* t : ts) {
    if (!t || !t->defined() || !low_precision(t->dtype())) continue;
    SCALPEL_CHECK(seen == DType::f32 || seen == t->dtype(), "{}: mixes {} and {} tensors", op, dtype_name(seen),
                  dtype_name(t->dtype()));
    seen = t->dtype();
  }
}

}  // namespace scalpel::lowp
