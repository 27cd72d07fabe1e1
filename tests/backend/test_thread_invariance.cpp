// Determinism of the kernels that `determinism: strict` relies on: the same inputs give bitwise the
// same outputs at any thread count, and SparseGPT's row-wise ops (the sweep, and its lazy update,
// told where the slice starts) give a row the same bits whether it is computed with the whole
// matrix or inside a row slice. A distributed prune changes both (N ranks get cores/N threads each
// and prune a row slice each), so without these properties the pruned weights would depend on the
// rank count.
#include <gtest/gtest.h>

#include <cstring>

#include "../common/reference.hpp"
#include "scalpel/backend/backend.hpp"

namespace scalpel::test {
namespace {

// Sizes above OpenBLAS's threading thresholds, so 2 and 3 threads really split the work.
constexpr std::int64_t kTokens = 1536, kIn = 700, kOut = 600;

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), static_cast<std::size_t>(a.nbytes())) == 0;
}

class ThreadInvariance : public ::testing::TestWithParam<int> {
 protected:
  // Runs `body` on a 1-thread backend and on a GetParam()-thread backend; returns both results.
  template <class F>
  std::pair<Tensor, Tensor> both(F body) {
    auto one = make_cpu_backend(1);
    Tensor a = one->download(body(*one));
    auto many = make_cpu_backend(GetParam());
    Tensor b = many->download(body(*many));
    make_cpu_backend(2);  // leave the process's thread setting as the other tests expect
    return {a, b};
  }
  static Tensor host(const Vec& v, Shape s) { return to_tensor(v, std::move(s)); }
};

TEST_P(ThreadInvariance, LinearAndGemm) {
  const auto x = random_vec(kTokens * kIn, 1), w = random_vec(kOut * kIn, 2), b = random_vec(kOut, 3);
  auto [a, c] = both([&](Backend& be) {
    Tensor y = be.empty({kTokens, kOut});
    const Tensor bias = be.upload(host(b, {kOut}));
    be.linear(be.upload(host(x, {kTokens, kIn})), be.upload(host(w, {kOut, kIn})), &bias, y);
    return y;
  });
  EXPECT_TRUE(same_bits(a, c)) << "linear depends on the thread count";
}

// LLaMA-mini's down_proj: OpenBLAS's threaded sgemm blocks K = 688 differently at 1 and 2
// threads; the backend's tiled GEMM must not. A row computed in a slice of the tokens keeps its
// bits only where both calls leave it out of their tails (OpenBLAS's Haswell/Zen sgemm computes
// the last M mod 12 rows of a call otherwise): a padded single row does; a distributed run never
// relies on more, since its forward passes are made of the same whole batches at any rank count.
TEST_P(ThreadInvariance, LinearWithAwkwardInnerDimension) {
  const std::int64_t tokens = 256, in = 688, out = 256;
  const auto x = random_vec(tokens * in, 21), w = random_vec(out * in, 22);
  auto [a, c] = both([&](Backend& be) {
    Tensor y = be.empty({tokens, out});
    be.linear(be.upload(host(x, {tokens, in})), be.upload(host(w, {out, in})), nullptr, y);
    return y;
  });
  EXPECT_TRUE(same_bits(a, c)) << "linear (K = 688) depends on the thread count";
  auto be = make_cpu_backend(GetParam());
  const Tensor xs = be->upload(host(x, {tokens, in})), ws = be->upload(host(w, {out, in}));
  for (auto [r0, r1] : {std::pair<std::int64_t, std::int64_t>{37, 38}, {240, 241}}) {
    Tensor part = be->empty({r1 - r0, out});
    be->linear(xs.slice_rows(r0, r1), ws, nullptr, part);
    EXPECT_EQ(std::memcmp(part.raw(), a.slice_rows(r0, r1).raw(), static_cast<std::size_t>(part.nbytes())), 0)
        << "rows " << r0 << ".." << r1;
  }
  make_cpu_backend(2);
}

TEST_P(ThreadInvariance, Syrk) {
  const auto x = random_vec(kTokens * kIn, 4), h0 = random_vec(kIn * kIn, 5);
  auto [a, c] = both([&](Backend& be) {
    Tensor h = be.upload(host(h0, {kIn, kIn}));
    be.syrk(0.25f, be.upload(host(x, {kTokens, kIn})), 0.5f, h);
    return h;
  });
  EXPECT_TRUE(same_bits(a, c)) << "syrk depends on the thread count";
}

TEST_P(ThreadInvariance, CholeskyAndSparseGptFactor) {
  const std::int64_t n = 600;  // > 2 leaves of the recursive factorisation, with a ragged split
  const auto x = random_vec(2 * n * n, 6);
  auto hessian = [&](Backend& be) {
    Tensor h = be.zeros({n, n});
    be.syrk(1.0f / n, be.upload(host(x, {2 * n, n})), 0.0f, h);
    Tensor w = be.zeros({4, n});
    be.hessian_prepare(h, &w, 0.01f);
    return h;
  };
  for (const bool upper : {false, true}) {
    auto [a, c] = both([&](Backend& be) {
      Tensor h = hessian(be);
      EXPECT_TRUE(be.cholesky(h, upper));
      return h;
    });
    EXPECT_TRUE(same_bits(a, c)) << "cholesky (upper " << upper << ") depends on the thread count";
  }
  auto [a, c] = both([&](Backend& be) {
    Tensor h = hessian(be);
    EXPECT_TRUE(be.inverse_cholesky_upper(h));
    return h;
  });
  EXPECT_TRUE(same_bits(a, c)) << "the SparseGPT factor depends on the thread count";
}

