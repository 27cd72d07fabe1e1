// Magnitude, Wanda and SparseGPT on a small layer against float64 implementations written here
// from the reference code (locuslab/wanda lib/prune.py, IST-DASLab/sparsegpt sparsegpt.py), with
// the exact-count rule documented in pruner.hpp; plus statistics, exact structure, damping retries,
// the reconstruction error and input errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "../common/backends.hpp"
#include "../common/reference.hpp"
#include "scalpel/core/error.hpp"
#include "scalpel/prune/pruner.hpp"

namespace scalpel::test {
namespace {

using namespace scalpel::prune;
using Mask = std::vector<std::uint8_t>;

constexpr std::int64_t R = 64, C = 300;  // weight rows x input columns
constexpr std::int64_t kDead = 17;       // an input column that is always zero

// Calibration batches: (tokens, sequences); 480 tokens of 12 "sequences".
const std::vector<std::pair<std::int64_t, std::int64_t>> kBatches = {{160, 4}, {128, 2}, {192, 6}};

struct Layer {
  Vec w, x;  // x: [480, C], all batches stacked
  std::int64_t tokens = 0;
};

Layer make_layer(std::uint64_t seed) {
  Layer l;
  for (const auto& b : kBatches) l.tokens += b.first;
  l.w = random_vec(R * C, seed);
  l.x = random_vec(l.tokens * C, seed + 1);
  // Column scales spread over ~e^±1.5, as activations have outlier features: Wanda's and
  // SparseGPT's choices then differ from magnitude's.
  const auto g = random_vec(C, seed + 2);
  for (std::int64_t t = 0; t < l.tokens; ++t)
    for (std::int64_t j = 0; j < C; ++j) {
      double& v = l.x[t * C + j];
      v = j == kDead ? 0.0 : static_cast<double>(static_cast<float>(v * std::exp(0.75 * g[j])));
    }
  return l;
}

// The references' running statistics in float64: H (SparseGPT add_batch) and scaler_row (Wanda).
void ref_stats(const Layer& l, Vec& h, Vec& s) {
  h.assign(static_cast<std::size_t>(C * C), 0.0);
  s.assign(static_cast<std::size_t>(C), 0.0);
  double n = 0;
  std::int64_t t0 = 0;
  for (const auto& [tokens, seqs] : kBatches) {
    for (auto& v : h) v *= n / (n + seqs);
    for (auto& v : s) v *= n / (n + seqs);
    n += seqs;
    for (std::int64_t t = t0; t < t0 + tokens; ++t)
      for (std::int64_t i = 0; i < C; ++i) {
        const double xi = l.x[t * C + i];
        s[i] += xi * xi / n;
        for (std::int64_t j = 0; j < C; ++j) h[i * C + j] += 2.0 / n * xi * l.x[t * C + j];
      }
    t0 += tokens;
  }
}

InputStats feed(Backend& be, const Layer& l) {
  InputStats st(be, C, {true, true}, "test.linear input");
  const Tensor x = be.upload(to_tensor(l.x, {l.tokens, C}));
  std::int64_t t0 = 0;
  for (const auto& [tokens, seqs] : kBatches) {
    st.add_batch(x.slice_rows(t0, t0 + tokens), seqs);
    t0 += tokens;
  }
  return st;
}

// Selections in float64 with explicit (score, index) order; `gap` records the smallest relative
// distance between the last pruned and the first kept score of any decision, which bounds how
// far fp32 rounding may move scores before a choice could flip.
struct Selector {
  double gap = 1e300;
  void note(double lo, double hi) {
    if (hi > 0) gap = std::min(gap, (hi - lo) / hi);
  }
  // Prunes the k smallest of s[idx...] (ties to the lower index), marking mask[idx] = 0.
  void prune_smallest(const std::vector<double>& s, std::vector<std::int64_t> idx, std::int64_t k, Mask& mask,
                      const std::vector<std::int64_t>* mask_pos = nullptr) {
    std::vector<std::int64_t> order(idx.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](auto a, auto b) { return s[idx[a]] < s[idx[b]] || (s[idx[a]] == s[idx[b]] && a < b); });
    for (std::int64_t i = 0; i < k; ++i) mask[mask_pos ? (*mask_pos)[order[i]] : idx[order[i]]] = 0;
    if (k > 0 && k < static_cast<std::int64_t>(idx.size())) note(s[idx[order[k - 1]]], s[idx[order[k]]]);
  }
};

Mask ref_mask(const Vec& scores, const Pattern& p, bool per_row, Selector& sel) {
  Mask mask(scores.size(), 1);
  if (p.is_nm()) {
    for (std::int64_t r = 0; r < R; ++r)
      for (std::int64_t g = 0; g < C; g += p.m) {
        std::vector<std::int64_t> idx;
        for (std::int64_t j = g; j < std::min(C, g + p.m); ++j) idx.push_back(r * C + j);
        sel.prune_smallest(scores, idx, std::min<std::int64_t>(p.n, static_cast<std::int64_t>(idx.size())), mask);
      }
  } else if (per_row) {
    for (std::int64_t r = 0; r < R; ++r) {
      std::vector<std::int64_t> idx(C);
      std::iota(idx.begin(), idx.end(), r * C);
      sel.prune_smallest(scores, idx, static_cast<std::int64_t>(C * p.sparsity), mask);
    }
  } else {
    std::vector<std::int64_t> idx(static_cast<std::size_t>(R * C));
    std::iota(idx.begin(), idx.end(), 0);
    sel.prune_smallest(scores, idx, static_cast<std::int64_t>(R * C * p.sparsity), mask);
  }
  return mask;
}

// Cholesky A = LLᵀ in float64 (lower, row-major).
Vec chol_lower(const Vec& a, std::int64_t n) {
  Vec l(a.size(), 0.0);
  for (std::int64_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (std::int64_t k = 0; k < j; ++k) d -= l[j * n + k] * l[j * n + k];
    EXPECT_GT(d, 0.0) << "reference Cholesky: not positive definite";
    l[j * n + j] = std::sqrt(d);
    for (std::int64_t i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (std::int64_t k = 0; k < j; ++k) s -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = s / l[j * n + j];
    }
  }
  return l;
}

// A⁻¹ from its lower factor: L⁻¹ by forward substitution, then L⁻ᵀ L⁻¹ (torch.cholesky_inverse).
Vec chol_inverse(const Vec& l, std::int64_t n) {
  Vec li(l.size(), 0.0);
  for (std::int64_t c = 0; c < n; ++c)
    for (std::int64_t i = c; i < n; ++i) {
      double s = i == c ? 1.0 : 0.0;
      for (std::int64_t k = c; k < i; ++k) s -= l[i * n + k] * li[k * n + c];
      li[i * n + c] = s / l[i * n + i];
    }
  Vec inv(l.size(), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::int64_t k = std::max(i, j); k < n; ++k) s += li[k * n + i] * li[k * n + j];
      inv[i * n + j] = s;
    }
  return inv;
}

