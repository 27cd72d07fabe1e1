// Layer-wise sparsity allocation: how a model-wide target sparsity is spread over decoder blocks
// or weight matrices. OWL (Yin et al., luuyin/OWL lib/prune_all.py) from the blocks' outlier
// ratios of Wanda scores; sensitivity-aware mixed sparsity (Shao et al., arXiv 2310.09499,
// Algorithm 1) from each matrix's Hessian trace per weight. Pure functions of the statistics:
// the drivers gather those (a dense pass, Hutchinson probes) and hand them in.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "scalpel/core/tensor.hpp"

namespace scalpel::prune {

// OWL's outlier count of one block: the Wanda scores A_ij = |W_ij|·sqrt(s_j) of every linear
// of the block, flattened together (host fp32 weights and their inputs' Wanda column norms s).
// Add every linear, then ratio(m) = 100·#{A > m·mean(A)}/numel (check_outlier_mean).
class OutlierCounter {
 public:
  void add(const Tensor& weight, const Tensor& col_norms);
  double ratio(double m) const;
  std::int64_t numel() const { return numel_; }

 private:
  std::vector<Tensor> weights_, scales_;  // per linear: W and sqrt(s), fp32 host
  double sum_ = 0;
  std::int64_t numel_ = 0;
};

// OWL, unstructured: r_l = (D_l − min D)/(max D − min D)·2λ; sparsity S_l = 1 − (r_l − mean r +
// (1 − S)), and S_l <= 0 becomes 0.01 (the reference's clamp). All blocks equal (max D = min D,
// where the reference divides by zero): every block gets S. Input Error naming `key` when a
// block's sparsity reaches 1. `clamped` (when given) gets the blocks the clamp raised.
std::vector<double> owl_sparsities(const std::vector<double>& outlier_ratio, double sparsity, double lambda,
                                   const std::string& key = "allocation.owl_lambda",
                                   std::vector<std::size_t>* clamped = nullptr);

// OWL, N:M (prune_wanda_outlier_structure): r_l = (D_l − min D)/(max D − min D)·λ, λ counting
// weights per group; N_l = n − round(r_l − mean r) (round half to even, as numpy). Input Error
// naming `key` when an N_l falls outside [0, m) (0 leaves the block dense).
std::vector<int> owl_nm(const std::vector<double>& outlier_ratio, int n, int m, double lambda,
                        const std::string& key = "allocation.owl_lambda");

// Sensitivity-aware allocation (paper Algorithm 1): rank the N units by sensitivity (rank 0 =
// least sensitive; ties by index), density = (1 − p − α) + rank·2α/(N − 1), sparsity = 1 −
// density (N = 1: p). weighted: the sparsities are shifted by one constant so that the
// parameter-weighted sparsity (params[i] weights per unit) is p. Input Error naming `key` when a
// unit's sparsity falls outside [0, 1).
std::vector<double> sensitivity_sparsities(const std::vector<double>& sensitivity, double p, double alpha,
                                           bool weighted, const std::vector<std::int64_t>& params,
                                           const std::string& key = "allocation.alpha");

// Σ params[i]·sparsity[i] / Σ params[i].
double weighted_sparsity(const std::vector<double>& sparsity, const std::vector<std::int64_t>& params);

}  // namespace scalpel::prune
