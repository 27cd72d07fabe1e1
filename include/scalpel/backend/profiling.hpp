// A Backend that forwards to another and accounts wall time and FLOPs per op, for benchmarks and
// `--profile` runs. It synchronises nothing itself: on an asynchronous backend the times are of
// the enqueue unless the inner backend blocks.
#pragma once
#include <chrono>
#include <map>
#include <tuple>
#include <memory>
#include <string>

#include "scalpel/backend/backend.hpp"

namespace scalpel {

struct OpStats {
  std::int64_t calls = 0;
  double seconds = 0, flops = 0;
};

class ProfilingBackend final : public Backend {
  template <class F>
  auto timed(const char* op, double flops, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    auto done = [&] {
      auto& s = stats_[op];
      ++s.calls;
      s.flops += flops;
      s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    if constexpr (std::is_void_v<decltype(f())>) {
      f();
      done();
    } else {
      auto r = f();
      done();
      return r;
    }
  }

 public:
 public:
  explicit ProfilingBackend(Backend& inner) : in_(inner) {}
  const std::map<std::string, OpStats>& stats() const { return stats_; }
  void reset() { stats_.clear(); }
  // Every (M, N, K) a gemm/linear ran with, and how often: the benchmark replays them alone.
  const std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, std::int64_t>& gemm_shapes() const {
    return shapes_;
  }

  std::string name() const override { return in_.name() + "+profile"; }
  Device device() const override { return in_.device(); }
  void set_threads(int t) override { in_.set_threads(t); }
  Tensor empty(const Shape& s, DType d) override { return in_.empty(s, d); }
  Tensor zeros(const Shape& s, DType d) override { return in_.zeros(s, d); }
  Tensor upload(const Tensor& h) override { return timed("upload", 0, [&] { return in_.upload(h); }); }
  Tensor download(const Tensor& t) override { return in_.download(t); }
  void copy(const Tensor& s, Tensor& d) override { timed("copy", 0, [&] { in_.copy(s, d); }); }
  void gemm(Trans ta, Trans tb, float alpha, const Tensor& a, const Tensor& b, float beta, Tensor& c) override {
    const auto k = ta == Trans::no ? a.size(1) : a.size(0);
    ++shapes_[{c.size(0), c.size(1), k}];
    timed("gemm", 2.0 * c.size(0) * c.size(1) * k, [&] { in_.gemm(ta, tb, alpha, a, b, beta, c); });
  }
  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    ++shapes_[{x.size(0), w.size(0), x.size(1)}];
    timed("linear", 2.0 * x.size(0) * w.size(0) * x.size(1), [&] { in_.linear(x, w, bias, y); });
  }
  void syrk(float alpha, const Tensor& x, float beta, Tensor& h) override {
    timed("syrk", 1.0 * x.size(0) * x.size(1) * (x.size(1) + 1), [&] { in_.syrk(alpha, x, beta, h); });
  }
  void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& o) override {
    timed("norm", 0, [&] { in_.layer_norm(x, w, b, eps, o); });
  }
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& o) override {
    timed("norm", 0, [&] { in_.rms_norm(x, w, eps, o); });
  }
  void add(Tensor& y, const Tensor& x) override { timed("elementwise", 0, [&] { in_.add(y, x); }); }
  void scale(Tensor& y, float a) override { timed("elementwise", 0, [&] { in_.scale(y, a); }); }
  void relu(Tensor& y) override { timed("elementwise", 0, [&] { in_.relu(y); }); }
  void gelu(Tensor& y) override { timed("elementwise", 0, [&] { in_.gelu(y); }); }
  void silu_mul(const Tensor& g, const Tensor& u, Tensor& o) override {
    timed("elementwise", 0, [&] { in_.silu_mul(g, u, o); });
  }
  void rope(Tensor& x, std::int64_t T, std::int64_t H, std::int64_t hd, const Tensor& c, const Tensor& s) override {
    timed("rope", 0, [&] { in_.rope(x, T, H, hd, c, s); });
  }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor& o,
                 Tensor* p) override {
    // Causal q·kᵀ and p·v over the lower triangle (diagonal included): the useful FLOPs.
    timed("attention", 2.0 * s.batch * s.heads * s.seqlen * (s.seqlen + 1) * s.head_dim,
          [&] { in_.attention(q, k, v, s, o, p); });
  }
  void embedding(std::span<const std::int32_t> ids, const Tensor& t, Tensor& o) override {
    timed("embedding", 0, [&] { in_.embedding(ids, t, o); });
  }
  void nll(const Tensor& l, std::span<const std::int32_t> t, std::span<double> o) override {
    timed("nll", 0, [&] { in_.nll(l, t, o); });
  }

 private:
  Backend& in_;
  std::map<std::string, OpStats> stats_;
  std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, std::int64_t> shapes_;
};

}  // namespace scalpel