struct RefSparseGpt {
  Vec w, losses;
  Mask mask;
  double damp = 0, gap = 1e300;
};

// fasterprune in float64, column by column as the reference writes it, with the exact-count
// block selection and the N:M block rounding of sparsegpt.cpp. isc: unstructured scores
// w²/U_jj² + w²·H_jj (the sensitivity paper's ISC saliency, H damped).
RefSparseGpt ref_sparsegpt(Vec w, Vec h, const Pattern& p, std::int64_t blocksize, bool isc = false) {
  const std::int64_t n = C;
  for (std::int64_t j = 0; j < n; ++j)
    if (h[j * n + j] == 0) {
      h[j * n + j] = 1;
      for (std::int64_t r = 0; r < R; ++r) w[r * n + j] = 0;
    }
  double mean = 0;
  for (std::int64_t j = 0; j < n; ++j) mean += h[j * n + j];
  RefSparseGpt out;
  out.damp = 0.01 * mean / n;
  for (std::int64_t j = 0; j < n; ++j) h[j * n + j] += out.damp;
  Vec hdiag(static_cast<std::size_t>(n));
  for (std::int64_t j = 0; j < n; ++j) hdiag[j] = h[j * n + j];
  const Vec hinv_full = chol_inverse(chol_lower(h, n), n);
  const Vec lo = chol_lower(hinv_full, n);
  Vec u(lo.size());  // chol(upper=True) = Lᵀ of the lower factor
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) u[i * n + j] = lo[j * n + i];

  out.mask.assign(static_cast<std::size_t>(R * n), 1);
  out.losses.assign(R, 0.0);
  Selector sel;
  const std::int64_t bs = p.is_nm() ? std::max<std::int64_t>(p.m, blocksize - blocksize % p.m) : blocksize;
  for (std::int64_t i1 = 0; i1 < n; i1 += bs) {
    const std::int64_t i2 = std::min(i1 + bs, n), count = i2 - i1;
    Vec err(static_cast<std::size_t>(R * count), 0.0);
    if (!p.is_nm()) {
      std::vector<double> s(static_cast<std::size_t>(R * count));
      std::vector<std::int64_t> idx(s.size()), pos(s.size());
      for (std::int64_t r = 0; r < R; ++r)
        for (std::int64_t j = 0; j < count; ++j) {
          const double d = u[(i1 + j) * n + i1 + j];
          const double w2 = w[r * n + i1 + j] * w[r * n + i1 + j];
          s[r * count + j] = w2 / (d * d) + (isc ? w2 * hdiag[i1 + j] : 0.0);
          idx[r * count + j] = r * count + j;
          pos[r * count + j] = r * n + i1 + j;
        }
      sel.prune_smallest(s, idx, static_cast<std::int64_t>(static_cast<double>(R * count) * p.sparsity), out.mask, &pos);
    }
    for (std::int64_t i = 0; i < count; ++i) {
      const std::int64_t c = i1 + i;
      const double d = u[c * n + c];
      if (p.is_nm() && i % p.m == 0)
        for (std::int64_t r = 0; r < R; ++r) {
          std::vector<double> s(static_cast<std::size_t>(R * n), 0.0);
          std::vector<std::int64_t> idx;
          for (std::int64_t j = c; j < std::min(c + p.m, i2); ++j) {
            s[r * n + j] = w[r * n + j] * w[r * n + j] / (u[j * n + j] * u[j * n + j]);
            idx.push_back(r * n + j);
          }
          sel.prune_smallest(s, idx, std::min<std::int64_t>(p.n, static_cast<std::int64_t>(idx.size())), out.mask);
        }
      for (std::int64_t r = 0; r < R; ++r) {
        const double wv = w[r * n + c], q = out.mask[r * n + c] ? wv : 0.0;
        const double e = (wv - q) / d;
        out.losses[r] += (wv - q) * (wv - q) / (d * d) / 2;
        for (std::int64_t j = c; j < i2; ++j) w[r * n + j] -= e * u[c * n + j];
        w[r * n + c] = q;
        err[r * count + i] = e;
      }
    }
    for (std::int64_t r = 0; r < R; ++r)
      for (std::int64_t j = i2; j < n; ++j) {
        double s = 0;
        for (std::int64_t i = 0; i < count; ++i) s += err[r * count + i] * u[(i1 + i) * n + j];
        w[r * n + j] -= s;
      }
  }
  out.w = std::move(w);
  out.gap = sel.gap;
  return out;
}

