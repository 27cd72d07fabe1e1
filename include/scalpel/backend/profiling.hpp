// A Backend that forwards to another and accounts wall time and FLOPs per op, for benchmarks and
// `--profile` runs. On an asynchronous backend (cuda) it waits for each op to finish
// (synchronize()) so that the times are of the work, not of the enqueue.
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
      in_.synchronize();
      done();
    } else {
      auto r = f();
      in_.synchronize();
      done();
      return r;
    }
  }

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
  Tensor upload_exact(const Tensor& h) override { return timed("upload", 0, [&] { return in_.upload_exact(h); }); }
  void copy(const Tensor& s, Tensor& d) override { timed("copy", 0, [&] { in_.copy(s, d); }); }
  void convert(const Tensor& s, Tensor& d) override { timed("convert", 0, [&] { in_.convert(s, d); }); }
  void synchronize() override { in_.synchronize(); }
  std::shared_ptr<Uploader> make_uploader() override { return in_.make_uploader(); }
  std::int64_t memory_bytes() const override { return in_.memory_bytes(); }
  void accumulate_f64(const Tensor& a, Tensor& acc) override {
    timed("sum_f64", 0, [&] { in_.accumulate_f64(a, acc); });
  }
  void f64_to_f32(const Tensor& acc, double scale, Tensor& out) override {
    timed("sum_f64", 0, [&] { in_.f64_to_f32(acc, scale, out); });
  }
  void accumulate_upper_f64(const Tensor& a, Tensor& acc) override {
    timed("sum_f64", 0, [&] { in_.accumulate_upper_f64(a, acc); });
  }
  void upper_f64_to_symmetric(const Tensor& acc, double scale, Tensor& out) override {
    timed("sum_f64", 0, [&] { in_.upper_f64_to_symmetric(acc, scale, out); });
  }
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
  void nll(const Tensor& l, std::span<const std::int32_t> t, std::span<double> o,
           std::span<std::uint8_t> a = {}) override {
    timed("nll", 0, [&] { in_.nll(l, t, o, a); });
  }

  // Pruning ops. FLOPs: potrf n³/3, potri 2n³/3, potrf + trtri 2n³/3; the OBS sweep Σ_i 2(width-1-i) per row; the lazy
  // update a GEMM; selections count no FLOPs (their time is what matters).
  bool cholesky(Tensor& a, bool upper) override {
    const double n = static_cast<double>(a.size(0));
    return timed("cholesky", n * n * n / 3, [&] { return in_.cholesky(a, upper); });
  }
  void cholesky_inverse(Tensor& f, bool upper) override {
    const double n = static_cast<double>(f.size(0));
    timed("cholesky_inverse", 2 * n * n * n / 3, [&] { in_.cholesky_inverse(f, upper); });
  }
  void gemm_block(Trans ta, Trans tb, float alpha, const Tensor& a, const Block& ba, const Tensor& b, const Block& bb,
                  float beta, Tensor& c, const Block& bc) override {
    const double k = static_cast<double>(ta == Trans::no ? ba.cols : ba.rows);
    timed("gemm_block", 2.0 * static_cast<double>(bc.rows) * static_cast<double>(bc.cols) * k,
          [&] { in_.gemm_block(ta, tb, alpha, a, ba, b, bb, beta, c, bc); });
  }
  void copy_block(const Tensor& src, const Block& bs, Tensor& dst, std::int64_t r0, std::int64_t c0) override {
    timed("copy_block", 0, [&] { in_.copy_block(src, bs, dst, r0, c0); });
  }
  void invert_lower(Tensor& a) override {
    const double n = static_cast<double>(a.size(0));
    timed("invert_lower", n * n * n / 3, [&] { in_.invert_lower(a); });
  }
  void flip(Tensor& a, bool keep_upper) override { timed("flip", 0, [&] { in_.flip(a, keep_upper); }); }
  bool inverse_cholesky_upper(Tensor& a) override {
    const double n = static_cast<double>(a.size(0));
    return timed("inverse_cholesky_upper", 2 * n * n * n / 3, [&] { return in_.inverse_cholesky_upper(a); });
  }
  void col_sq_norms(const Tensor& x, float alpha, float beta, Tensor& out) override {
    timed("col_sq_norms", 2.0 * x.size(0) * x.size(1), [&] { in_.col_sq_norms(x, alpha, beta, out); });
  }
  HessianPrep hessian_prepare(Tensor& h, Tensor* w, float percdamp) override {
    return timed("hessian_prepare", 0, [&] { return in_.hessian_prepare(h, w, percdamp); });
  }
  void zero_dead_columns(const Tensor& h, Tensor& w) override {
    timed("zero_dead_columns", 0, [&] { in_.zero_dead_columns(h, w); });
  }
  bool all_finite(const Tensor& t) override { return timed("all_finite", 0, [&] { return in_.all_finite(t); }); }
  void prune_scores(const Tensor& w, const Tensor* col, Tensor& s) override {
    timed("prune_scores", 1.0 * w.numel() * (col ? 2 : 1), [&] { in_.prune_scores(w, col, s); });
  }
  SelectThreshold kth_threshold(const Tensor& s, std::int64_t k) override {
    return timed("select", 0, [&] { return in_.kth_threshold(s, k); });
  }
  void mask_threshold(const Tensor& s, const SelectThreshold& t, Tensor& m, std::int64_t col0) override {
    timed("select", 0, [&] { in_.mask_threshold(s, t, m, col0); });
  }
  void mask_rows_smallest(const Tensor& s, std::int64_t k, Tensor& m) override {
    timed("select", 0, [&] { in_.mask_rows_smallest(s, k, m); });
  }
  void mask_nm(const Tensor& s, int n, int m, Tensor& mask) override {
    timed("select", 0, [&] { in_.mask_nm(s, n, m, mask); });
  }
  void apply_mask(Tensor& w, const Tensor& m) override { timed("apply_mask", 0, [&] { in_.apply_mask(w, m); }); }
  void obs_scores(const Tensor& w, const Tensor& hinv, std::int64_t col0, Tensor& s, const Tensor* hdiag) override {
    timed("obs_scores", 3.0 * s.numel(), [&] { in_.obs_scores(w, hinv, col0, s, hdiag); });
  }
  void diagonal(const Tensor& a, Tensor& out) override { timed("copy", 0, [&] { in_.diagonal(a, out); }); }
  void obs_sweep_block(Tensor& w, const Tensor& hinv, std::int64_t col0, std::int64_t width, int pn, int pm,
                       Tensor& mask, Tensor& err, Tensor& losses) override {
    timed("obs_sweep", 1.0 * w.size(0) * width * (width - 1),
          [&] { in_.obs_sweep_block(w, hinv, col0, width, pn, pm, mask, err, losses); });
  }
  void obs_lazy_update(Tensor& w, const Tensor& err, const Tensor& hinv, std::int64_t col0, std::int64_t row0,
                       std::int64_t total_rows) override {
    const auto rows = w.size(0), width = err.size(1), rest = w.size(1) - col0 - width;
    timed("obs_lazy", 2.0 * rows * width * rest, [&] { in_.obs_lazy_update(w, err, hinv, col0, row0, total_rows); });
  }
  void rowwise_dot(const Tensor& a, const Tensor& b, std::span<double> out) override {
    timed("rowwise_dot", 2.0 * a.numel(), [&] { in_.rowwise_dot(a, b, out); });
  }

 private:
  Backend& in_;
  std::map<std::string, OpStats> stats_;
  std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, std::int64_t> shapes_;
};

}  // namespace scalpel