TEST_P(ThreadInvariance, AttentionAndNorms) {
  const std::int64_t batch = 3, seqlen = 96, heads = 4, head_dim = 32, d = heads * head_dim;
  const auto q = random_vec(batch * seqlen * d, 7), k = random_vec(batch * seqlen * d, 8),
             v = random_vec(batch * seqlen * d, 9), g = random_vec(d, 10);
  auto [a, c] = both([&](Backend& be) {
    Tensor out = be.empty({batch * seqlen, d});
    be.attention(be.upload(host(q, {batch * seqlen, d})), be.upload(host(k, {batch * seqlen, d})),
                 be.upload(host(v, {batch * seqlen, d})), {batch, seqlen, heads, heads, head_dim, 0.125f}, out);
    const Tensor gw = be.upload(host(g, {d}));
    be.layer_norm(out, &gw, &gw, 1e-5f, out);
    be.rms_norm(out, gw, 1e-6f, out);
    be.gelu(out);
    return out;
  });
  EXPECT_TRUE(same_bits(a, c)) << "attention or the norms depend on the thread count";
}

TEST_P(ThreadInvariance, ColSqNorms) {
  const auto x = random_vec(kTokens * kIn, 11);
  auto [a, c] = both([&](Backend& be) {
    Tensor out = be.empty({kIn});
    be.col_sq_norms(be.upload(host(x, {kTokens, kIn})), 0.5f, 0.0f, out);
    return out;
  });
  EXPECT_TRUE(same_bits(a, c)) << "col_sq_norms depends on the thread count";
}

// The SparseGPT sweep of a row slice gives those rows exactly the bits of the whole-matrix sweep,
// at any thread count: what row-parallel pruning over ranks needs.
TEST_P(ThreadInvariance, ObsSweepOfRowSliceEqualsWholeMatrix) {
  const std::int64_t rows = 600, cols = 256, width = 128;  // 3 row tiles of the lazy update: 256, 256, 88
  const auto wv = random_vec(rows * cols, 12), x = random_vec(4 * cols * cols, 13);
  auto sweep = [&](Backend& be, std::int64_t r0, std::int64_t r1) {
    Tensor h = be.zeros({cols, cols});
    be.syrk(1.0f / cols, be.upload(host(x, {4 * cols, cols})), 0.0f, h);
    be.hessian_prepare(h, nullptr, 0.01f);
    EXPECT_TRUE(be.inverse_cholesky_upper(h));
    Tensor full = be.upload(host(wv, {rows, cols}));
    Tensor w = be.empty({r1 - r0, cols});
    be.copy(full.slice_rows(r0, r1), w);
    Tensor mask = be.empty({r1 - r0, cols}, DType::u8);
    Tensor err = be.empty({r1 - r0, width});
    Tensor losses = be.zeros({r1 - r0}, DType::f64);
    for (std::int64_t c0 = 0; c0 < cols; c0 += width) {
      be.obs_sweep_block(w, h, c0, width, 2, 4, mask, err, losses);
      if (c0 + width < cols) be.obs_lazy_update(w, err, h, c0, r0, rows);
    }
    return w;
  };
  auto whole = make_cpu_backend(1);
  const Tensor all = whole->download(sweep(*whole, 0, rows));
  auto many = make_cpu_backend(GetParam());
  for (auto [r0, r1] : {std::pair<std::int64_t, std::int64_t>{0, 67}, {67, 300}, {300, 600}, {13, 14}, {250, 520}}) {
    const Tensor part = many->download(sweep(*many, r0, r1));
    EXPECT_EQ(std::memcmp(part.raw(), all.slice_rows(r0, r1).raw(), static_cast<std::size_t>(part.nbytes())), 0)
        << "rows " << r0 << ".." << r1 << " differ from the whole-matrix sweep";
  }
  make_cpu_backend(2);
}

// LLM Surgeon's float64 inverse (recursive Cholesky, triangular inverse and LᵀL past the 96-wide
// leaves) and its batched chunk factorisations.
TEST_P(ThreadInvariance, SurgeonInverseAndChunkFactors) {
  const std::int64_t n = 700;
  const auto x = random_vec(static_cast<std::size_t>(kTokens * n), 31);
  auto spd = [&](Backend& be) {
    Tensor h = be.empty({n, n});
    be.syrk(1.0f / kTokens, be.upload(host(x, {kTokens, n})), 0.0f, h);
    for (std::int64_t i = 0; i < n; ++i) h.f32()[i * n + i] += 0.01f;
    return h;
  };
  auto [a, c] = both([&](Backend& be) {
    const Tensor h = spd(be);
    Tensor d = Tensor::empty({n, n}, DType::f64);
    for (std::int64_t i = 0; i < n * n; ++i) d.f64()[i] = h.f32()[i];
    EXPECT_TRUE(be.spd_inverse_f64(d));
    return d;
  });
  EXPECT_TRUE(same_bits(a, c)) << "spd_inverse_f64 depends on the thread count";
  auto [f, g] = both([&](Backend& be) {
    std::vector<Tensor> m{spd(be), spd(be).slice_rows(0, n).clone()};
    std::vector<std::uint8_t> ok(2, 0);
    be.cholesky_batch(m, ok);
    EXPECT_TRUE(ok[0] && ok[1]);
    return m[0];
  });
  EXPECT_TRUE(same_bits(f, g)) << "cholesky_batch depends on the thread count";
}

INSTANTIATE_TEST_SUITE_P(Cpu, ThreadInvariance, ::testing::Values(2, 3),
                         [](const auto& info) { return std::to_string(info.param) + "threads"; });

}  // namespace
}  // namespace scalpel::test