Mask host_mask(Backend& be, const Tensor& m) {
  const Tensor h = be.download(m);
  return Mask(h.data<std::uint8_t>(), h.data<std::uint8_t>() + h.numel());
}

std::int64_t mismatches(const Mask& a, const Mask& b) {
  std::int64_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

// What every pruned matrix must satisfy, whatever the method: the exact count, the exact N:M
// structure of the mask, zeros where the mask prunes, and the weight's own structure.
void check_structure(Backend& be, const PruneResult& r, const Pattern& p, Method m, std::int64_t blocksize) {
  const Tensor mask = be.download(r.mask), w = be.download(r.weight);
  const auto want = expected_pruned(R, C, p, m, blocksize);
  EXPECT_EQ(r.pruned, want) << p.str();
  const auto rep = check_mask(mask, p);
  EXPECT_EQ(rep.zeros, want);
  EXPECT_TRUE(rep.nm_ok()) << rep.describe();
  EXPECT_EQ(count_unmasked_nonzeros(w, mask), 0);
  EXPECT_TRUE(check_weight(w, p).nm_ok());
  EXPECT_NEAR(r.sparsity, static_cast<double>(want) / (R * C), 1e-12);
}

const std::vector<Pattern> kPatterns = {Pattern::unstructured(0.0), Pattern::unstructured(0.5),
                                        Pattern::unstructured(0.7), Pattern::unstructured(0.9),
                                        Pattern::nm(2, 4),          Pattern::nm(4, 8),
                                        Pattern::nm(1, 3)};

// One test body per backend (cpu, and cuda when built; skipped without a GPU).
class PruneMethods : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    SCALPEL_BACKEND_OR_SKIP(be, GetParam(), 2);
    layer = make_layer(100);
    w = be->upload(to_tensor(layer.w, {R, C}));
  }
  std::unique_ptr<Backend> be;
  Layer layer;
  Tensor w;
};

TEST_P(PruneMethods, StatisticsMatchTheReferenceAccumulation) {
  InputStats empty(*be, C, {true, true}, "unfed");
  EXPECT_EQ(rel_err(to_vec(be->download(empty.hessian())), Vec(C * C, 0.0)), 0.0);  // zeros before any batch
  EXPECT_EQ(rel_err(to_vec(be->download(empty.col_norms())), Vec(C, 0.0)), 0.0);
  auto st = feed(*be, layer);
  Vec h, s;
  ref_stats(layer, h, s);
  EXPECT_EQ(st.nsamples(), 12);
  EXPECT_EQ(st.tokens(), layer.tokens);
  // fp32 syrk over <= 192 tokens per batch plus three rescalings: ~1e-6 relative.
  EXPECT_REL_NEAR(to_vec(be->download(st.hessian())), h, Tol::f32);
  EXPECT_REL_NEAR(to_vec(be->download(st.col_norms())), s, Tol::f32);
  EXPECT_EQ(be->download(st.hessian()).f32()[kDead * C + kDead], 0.0f);  // the dead input stays exactly dead
}

TEST_P(PruneMethods, MagnitudeMatchesFloat64) {
  Vec score(layer.w.size());
  for (std::size_t i = 0; i < score.size(); ++i) score[i] = std::fabs(layer.w[i]);
  for (const auto& p : kPatterns) {
    PruneOptions o;
    o.method = Method::magnitude;
    o.pattern = p;
    o.name = "layer 0 test.magnitude";
    const auto r = prune_linear(*be, w, nullptr, o);
    Selector sel;
    const auto want = ref_mask(score, p, false, sel);
    // |w| is exact in fp32, so the masks are identical, ties included.
    EXPECT_EQ(mismatches(host_mask(*be, r.mask), want), 0) << p.str();
    Vec wm = layer.w;
    for (std::size_t i = 0; i < wm.size(); ++i) wm[i] *= want[i];
    EXPECT_EQ(rel_err(to_vec(be->download(r.weight)), wm), 0.0) << p.str();
    check_structure(*be, r, p, Method::magnitude, 128);
    EXPECT_TRUE(std::isnan(r.error));  // no statistics, no error
  }
}

// Past 2^20 entries the pruned count is summed by threads: on a 1031 x 1030 matrix it must equal
// the serial count of the mask and magnitude's int(0.5 * numel), and the host copy of the mask
// must be the device's.
TEST_P(PruneMethods, LargeMatricesCountTheirZerosExactly) {
  const std::int64_t rows = 1031, cols = 1030;
  const Tensor w = be->upload(to_tensor(random_vec(static_cast<std::size_t>(rows * cols), 11), {rows, cols}));
  PruneOptions o;
  o.method = Method::magnitude;
  o.pattern = Pattern::unstructured(0.5);
  const auto r = prune_linear(*be, w, nullptr, o);
  ASSERT_GT(r.total, std::int64_t{1} << 20);
  const Mask device = host_mask(*be, r.mask);
  ASSERT_EQ(r.host_mask.numel(), r.total);
  const Mask host(r.host_mask.data<std::uint8_t>(), r.host_mask.data<std::uint8_t>() + r.host_mask.numel());
  EXPECT_EQ(mismatches(host, device), 0);
  std::int64_t zeros = 0;
  for (const auto k : device) zeros += k == 0;
  EXPECT_EQ(r.pruned, zeros);
  EXPECT_EQ(r.pruned, expected_pruned(rows, cols, o.pattern, Method::magnitude, 128));
}

TEST_P(PruneMethods, WandaMatchesFloat64) {
  auto st = feed(*be, layer);
  Vec h, s;
  ref_stats(layer, h, s);
  Vec score(layer.w.size());
  for (std::int64_t i = 0; i < R * C; ++i) score[i] = std::fabs(layer.w[i]) * std::sqrt(s[i % C]);
  for (const auto& p : kPatterns) {
    PruneOptions o;
    o.method = Method::wanda;
    o.pattern = p;
    const auto r = prune_linear(*be, w, &st, o);
    Selector sel;
    const auto want = ref_mask(score, p, true, sel);
    // The fp32 scores differ from these by a few roundings (s_j stored in fp32 between batches,
    // sqrt, product): < 5e-7 relative. A gap 10x that keeps every choice the same.
    if (p.target() > 0) {
      ASSERT_GT(sel.gap, 5e-6) << p.str() << ": inputs not well separated, change the seed";
    }
    EXPECT_EQ(mismatches(host_mask(*be, r.mask), want), 0) << p.str();
    Vec wm = layer.w;
    for (std::size_t i = 0; i < wm.size(); ++i) wm[i] *= want[i];
    EXPECT_EQ(rel_err(to_vec(be->download(r.weight)), wm), 0.0) << p.str();
    check_structure(*be, r, p, Method::wanda, 128);
  }
}

TEST_P(PruneMethods, SparseGptMatchesFloat64) {
  auto st = feed(*be, layer);
  // The reference starts from the same (fp32) Hessian, so the comparison isolates factorisation
  // and sweep; the statistics have their own test above.
  const Vec h = to_vec(be->download(st.hessian()));
  for (const std::int64_t bs : {128, 32}) {
    for (const auto& p : kPatterns) {
      PruneOptions o;
      o.method = Method::sparsegpt;
      o.pattern = p;
      o.blocksize = bs;
      o.name = "layer 0 test.sparsegpt";
      const auto r = prune_linear(*be, w, &st, o);
      const auto ref = ref_sparsegpt(layer.w, h, p, bs);
      const std::string what = p.str() + " blocksize " + std::to_string(bs);
      // The fp32 sweep stays within ~2e-7 (Frobenius, relative) of this float64 one: H is well
      // conditioned (1% damping, 480 tokens for 300 inputs), so the factor carries a few x 1e-7
      // and the updates add little. Scores near a threshold (|w| near the median) move by a few
      // times that; a gap of 1e-5, 10x and more above it, keeps every choice the same.
      if (p.target() > 0) {
        ASSERT_GT(ref.gap, 1e-5) << what << ": inputs not well separated, change the seed";
      }
      EXPECT_EQ(mismatches(host_mask(*be, r.mask), ref.mask), 0) << what;
      // Weights and losses: 2e-6 is 10x the ~2e-7 measured, ~cond(H) x 2^-24.
      EXPECT_REL_NEAR(to_vec(be->download(r.weight)), ref.w, 2e-6);
      EXPECT_REL_NEAR(r.losses, ref.losses, 2e-6);
      EXPECT_NEAR(r.damping, ref.damp, 1e-6 * ref.damp) << what;
      EXPECT_EQ(r.damping_tries, 1);
      EXPECT_EQ(r.dead, 1);
      EXPECT_EQ(r.blocksize, p.is_nm() ? std::max<std::int64_t>(p.m, bs - bs % p.m) : bs);
      check_structure(*be, r, p, Method::sparsegpt, bs);
      // Dead input: the reference zeroes its weights.
      for (std::int64_t rr = 0; rr < R; ++rr) EXPECT_EQ(be->download(r.weight).f32()[rr * C + kDead], 0.0f);
    }
  }
}

TEST_P(PruneMethods, SparseGptIscSaliencyMatchesFloat64) {
  auto st = feed(*be, layer);
  const Vec h = to_vec(be->download(st.hessian()));
  for (const auto& p : {Pattern::unstructured(0.5), Pattern::unstructured(0.7)}) {
    PruneOptions o;
    o.method = Method::sparsegpt;
    o.pattern = p;
    o.isc = true;
    o.name = "layer 0 test.isc";
    const auto r = prune_linear(*be, w, &st, o);
    const auto ref = ref_sparsegpt(layer.w, h, p, 128, true);
    const auto obs = ref_sparsegpt(layer.w, h, p, 128, false);
    // Tolerances as SparseGptMatchesFloat64 (same factor and sweep; only the scores differ).
    ASSERT_GT(ref.gap, 1e-5) << p.str() << ": inputs not well separated, change the seed";
    EXPECT_EQ(mismatches(host_mask(*be, r.mask), ref.mask), 0) << p.str();
    EXPECT_GT(mismatches(ref.mask, obs.mask), 0) << p.str() << ": ISC chose the OBS mask, the test shows nothing";
    EXPECT_REL_NEAR(to_vec(be->download(r.weight)), ref.w, 2e-6);
    check_structure(*be, r, p, Method::sparsegpt, 128);
  }
  PruneOptions nm;
  nm.method = Method::sparsegpt;
  nm.pattern = Pattern::nm(2, 4);
  nm.isc = true;
  nm.name = "layer 0 test.isc";
  try {
    prune_linear(*be, w, &st, nm);
    ADD_FAILURE() << "ISC with 2:4 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 0 test.isc"), std::string::npos) << e.what();
  }
}

TEST_P(PruneMethods, SparseGptAtZeroSparsityOnlyZeroesDeadInputs) {
  auto st = feed(*be, layer);
  PruneOptions o;
  o.pattern = Pattern::unstructured(0.0);
  const auto r = prune_linear(*be, w, &st, o);
  EXPECT_EQ(r.pruned, 0);
  const auto got = to_vec(be->download(r.weight));
  for (std::int64_t i = 0; i < R * C; ++i) EXPECT_EQ(got[i], i % C == kDead ? 0.0 : layer.w[i]) << i;
  // The dead column never reaches the output: the error is exactly what fp32 leaves of zero.
  EXPECT_LT(r.error_rel, 1e-12);
}

// ‖(W - W')Xᵀ‖_F² from H against the product with X itself, in float64.
TEST_P(PruneMethods, ReconstructionErrorMatchesExplicitProduct) {
  auto st = feed(*be, layer);
  for (const auto method : {Method::magnitude, Method::wanda, Method::sparsegpt}) {
    PruneOptions o;
    o.method = method;
    o.pattern = Pattern::nm(2, 4);
    const auto r = prune_linear(*be, w, &st, o);
    const auto wp = to_vec(be->download(r.weight));
    double err = 0, dense = 0;
    std::vector<double> rows(R, 0.0);
    for (std::int64_t t = 0; t < layer.tokens; ++t)
      for (std::int64_t i = 0; i < R; ++i) {
        double a = 0, b = 0;
        for (std::int64_t j = 0; j < C; ++j) {
          a += (layer.w[i * C + j] - wp[i * C + j]) * layer.x[t * C + j];
          b += layer.w[i * C + j] * layer.x[t * C + j];
        }
        err += a * a;
        dense += b * b;
        rows[i] += a * a;
      }
    // H carries fp32 syrk rounding (~1e-6) and the traces sum positive terms: 1e-4 is ample.
    EXPECT_NEAR(r.error, err, 1e-4 * err) << method_name(method);
    EXPECT_NEAR(r.dense, dense, 1e-4 * dense) << method_name(method);
    EXPECT_NEAR(r.error_rel, err / dense, 1e-4 * err / dense);
    EXPECT_REL_NEAR(r.row_error, rows, 1e-4);
  }
}

// An indefinite H (no XᵀX gives one, so the factor is called directly): 1% damping fails, and
// x10 per retry reaches 10 x mean(diag H) before the eigenvalue -2 turns positive.
TEST_P(PruneMethods, IndefiniteHessianGetsMoreDampingWithoutNaN) {
  const std::int64_t d = 40, rows = 8;
  Vec h(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t j = 0; j < d; ++j) h[j * d + j] = 1.0;
  h[0 * d + 1] = h[1 * d + 0] = 3.0;  // eigenvalues -2 and 4 in the leading 2 x 2 block
  const Tensor ht = be->upload(to_tensor(h, {d, d}));
  Tensor wt = be->upload(to_tensor(random_vec(rows * d, 7), {rows, d}));
  const auto f = sparsegpt_factor(*be, ht, &wt, 0.01, 10, "layer 5 test.indefinite");
  EXPECT_EQ(f.tries, 4);
  EXPECT_NEAR(f.percdamp, 10.0, 1e-9);
  EXPECT_NEAR(f.damping, 10.0, 1e-5);  // mean(diag H) = 1
  EXPECT_TRUE(be->all_finite(f.hinv));
  Tensor mask = be->empty({rows, d}, DType::u8), losses = be->zeros({rows}, DType::f64);
  SweepOptions so;
  so.pattern = Pattern::unstructured(0.5);
  so.blocksize = 16;
  sparsegpt_sweep(*be, wt, f.hinv, so, mask, losses);
  EXPECT_TRUE(be->all_finite(wt));
  EXPECT_TRUE(be->all_finite(losses));
  // A Hessian with NaN is the caller's input, reported as such.
  Vec hn = h;
  hn[5] = std::nan("");
  try {
    sparsegpt_factor(*be, be->upload(to_tensor(hn, {d, d})), nullptr, 0.01, 10, "layer 5 test.nan");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input);
    EXPECT_NE(std::string(e.what()).find("layer 5 test.nan"), std::string::npos);
  }
}

TEST_P(PruneMethods, BadRequestsNameTheLinear) {
  auto st = feed(*be, layer);
  auto msg = [&](PruneOptions o, const InputStats* s, const Tensor& wt) -> std::string {
    o.name = "layer 2 mlp.up_proj";
    try {
      prune_linear(*be, wt, s, o);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::input);
      return e.what();
    }
    return "no error";
  };
  PruneOptions o;
  o.pattern = Pattern::unstructured(1.0);
  EXPECT_NE(msg(o, &st, w).find("layer 2 mlp.up_proj: sparsity 1 is outside [0, 1)"), std::string::npos);
  o.pattern = Pattern::nm(2, 4);
  EXPECT_NE(msg(o, nullptr, w).find("layer 2 mlp.up_proj: SparseGPT needs the Hessian"), std::string::npos);
  o.method = Method::wanda;
  InputStats only_h(*be, C, {true, false}, "h only");
  EXPECT_NE(msg(o, &only_h, w).find("Wanda needs the column norms"), std::string::npos);
  const Tensor narrow = be->upload(to_tensor(random_vec(R * 10, 3), {R, 10}));
  EXPECT_NE(msg(o, &st, narrow).find("are for 300 inputs, the weight has 10 columns"), std::string::npos);
  try {
    st.add_batch(narrow, 1);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("test.linear input: input batch [64, 10] does not have 300 columns"),
              std::string::npos);
  }
}

}  // namespace
INSTANTIATE_TEST_SUITE_P(All, PruneMethods, ::testing::ValuesIn(test_backends()));

}  // namespace scalpel::test
